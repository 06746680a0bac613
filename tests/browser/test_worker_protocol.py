"""web/worker.js used as a library (through web/client.js) in headless Chromium.

Devices in module workers driven through the message API documented in web/README.md:
progress events, requests and replies, background ``update`` events, errors crossing as
``{name, message}`` with the PingError subclass name, DatabaseInUse for a second owner of
a database. Two devices share an in-memory delivery service in a third worker over
MessagePorts (``PortDelivery``/``DeliveryServer``), and get DeliveryUnavailable once that
worker is gone; two more talk through the relay that serves the page (``RelayDelivery``),
with ``connection`` events. Waits are on worker events, never on timers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from conftest import RelayServer

SCRIPT = """
async () => {
  const { PingWorker, PingWorkerError } = await import("/web/client.js");
  const errorOf = async (promise) => {
    try { await promise; return null; }
    catch (e) { return { name: e.name, message: e.message, typed: e instanceof PingWorkerError }; }
  };
  // The value of check() once it is truthy, checked again after each event of the worker.
  // No event for WAIT_MS fails the test with what was awaited (it never hangs it).
  const WAIT_MS = 60000;
  const when = async (worker, check, event = "update", what = event) => {
    for (;;) {
      let off;
      const next = new Promise((resolve) => { off = worker.on(event, () => { off(); resolve(true); }); });
      const value = await check();
      if (value) { off(); return value; }
      let timer;
      const woke = await Promise.race([next, new Promise((resolve) => { timer = setTimeout(() => resolve(false), WAIT_MS); })]);
      clearTimeout(timer);
      if (!woke) {
        off();
        const connection = await worker.call("connection").catch((e) => `${e.name}: ${e.message}`);
        const snapshot = await worker.call("snapshot").then(
          (s) => s.conversations.map((c) => ({ id: c.id, epoch: c.epoch, messages: c.messages.length })),
          (e) => `${e.name}: ${e.message}`,
        );
        throw new Error(
          `no ${event} event for ${WAIT_MS} ms while waiting for ${what}; connection: ${JSON.stringify(connection)}; ` +
            `conversations: ${JSON.stringify(snapshot)}; error events: ${JSON.stringify(worker.errorEvents ?? [])}`,
        );
      }
    }
  };
  const out = { progress: [] };

  // -- a delivery service in a worker, devices connected over MessagePorts -------------------
  const [ds, a, b] = await Promise.all([
    PingWorker.start({ wasm: false }),
    PingWorker.start({ onProgress: (p) => out.progress.push(p.stage) }),
    PingWorker.start(),
  ]);
  out.start = a.info;
  out.describe = await a.call("describe");
  out.openDelivery = await ds.call("open_delivery", {});
  const [ca, cb] = [new MessageChannel(), new MessageChannel()];
  await ds.call("connect", { port: ca.port1 }, [ca.port1]);
  out.connections = (await ds.call("connect", { port: cb.port1 }, [cb.port1])).connections;
  const ann = await a.call("open_device",
    { storage: "proto-a", user: "ann", delivery: ca.port2, delivery_timeout_ms: 3000 }, [ca.port2]);
  const ben = await b.call("open_device", { storage: "proto-b", user: "ben", delivery: cb.port2 }, [cb.port2]);
  out.ann = ann;
  const updates = [];
  b.on("update", (data) => updates.push(data));

  const chat = await a.call("create_conversation", { name: "protocol" });
  out.added = await a.call("add_member", { conversation_id: chat.id, device_id: ben.device_id });
  out.sent = await a.call("send", { conversation_id: chat.id, text: "hello ben" });
  out.benHistory = await when(b, async () => {
    const conversations = await b.call("conversations");
    if (!conversations.some((c) => c.id === chat.id)) return null;
    const history = await b.call("history", { conversation_id: chat.id });
    return history.length ? history : null;
  });
  out.updates = updates;
  out.benSnapshot = await b.call("snapshot");
  await b.call("send", { conversation_id: chat.id, text: "hi ann" });
  out.annSync = await when(a, async () => {
    const history = await a.call("history", { conversation_id: chat.id });
    return history.length === 2 ? history : null;
  });

  out.errors = {
    unknownMethod: await errorOf(a.call("frobnicate")),
    unknownConversation: await errorOf(a.call("send", { conversation_id: "01".repeat(16), text: "x" })),
    badId: await errorOf(a.call("send", { conversation_id: "zz", text: "x" })),
    emptyText: await errorOf(a.call("send", { conversation_id: chat.id, text: "" })),
    noDevice: await errorOf(ds.call("sync")),
    badArgs: await errorOf(a.call("history", [1, 2])),
  };
  const c = await PingWorker.start({ wasm: false });
  out.errors.inUse = await errorOf(c.call("open_device", { storage: "proto-a", user: "ann" }));
  out.errors.noUser = await errorOf(c.call("open_device", { storage: "proto-new" }));
  c.terminate();

  // The delivery service's worker goes away: its ports die with it.
  await ds.call("close");
  ds.terminate();
  out.errors.unavailable = await errorOf(a.call("sync"));
  for (const w of [a, b]) w.terminate();

  // -- two devices through the relay that serves this page -----------------------------------
  const [r1, r2] = await Promise.all([PingWorker.start(), PingWorker.start()]);
  for (const w of [r1, r2]) {
    w.errorEvents = [];
    w.on("error", (e) => w.errorEvents.push(e));
  }
  const states = [];
  r1.on("connection", (state) => states.push(state.status));
  const cat = await r1.call("open_device", { storage: "proto-cat", user: "cat", relay: location.origin });
  const dan = await r2.call("open_device", { storage: "proto-dan", user: "dan", relay: location.origin });
  out.cat = cat;
  out.catConnection = await when(r1, async () => {
    const state = await r1.call("connection");
    return state.status === "connected" ? state : null;
  }, "connection");
  const talk = await r1.call("create_conversation", { name: "relay" });
  out.addUser = await r1.call("add_user", { conversation_id: talk.id, user: "dan" });
  await r1.call("send", { conversation_id: talk.id, text: "hello dan" });
  out.danHistory = await when(r2, async () => {
    const conversations = await r2.call("conversations");
    if (!conversations.some((c) => c.id === talk.id)) return null;
    const history = await r2.call("history", { conversation_id: talk.id });
    return history.length ? history : null;
  }, "update", "dan to receive cat's message");
  out.errors.noSuchUser = await errorOf(r1.call("add_user", { conversation_id: talk.id, user: "nobody" }));
  out.states = states;
  out.dan = dan;
  for (const w of [r1, r2]) w.terminate();
  return out;
}
"""


def test_worker_protocol(context: Any, relay_server: Callable[..., RelayServer]) -> None:
    relay = relay_server()
    page = context.new_page()
    page.goto(f"{relay.url}/web/README.md")  # any page of the relay's origin will do
    out = page.evaluate(SCRIPT)

    assert out["progress"][:4] == ["pyodide", "packages", "wasm", "ready"]
    assert out["start"]["pyodide"].startswith("314.") and out["start"]["wasm_bytes"] > 100_000
    assert out["describe"]["protocol"] == 3 and "open_device" in out["describe"]["methods"]
    assert out["openDelivery"] == {"persistent": False}
    assert out["connections"] == 2
    assert out["ann"]["user"] == "ann" and out["ann"]["created"] is True and len(out["ann"]["device_id"]) == 32
    assert out["ann"]["relay"] is None
    assert out["added"] == {"epoch": 1}
    assert out["sent"]["epoch"] == 1 and out["sent"]["seq"] == 2 and out["sent"]["ciphertext_bytes"] > 0
    assert out["sent"]["queued"] is False

    (message,) = out["benHistory"]
    assert message["text"] == "hello ben" and message["sender_user"] == "ann" and message["own"] is False
    assert message["sender_device"] == out["ann"]["device_id"]
    assert any(m["text"] == "hello ben" for update in out["updates"] for m in update["messages"])
    conversation = next(c for c in out["benSnapshot"]["conversations"] if not c["is_device_group"])
    assert conversation["epoch"] == 1 and sorted(m["user"] for m in conversation["members"]) == ["ann", "ben"]
    assert [m["text"] for m in conversation["messages"]] == ["hello ben"]
    assert [(m["text"], m["own"]) for m in out["annSync"]] == [("hello ben", True), ("hi ann", False)]

    errors = out["errors"]
    assert all(error is not None and error["typed"] for error in errors.values()), errors
    assert errors["unknownMethod"]["name"] == "InvalidInput"
    assert errors["unknownConversation"]["name"] == "UnknownConversation"
    assert errors["badId"]["name"] == "InvalidInput"
    assert errors["emptyText"]["name"] == "InvalidInput"
    assert errors["noDevice"]["name"] == "StateConflict"
    assert errors["badArgs"]["name"] == "InvalidInput"
    assert errors["inUse"]["name"] == "DatabaseInUse" and "another tab or worker" in errors["inUse"]["message"]
    assert errors["noUser"]["name"] == "InvalidInput" and "no device yet" in errors["noUser"]["message"]
    assert errors["unavailable"]["name"] == "DeliveryUnavailable"

    # Through the relay: registered and logged in with the device's key, pushed a Welcome.
    assert out["cat"]["relay"] == relay.url
    assert out["catConnection"]["status"] == "connected" and out["catConnection"]["push"] == "websocket"
    assert out["states"][-1] == "connected"
    assert out["addUser"]["epoch"] == 1 and out["addUser"]["devices"] == [out["dan"]["device_id"]]
    (message,) = out["danHistory"]
    assert message["text"] == "hello dan" and message["sender_user"] == "cat"
    assert errors["noSuchUser"]["name"] == "InvalidInput"
