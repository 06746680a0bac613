// The demo page: this browser profile is one ping_web device, in a module worker, talking to the
// relay that served the page. Everything shown comes from the worker's "snapshot" and its
// "connection" events; every button is one request (web/README.md has the worker protocol).
import { PingWorker } from "./client.js";

const STORAGE = "demo-device";
const LOCK_WAIT_MS = 2000; // a reloaded page's old worker may still hold the database lock briefly
const STAGES = { pyodide: 15, packages: 50, wasm: 75, ready: 85, opening: 95, done: 100 };

let worker = null;
let info = null; // DeviceInfo once the device is open
let snapshot = null;
let selected = null; // conversation id
let connection = { status: "connecting", queued: 0 };
let refreshing = null;
let dirty = false;

// -- small DOM helpers ----------------------------------------------------------------------

const $ = (role) => document.querySelector(`[data-role="${role}"]`);
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
const short = (hex) => (hex ? `…${hex.slice(-6)}` : ""); // ids are ULIDs: their tail differs
const time = (ms) => new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });

function showBanner(text) {
  const banner = document.getElementById("banner");
  banner.textContent = text;
  banner.hidden = !text;
}

function showError(error) {
  $("error").textContent = error ? `${error.name}: ${error.message}` : "";
}

function setProgress(stage, detail) {
  $("bar").style.width = `${STAGES[stage] ?? 5}%`;
  $("progress-text").textContent = `${detail}…`;
}

// -- the connection to the relay ----------------------------------------------------------------

function connectionText({ status, queued, attempt }) {
  const base =
    {
      connected: "connected",
      connecting: "connecting…",
      reconnecting: `reconnecting… (attempt ${attempt})`,
      offline: "offline",
      replaced: "open in another tab: not receiving",
      closed: "closed",
    }[status] ?? status;
  return queued > 0 ? `${base} · ${queued} queued` : base;
}

function showConnection(state) {
  connection = { ...connection, ...state };
  const box = $("connection");
  box.dataset.state = connection.status;
  box.dataset.queued = String(connection.queued ?? 0);
  $("connection-text").textContent = connectionText(connection);
  box.title = connection.detail || "";
}

// -- opening the device -------------------------------------------------------------------------

const deviceLabel = () => `${navigator.userAgentData?.platform || navigator.platform || "browser"} browser`;

async function openDevice(user, code) {
  const args = { storage: STORAGE, relay: location.origin, wait_for_lock_ms: LOCK_WAIT_MS, label: deviceLabel() };
  if (user) args.user = user;
  if (code) args.linked = true;
  setProgress("opening", "Opening the encrypted IndexedDB database");
  info = await worker.call("open_device", args);
  if (code) {
    $("onboarding-error").textContent = "Waiting for your other device to approve this one…";
    await worker.call("link_with_code", { code, label: deviceLabel() });
  }
  $("me").textContent = `${info.user} · device ${short(info.device_id)}`;
  $("me").title = `device id ${info.device_id}`;
  document.getElementById("onboarding").hidden = true;
  document.getElementById("loading").hidden = true;
  document.getElementById("app").hidden = false;
  $("link-start").hidden = false;
  document.body.dataset.state = info.created ? (code ? "linked" : "new") : "restored";
  await refresh();
}

/** Close the worker and delete this device's database. */
async function deleteDevice() {
  if (worker) {
    await Promise.allSettled([worker.call("close")]);
    worker.terminate();
  }
  await new Promise((resolve) => {
    const request = indexedDB.deleteDatabase(`ping_web:${STORAGE}`);
    request.onsuccess = request.onerror = request.onblocked = () => resolve();
  });
}

/** Forget a half-made device (its name was taken, or linking failed): a fresh worker and database. */
async function wipeDevice() {
  info = null;
  await deleteDevice();
  await startWorker();
}

async function startWorker() {
  worker = await PingWorker.start({ name: "device", onProgress: ({ stage, detail }) => setProgress(stage, detail) });
  worker.on("update", () => refresh());
  worker.on("connection", showConnection);
  worker.on("error", showError);
  worker.on("identity", () => refresh());
  worker.on("link", showLink);
  window.pingDemo = { worker, refresh, state: () => ({ info, snapshot, connection }) }; // for tests and the console
}

async function main() {
  document.getElementById("reset").addEventListener("click", reset);
  wireForms();
  if (!window.isSecureContext) {
    // WebCrypto (the database's key) exists only in secure contexts: https, or http on localhost.
    document.getElementById("loading").hidden = true;
    showConnection({ status: "closed" });
    showBanner(
      `${location.origin} is not a secure context, so this browser gives the page no WebCrypto and the ` +
        "device cannot keep an encrypted database. Open it as http://localhost:PORT (on another machine, " +
        "through an SSH tunnel), over https, or start Chromium with " +
        `--unsafely-treat-insecure-origin-as-secure=${location.origin} (README.md).`,
    );
    document.body.dataset.state = "insecure";
    document.body.dataset.ready = "true";
    return;
  }
  try {
    await startWorker();
  } catch (err) {
    showBanner(`The worker could not start: ${err.name}: ${err.message}`);
    document.body.dataset.ready = "failed";
    return;
  }
  try {
    await openDevice(null);
  } catch (err) {
    if (err.name === "InvalidInput" && /no device yet/.test(err.message)) {
      document.getElementById("loading").hidden = true;
      document.getElementById("onboarding").hidden = false;
      document.body.dataset.state = "onboarding";
      document.querySelector('[data-role="onboarding"] input').focus();
    } else if (err.name === "DatabaseInUse") {
      document.getElementById("loading").hidden = true;
      document.body.dataset.state = "elsewhere";
      showConnection({ status: "closed" });
      showBanner(
        "This device is open in another tab or window of this browser profile (DatabaseInUse): its " +
          "database belongs to that tab. Close it there and reload this one, or use another browser profile.",
      );
    } else {
      document.body.dataset.state = "failed";
      showBanner(`Could not open the device: ${err.name}: ${err.message}`);
    }
  }
  document.body.dataset.ready = "true";
}

// -- actions ------------------------------------------------------------------------------------

function wireForms() {
  $("onboarding").addEventListener("submit", async (event) => {
    event.preventDefault();
    const user = event.target.elements.user.value.trim();
    const code = event.target.elements.code.value.trim();
    if (!user) return;
    $("onboarding-error").textContent = "";
    try {
      await openDevice(user, code);
    } catch (err) {
      await wipeDevice(); // nothing half-made stays behind: the form can be sent again
      document.getElementById("loading").hidden = true;
      const taken = err.name === "StateConflict" && /already has devices/.test(err.message);
      $("onboarding-error").textContent = taken
        ? `The name "${user}" is taken. If it is yours, show a code on your other device (Link a device) and enter it below.`
        : `${err.name}: ${err.message}`;
      document.body.dataset.state = taken ? "name-taken" : "onboarding";
    }
  });
  $("link-start").addEventListener("click", () =>
    act(async () => {
      const { code } = await worker.call("start_link");
      showLink({ state: "code", code });
    }),
  );
  $("link-approve").addEventListener("click", () =>
    act(async () => {
      $("link-approve").hidden = true;
      await worker.call("approve_link");
    }),
  );
  $("link-history").addEventListener("click", () =>
    act(async () => {
      const { messages } = await worker.call("share_history", { device_id: $("link-panel").dataset.device });
      $("link-history").hidden = true;
      $("link-text").textContent += ` ${messages} messages of your history went to it, end-to-end encrypted.`;
    }),
  );
  $("link-close").addEventListener("click", () => {
    $("link-panel").hidden = true;
  });
  $("create").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = event.target.elements.name;
    const name = input.value.trim() || "untitled";
    input.value = "";
    act(async () => {
      const conversation = await worker.call("create_conversation", { name });
      selected = conversation.id;
    });
  });
  $("add-user").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = event.target.elements.user;
    const user = input.value.trim();
    if (!user || !selected) return;
    act(async () => {
      await worker.call("add_user", { conversation_id: selected, user });
      input.value = "";
    });
  });
  $("compose").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = event.target.elements.text;
    const text = input.value.trim();
    if (!text || !selected) return;
    input.value = ""; // the message shows once stored; it is queued if the relay is away
    const conversation = selected;
    act(async () => {
      try {
        await worker.call("send", { conversation_id: conversation, text });
      } catch (err) {
        if (!input.value) input.value = text; // give it back to retry
        throw err;
      }
    });
  });
}

/** Run one user action: error line, then refresh the view. */
async function act(action) {
  showError(null);
  try {
    await action();
  } catch (err) {
    showError(err);
  } finally {
    await refresh();
  }
}

/** Fetch the snapshot and render it; coalesces overlapping calls. */
async function refresh() {
  if (!info) return;
  if (refreshing) {
    dirty = true;
    return refreshing;
  }
  refreshing = (async () => {
    do {
      dirty = false;
      try {
        snapshot = await worker.call("snapshot", { limit: 500 });
        showConnection(snapshot.connection);
        render();
      } catch (err) {
        showError(err);
      }
    } while (dirty);
  })();
  try {
    await refreshing;
  } finally {
    refreshing = null;
  }
}

// -- linking ------------------------------------------------------------------------------------

function showLink(event) {
  const panel = $("link-panel");
  panel.hidden = false;
  panel.dataset.state = event.state;
  $("link-approve").hidden = event.state !== "request";
  $("link-history").hidden = event.state !== "done";
  if (event.device_id) panel.dataset.device = event.device_id;
  if (event.state === "code") {
    $("link-text").textContent =
      "On the new device, open this page, pick the same name and enter this code (it works once, for 10 minutes):";
    $("link-code").textContent = event.code;
  } else if (event.state === "request") {
    $("link-text").textContent = `"${event.label}" (key ${event.key}) asks to join your devices. Approve it only if it is yours.`;
  } else if (event.state === "done") {
    $("link-text").textContent = `"${event.label}" is now one of your devices.`;
    $("link-code").textContent = "";
  } else {
    $("link-text").textContent = `Linking did not complete: ${event.error?.message ?? "unknown error"}`;
    $("link-code").textContent = "";
  }
}

// -- rendering ----------------------------------------------------------------------------------

function others(conversation) {
  const users = [...new Set(conversation.members.filter((m) => !m.own).map((m) => m.user))];
  return users.length ? `with ${users.join(", ")}` : "just you";
}

// ping_web keeps a conversation's name on the device that named it (a Welcome carries none).
const title = (c) => c.name || (c.removed ? "a conversation you left" : others(c));

function render() {
  const conversations = snapshot.conversations.filter((c) => !c.is_device_group);
  if (!conversations.some((c) => c.id === selected)) selected = conversations.at(-1)?.id ?? null;

  $("conversations").replaceChildren(
    ...conversations.map((c) =>
      el(
        "button",
        {
          type: "button",
          class: `conv${c.id === selected ? " selected" : ""}`,
          dataset: { conversation: c.id },
          onclick: () => {
            selected = c.id;
            render();
          },
        },
        el("span", { class: "conv-name" }, title(c)),
        el("span", { class: "conv-meta" }, `epoch ${c.epoch} · ${c.member_count}`),
      ),
    ),
  );
  $("empty").hidden = conversations.length > 0;

  const conversation = conversations.find((c) => c.id === selected);
  $("conversation").hidden = !conversation;
  if (!conversation) return;
  $("conversation").dataset.conversation = conversation.id;
  $("conv-name").textContent = title(conversation);
  $("epoch").textContent = `epoch ${conversation.epoch}${conversation.pending_commit ? " · commit pending" : ""}`;

  const contacts = Object.fromEntries((snapshot.contacts ?? []).map((c) => [c.user, c]));
  $("members").replaceChildren(
    ...conversation.members.map((m) => {
      const base = m.own ? `${m.user} (you)` : m.device_id ? `${m.user} · ${short(m.device_id)}` : m.user;
      const label = !m.own && contacts[m.user]?.verified ? `${base} ✓` : base;
      const chip = el("li", { class: `member${m.own ? " own" : ""}`, title: `leaf ${m.leaf_index}` }, label);
      if (!m.own && !conversation.removed) {
        chip.append(
          el(
            "button",
            {
              type: "button",
              class: "remove",
              title: `Remove ${m.user} (commit)`,
              "aria-label": `Remove ${m.user}`,
              onclick: () =>
                act(() => worker.call("remove_member", { conversation_id: conversation.id, leaf_index: m.leaf_index })),
            },
            "×",
          ),
        );
      }
      return chip;
    }),
  );
  if (conversation.removed) $("members").append(el("li", { class: "member removed" }, "this device was removed"));
  const unverified = conversation.unverified ?? [];
  $("unverified").hidden = unverified.length === 0;
  $("unverified").textContent = unverified.length
    ? `Not sending here: ${unverified.map((u) => `a device of ${u.user} (${u.key}): ${u.reason}`).join("; ")}. Remove it to go on.`
    : "";
  const people = [...new Set(conversation.members.filter((m) => !m.own).map((m) => m.user))];
  $("safety-list").replaceChildren(
    ...people
      .map((user) => contacts[user])
      .filter(Boolean)
      .map((c) =>
        el(
          "li",
          { dataset: { user: c.user, verified: String(c.verified) } },
          el("strong", {}, c.user),
          el("code", { class: "digits", "data-role": "safety-digits" }, c.safety_number.join(" ")),
          c.verified
            ? el("span", { class: "verified" }, "✓ verified")
            : el(
                "button",
                {
                  type: "button",
                  onclick: () => act(() => worker.call("mark_verified", { user: c.user })),
                },
                "Mark as verified",
              ),
        ),
      ),
  );
  $("add-user").hidden = conversation.removed;
  $("compose").hidden = conversation.removed;

  const list = $("messages");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const lines = [
    ...conversation.messages.map((m) => ({ ...m, type: "message" })),
    ...(conversation.notes ?? []).map((n) => ({ ...n, type: "note" })),
  ].sort((a, b) => a.wall_ms - b.wall_ms);
  list.replaceChildren(
    ...(lines.length
      ? lines.map((m) =>
          m.type === "note"
            ? el("li", { class: `system ${m.kind}`, "data-role": "system-line" }, m.text)
            : el(
            "li",
            { class: `message${m.own ? " own" : ""}`, dataset: { sender: m.sender_device, seq: String(m.seq) } },
            el(
              "div",
              { class: "from" },
              m.own ? "you" : m.sender_user ?? "unknown",
              el("span", { class: "when" }, `${time(m.wall_ms)} · epoch ${m.epoch}`),
            ),
            el("div", { class: "text" }, m.text),
          ),
        )
      : [el("li", { class: "placeholder" }, "No messages yet.")]),
  );
  if (atBottom) list.scrollTop = list.scrollHeight;
}

// -- reset --------------------------------------------------------------------------------------

async function reset() {
  if (!confirm("Close this device and delete its database (keys, conversations, history)?")) return;
  await deleteDevice();
  location.reload();
}

window.addEventListener("pagehide", () => worker?.terminate()); // let go of the database lock at once

main();
