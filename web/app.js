// The demo page: three ping_web devices and one delivery service, each in its own worker.
// Everything a card shows comes from its worker's "snapshot"; every button is one request.
import { PingWorker } from "./client.js";

const DEVICES = [
  { key: "alice-laptop", label: "alice · laptop", user: "alice", storage: "demo-alice-laptop", linked: false },
  { key: "alice-phone", label: "alice · phone", user: "alice", storage: "demo-alice-phone", linked: true },
  { key: "bob", label: "bob · laptop", user: "bob", storage: "demo-bob", linked: false },
];
const DELIVERY_STORAGE = "demo-delivery";
const LOCK_WAIT_MS = 2000; // a reloaded page's old workers may still hold their locks briefly
const STAGES = { queued: 3, pyodide: 10, packages: 45, wasm: 70, ready: 80, opening: 90, done: 100 };

const devices = new Map(); // key -> device state
let delivery = null; // { worker, ok }

// -- small DOM helpers ----------------------------------------------------------------------

const $ = (root, role) => root.querySelector(`[data-role="${role}"]`);
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}
const short = (hex) => (hex ? `${hex.slice(0, 6)}…${hex.slice(-4)}` : "");
const time = (ms) => new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });

function labelOf(deviceId) {
  for (const device of devices.values()) if (device.info?.device_id === deviceId) return device.spec.label;
  return null;
}

// A device knows the device id behind a leaf only for leaves it added or heard from; the
// page fills the gaps with what each device says about itself.

/** The page device sitting at `member`'s leaf of `conversationId`, if any. */
function deviceAt(conversationId, member) {
  if (member.device_id) return [...devices.values()].find((d) => d.info?.device_id === member.device_id) ?? null;
  for (const device of devices.values()) {
    const own = device.snapshot?.conversations
      .find((c) => c.id === conversationId && !c.removed)
      ?.members.find((m) => m.own);
    if (own && own.leaf_index === member.leaf_index && own.user === member.user) return device;
  }
  return null;
}

/** Whether `device` says it is a member of `conversationId`. */
const isMember = (device, conversationId) =>
  Boolean(device.snapshot?.conversations.some((c) => c.id === conversationId && !c.removed));

// -- delivery service ---------------------------------------------------------------------

function setDeliveryStatus(state, text) {
  const box = document.getElementById("ds-status");
  box.dataset.state = state;
  box.querySelector(".ds-text").textContent = text;
}

function showBanner(text) {
  const banner = document.getElementById("banner");
  banner.textContent = text;
  banner.hidden = false;
}

async function startDelivery() {
  let worker = null;
  try {
    worker = await PingWorker.start({ name: "delivery", wasm: false });
    const info = await worker.call("open_delivery", { storage: DELIVERY_STORAGE, wait_for_lock_ms: LOCK_WAIT_MS });
    setDeliveryStatus("ok", `Delivery service: running in its own worker · ${info.replayed} journal entries restored`);
    return { worker, ok: true };
  } catch (err) {
    if (err.name === "DatabaseInUse") {
      setDeliveryStatus("error", "Delivery service: open in another tab");
      showBanner(
        "This demo is already open in another tab: its delivery service and devices own their databases " +
          "there (DatabaseInUse). Close that tab and reload this one to use the demo here.",
      );
    } else {
      setDeliveryStatus("error", `Delivery service failed: ${err.name}: ${err.message}`);
    }
    return { worker, ok: false };
  }
}

// -- devices ----------------------------------------------------------------------------------

function createCard(spec) {
  const card = document.getElementById("device-template").content.firstElementChild.cloneNode(true);
  card.dataset.device = spec.key;
  $(card, "label").textContent = spec.label;
  $(card, "avatar").textContent = spec.user[0].toUpperCase();
  $(card, "avatar").dataset.user = spec.user;
  $(card, "meta").textContent = `user ${spec.user} · ${spec.linked ? "to be linked" : "first device"}`;
  document.getElementById("devices").append(card);

  const device = { spec, card, worker: null, info: null, snapshot: null, selected: null };
  Object.assign(device, { pinned: false, seen: null, refreshing: null, dirty: false });
  devices.set(spec.key, device);

  $(card, "create").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = event.target.elements.name;
    const name = input.value.trim() || "untitled";
    act(device, async () => {
      const conversation = await device.worker.call("create_conversation", { name });
      device.selected = conversation.id;
      input.value = "";
    });
  });
  $(card, "link").addEventListener("submit", (event) => {
    event.preventDefault();
    const deviceId = event.target.elements.device.value;
    if (deviceId) act(device, () => device.worker.call("link_device", { device_id: deviceId }));
  });
  $(card, "add").addEventListener("submit", (event) => {
    event.preventDefault();
    const deviceId = event.target.elements.device.value;
    if (deviceId && device.selected) {
      act(device, () => device.worker.call("add_member", { conversation_id: device.selected, device_id: deviceId }));
    }
  });
  $(card, "compose").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = event.target.elements.text;
    const text = input.value.trim();
    if (!text || !device.selected) return;
    act(device, async () => {
      await device.worker.call("send", { conversation_id: device.selected, text });
      input.value = "";
    });
  });
  return device;
}

function setStatus(device, state, text) {
  const status = $(device.card, "status");
  status.dataset.state = state;
  status.textContent = text;
  device.card.dataset.state = state;
}

/** Show a loading stage; the text counts the seconds since the device started. */
function setProgress(device, stage, detail) {
  $(device.card, "bar").style.width = `${STAGES[stage] ?? 5}%`;
  device.progress = detail;
  const show = () => {
    const seconds = ((performance.now() - device.startedAt) / 1000).toFixed(1);
    $(device.card, "progress-text").textContent = `${device.progress}… ${seconds} s`;
  };
  device.startedAt ??= performance.now();
  device.ticker ??= setInterval(show, 200);
  show();
  if (stage === "done") clearInterval(device.ticker);
}

async function startDevice(device, portReady) {
  const { spec } = device;
  setStatus(device, "starting", "starting");
  setProgress(device, "queued", "Starting the worker");
  try {
    device.worker = await PingWorker.start({
      name: spec.key,
      onProgress: ({ stage, detail }) => setProgress(device, stage, detail),
    });
    device.worker.on("update", () => refresh(device));
    device.worker.on("error", (error) => showError(device, error));
    setProgress(device, "ready", "Waiting for the delivery service");
    const port = await portReady;
    setProgress(device, "opening", "Opening the encrypted IndexedDB database");
    const args = { storage: spec.storage, user: spec.user, linked: spec.linked, wait_for_lock_ms: LOCK_WAIT_MS };
    if (port) args.delivery = port;
    device.info = await device.worker.call("open_device", args, port ? [port] : []);
  } catch (err) {
    clearInterval(device.ticker);
    $(device.card, "loading").hidden = true;
    if (err.name === "DatabaseInUse") {
      setStatus(device, "elsewhere", "open elsewhere");
      $(device.card, "elsewhere").hidden = false;
      $(device.card, "elsewhere-text").textContent =
        `${spec.label} is open in another tab or window: its database ping_web:${spec.storage} ` +
        `belongs to that tab (DatabaseInUse). Close it there, then reload this page.`;
    } else {
      setStatus(device, "failed", "failed");
      $(device.card, "elsewhere").hidden = false;
      $(device.card, "elsewhere").querySelector("h3").textContent = "Could not start";
      $(device.card, "elsewhere-text").textContent = `${err.name}: ${err.message}`;
    }
    return;
  }
  const { info } = device;
  $(device.card, "meta").textContent = `user ${info.user} · device ${short(info.device_id)}`;
  $(device.card, "meta").title = `device id ${info.device_id}`;
  setProgress(device, "done", "Ready");
  $(device.card, "loading").hidden = true;
  $(device.card, "body").hidden = false;
  setStatus(device, "ready", info.created ? "new device" : "restored");
  const seconds = ((performance.now() - device.startedAt) / 1000).toFixed(1);
  $(device.card, "status").title = `worker, Pyodide, ping_web and the database ready in ${seconds} s`;
  await refreshAll(); // the others' "Add member" and "Link device" lists now include this device
}

/** Run one user action on a device: busy state, error line, then refresh its view. */
async function act(device, action) {
  device.card.classList.add("busy");
  showError(device, null);
  try {
    await action();
  } catch (err) {
    showError(device, err);
  } finally {
    device.card.classList.remove("busy");
    await refresh(device);
  }
}

function showError(device, error) {
  $(device.card, "error").textContent = error ? `${error.name}: ${error.message}` : "";
}

/** Fetch the device's snapshot and render it; coalesces overlapping calls. */
async function refresh(device) {
  if (!device.info) return;
  if (device.refreshing) {
    device.dirty = true;
    return device.refreshing;
  }
  device.refreshing = (async () => {
    do {
      device.dirty = false;
      try {
        device.snapshot = await device.worker.call("snapshot", { limit: 200 });
        // Every card uses what the others know (names, who sits at which leaf).
        for (const other of devices.values()) if (other.snapshot) render(other);
      } catch (err) {
        showError(device, err);
      }
    } while (device.dirty);
  })();
  try {
    await device.refreshing;
  } finally {
    device.refreshing = null;
  }
}

const refreshAll = () => Promise.all([...devices.values()].map(refresh));

// -- rendering ----------------------------------------------------------------------------------

// ping_web keeps a conversation's name on the device that named it (a Welcome carries none),
// so a device that joined shows the name some other device on this page gave it.
function conversationTitle(conversation) {
  if (conversation.is_device_group) return `${conversation.members[0]?.user ?? "my"}'s devices`;
  if (conversation.name) return conversation.name;
  for (const other of devices.values()) {
    const named = other.snapshot?.conversations.find((c) => c.id === conversation.id && c.name);
    if (named) return named.name;
  }
  return "untitled";
}

function render(device) {
  const { card, snapshot } = device;
  const conversations = snapshot.conversations;
  const ids = conversations.map((c) => c.id);
  const selected = conversations.find((c) => c.id === device.selected);
  const first = conversations.find((c) => !c.is_device_group);
  // A conversation that arrived since the last render (joined through a Welcome).
  const fresh = device.seen && conversations.filter((c) => !c.is_device_group && !device.seen.has(c.id)).pop();
  if (fresh && (!selected || selected.is_device_group)) {
    device.selected = fresh.id;
  } else if (!selected || (selected.is_device_group && !device.pinned)) {
    device.selected = first?.id ?? null; // the device group shows only when picked
  }
  device.seen = new Set(ids);

  // Conversation list: real conversations first, the device group last.
  const ordered = [...conversations].sort((a, b) => a.is_device_group - b.is_device_group);
  $(card, "conversations").replaceChildren(
    ...ordered.map((c) =>
      el(
        "button",
        {
          type: "button",
          class: `conv${c.id === device.selected ? " selected" : ""}${c.is_device_group ? " group" : ""}`,
          dataset: { conversation: c.id, name: c.name ?? "" },
          onclick: () => {
            device.selected = c.id;
            device.pinned = c.is_device_group;
            render(device);
          },
        },
        el("span", { class: "conv-name" }, conversationTitle(c)),
        el("span", { class: "conv-meta" }, `epoch ${c.epoch} · ${c.member_count}`),
      ),
    ),
  );
  $(card, "empty").hidden = conversations.some((c) => !c.is_device_group);

  // Link: devices of the same user that are not yet in this device's device group.
  const group = conversations.find((c) => c.is_device_group && !c.removed);
  const linkable = [...devices.values()].filter(
    (d) => d !== device && d.snapshot && d.info.user === device.info.user && !isMember(d, group?.id),
  );
  fillSelect($(card, "link").elements.device, linkable);
  $(card, "link").hidden = !group || linkable.length === 0;

  const conversation = conversations.find((c) => c.id === device.selected);
  $(card, "conversation").hidden = !conversation;
  if (!conversation) return;
  $(card, "conversation").dataset.conversation = conversation.id;
  $(card, "conv-name").textContent = conversationTitle(conversation);
  const pending = conversation.pending_commit ? " · commit pending" : "";
  $(card, "epoch").textContent = `epoch ${conversation.epoch}${pending}`;

  // Members, one chip per device leaf; × removes that leaf.
  $(card, "members").replaceChildren(
    ...conversation.members.map((m) => {
      const label = deviceAt(conversation.id, m)?.spec.label ?? `${m.user} (leaf ${m.leaf_index})`;
      const chip = el("li", { class: `member${m.own ? " own" : ""}`, title: `leaf ${m.leaf_index}` }, label);
      if (!m.own && !conversation.removed) {
        chip.append(
          el(
            "button",
            {
              type: "button",
              class: "remove",
              title: `Remove ${label} (commit)`,
              "aria-label": `Remove ${label}`,
              onclick: () =>
                act(device, () =>
                  device.worker.call("remove_member", { conversation_id: conversation.id, leaf_index: m.leaf_index }),
                ),
            },
            "×",
          ),
        );
      }
      return chip;
    }),
  );
  if (conversation.removed) {
    $(card, "members").append(el("li", { class: "member removed" }, "this device was removed"));
  }

  // Add: every other device this conversation does not hold yet.
  const present = new Set(conversation.members.map((m) => deviceAt(conversation.id, m)).filter(Boolean));
  // (A device removed from a conversation keeps it, read-only, and ignores a later Welcome
  // to it, so it is not offered again.)
  const addable = [...devices.values()].filter(
    (d) =>
      d !== device && d.snapshot && !present.has(d) && !d.snapshot.conversations.some((c) => c.id === conversation.id),
  );
  fillSelect($(card, "add").elements.device, addable);
  $(card, "add").hidden = addable.length === 0 || conversation.removed || conversation.is_device_group;
  $(card, "compose").hidden = conversation.removed;

  // Messages, oldest first; keep the view pinned to the bottom when it was there.
  const list = $(card, "messages");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.replaceChildren(
    ...(conversation.messages.length
      ? conversation.messages.map((m) =>
          el(
            "li",
            { class: `message${m.own ? " own" : ""}`, dataset: { sender: m.sender_device } },
            el(
              "div",
              { class: "from" },
              m.own ? "you" : labelOf(m.sender_device) ?? m.sender_user ?? "unknown",
              el("span", { class: "when" }, `${time(m.wall_ms)} · epoch ${m.epoch}`),
            ),
            el("div", { class: "text" }, m.text),
          ),
        )
      : [el("li", { class: "placeholder" }, "No messages yet.")]),
  );
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function fillSelect(select, candidates) {
  const previous = select.value;
  select.replaceChildren(...candidates.map((d) => el("option", { value: d.info.device_id }, d.spec.label)));
  if (candidates.some((d) => d.info.device_id === previous)) select.value = previous;
}

// -- reset ----------------------------------------------------------------------------------

async function reset() {
  if (!confirm("Close every device and delete all demo databases (history, keys, delivery journal)?")) return;
  const workers = [delivery?.worker, ...[...devices.values()].map((d) => d.worker)].filter(Boolean);
  await Promise.allSettled(workers.map((w) => w.call("close")));
  workers.forEach((w) => w.terminate());
  const names = [DELIVERY_STORAGE, ...DEVICES.map((d) => d.storage)].map((n) => `ping_web:${n}`);
  await Promise.all(
    names.map(
      (name) =>
        new Promise((resolve) => {
          const request = indexedDB.deleteDatabase(name);
          request.onsuccess = request.onerror = request.onblocked = () => resolve();
        }),
    ),
  );
  location.reload();
}

// -- start ------------------------------------------------------------------------------------

async function main() {
  document.getElementById("reset").addEventListener("click", reset);
  const cards = DEVICES.map(createCard);
  // All four workers boot at once. A device opens once the delivery service is up and its
  // port is connected there (or without one, if the delivery service could not start).
  const channels = cards.map(() => new MessageChannel());
  const deliveryReady = startDelivery().then(async (ds) => {
    delivery = ds;
    if (ds.ok) {
      await Promise.all(channels.map((channel) => ds.worker.call("connect", { port: channel.port1 }, [channel.port1])));
    }
    return ds.ok;
  });
  await Promise.all(
    cards.map((device, i) => startDevice(device, deliveryReady.then((ok) => (ok ? channels[i].port2 : null)))),
  );
  document.body.dataset.ready = "true";
}

window.addEventListener("pagehide", () => {
  // Let go of the database locks at once, so a reload finds them free.
  for (const device of devices.values()) device.worker?.terminate();
  delivery?.worker?.terminate();
});

main();
