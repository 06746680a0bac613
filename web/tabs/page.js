// One tab of a device shared by tabs (ping_web.client.tabs.SharedDevice), its ping_web in
// a module worker (worker.js + host.py). The delivery service, and bob, a device of another
// user, run in the page opened with ?peer; the other pages reach it through broker.js.
//
// window.tabs is what the browser test drives:
//   await tabs.open("shared-alice", "alice")     -> {role, device_id, tab}
//   await tabs.call("create_conversation", {name})
//   tabs.burst(conversationId, "p1", 20)        -> sends p1-0 .. p1-19, one after another
//   tabs.sent                                    -> [{text, state: "pending"|"ok"|"error", seq, error}]
//   tabs.stop()                                  -> no more sends start; returns tabs.sent
//   await tabs.waitFor(() => ...)                -> resolves once the check holds (checked on every event)
//   tabs.seen                                    -> every message text this tab has shown

const HERE = new URL(".", import.meta.url);

class Tab {
  constructor() {
    this.worker = new Worker(new URL("worker.js", HERE), { type: "module" });
    this.nextId = 1;
    this.waiting = new Map();
    this.events = [];
    this.checks = new Set();
    this.sent = [];
    this.seen = new Set();
    this.role = null;
    this.conversation = null;
    this.worker.onmessage = ({ data }) => this.receive(data);
    this.broker = new SharedWorker(new URL("broker.js", HERE), { name: "ping-web-tabs-broker" });
    this.broker.port.start();
  }

  call(method, args = {}, transfer = []) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.worker.postMessage({ id, method, args }, transfer);
    }).finally(() => this.recheck());
  }

  receive(message) {
    if (message && "event" in message) {
      this.events.push(message);
      this.onEvent(message);
      this.recheck();
      return;
    }
    const waiting = this.waiting.get(message?.id);
    if (!waiting) return;
    this.waiting.delete(message.id);
    if (message.error) waiting.reject(Object.assign(new Error(message.error.message), { name: message.error.name }));
    else waiting.resolve(message.result);
  }

  onEvent({ event, data }) {
    if (event === "messages") {
      for (const message of data) this.seen.add(message.text);
    } else if (event === "leader") {
      this.role = data.role;
      // A leader that went away may have stored messages it never announced: re-read.
      if (this.conversation) {
        this.call("history", { conversation_id: this.conversation }).then(
          (messages) => messages.forEach((m) => this.seen.add(m.text)),
          () => {},
        );
      }
    }
  }

  /** Resolves once check() is true; it is evaluated again on every event and reply. */
  waitFor(check, ms = 120000) {
    return new Promise((resolve, reject) => {
      const entry = { check, resolve };
      entry.timer = setTimeout(() => {
        this.checks.delete(entry);
        reject(new Error(`timed out waiting for ${check}`));
      }, ms);
      this.checks.add(entry);
      this.recheck();
    });
  }

  recheck() {
    for (const entry of [...this.checks]) {
      let value = false;
      try {
        value = entry.check();
      } catch (err) {
        value = false;
      }
      if (value) {
        this.checks.delete(entry);
        clearTimeout(entry.timer);
        entry.resolve(value);
      }
    }
  }

  /** A port to the delivery service (through the broker). */
  deliveryPort() {
    return new Promise((resolve) => {
      this.broker.port.onmessage = ({ data, ports }) => {
        if (data?.type === "port") resolve(ports[0]);
      };
      this.broker.port.postMessage({ type: "connect" });
    });
  }

  async open(storage, user) {
    const port = await this.deliveryPort();
    const info = await this.call("open", { storage, user, delivery: port }, [port]);
    this.role = info.role;
    return info;
  }

  async startPeer() {
    const info = await this.call("open_peer", {});
    this.broker.port.onmessage = ({ data, ports }) => {
      if (data?.type === "client") this.call("connect", { port: ports[0] }, [ports[0]]);
    };
    this.broker.port.postMessage({ type: "serve" });
    return info;
  }

  /** Send prefix-0 .. prefix-(count-1), one call at a time, until stop(); every outcome
   * lands in `sent`. */
  async burst(conversationId, prefix, count) {
    this.conversation = conversationId;
    this.stopped = false;
    for (let i = 0; i < count && !this.stopped; i++) {
      const record = { text: `${prefix}-${i}`, state: "pending" };
      this.sent.push(record);
      try {
        const result = await this.call("send", { conversation_id: conversationId, text: record.text });
        Object.assign(record, { state: "ok", seq: result.seq });
      } catch (err) {
        Object.assign(record, { state: "error", error: `${err.name}: ${err.message}` });
      }
    }
  }

  /** Start no more sends (the one in flight, if any, goes on); returns what was sent so far. */
  stop() {
    this.stopped = true;
    return this.sent;
  }

  /** Like a crash of this tab's ping_web: the worker dies at once, no code of it runs again. */
  terminate() {
    this.worker.terminate();
  }
}

const ready = new Promise((resolve) => {
  const tab = new Tab();
  const listen = ({ data }) => {
    if (data?.event === "ready" || data?.event === "failed") {
      tab.worker.removeEventListener("message", listen);
      resolve(tab);
    }
  };
  tab.worker.addEventListener("message", listen);
  window.tabs = tab;
});

window.tabsReady = ready;
const status = document.getElementById("status");
ready.then(() => {
  if (status) status.textContent = "ready";
});
