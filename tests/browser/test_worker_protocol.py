"""web/worker.js used as a library (through web/client.js) in headless Chromium.

Two devices and a delivery service, each in a module worker, driven through the message
API documented in web/README.md: progress events, requests and replies, background
``update`` events, errors crossing as ``{name, message}`` with the PingError subclass name,
DatabaseInUse for a second owner of a database, the delivery journal surviving a restart
of its worker, and DeliveryUnavailable once that worker is gone.
"""

from __future__ import annotations

from typing import Any

SCRIPT = """
async () => {
  const { PingWorker, PingWorkerError } = await import("/web/client.js");
  const errorOf = async (promise) => {
    try { await promise; return null; }
    catch (e) { return { name: e.name, message: e.message, typed: e instanceof PingWorkerError }; }
  };
  const until = async (check, ms = 60000) => {
    const end = performance.now() + ms;
    for (;;) {
      const value = await check();
      if (value) return value;
      if (performance.now() > end) throw new Error("timed out waiting");
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  const out = { progress: [] };

  const [ds, a, b] = await Promise.all([
    PingWorker.start({ wasm: false }),
    PingWorker.start({ onProgress: (p) => out.progress.push(p.stage) }),
    PingWorker.start(),
  ]);
  out.start = a.info;
  out.describe = await a.call("describe");
  out.openDelivery = await ds.call("open_delivery", { storage: "proto-ds" });
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
  out.benHistory = await until(async () => {
    const conversations = await b.call("conversations");
    if (!conversations.some((c) => c.id === chat.id)) return null;
    const history = await b.call("history", { conversation_id: chat.id });
    return history.length ? history : null;
  });
  out.updates = updates;
  out.benSnapshot = await b.call("snapshot");
  await b.call("send", { conversation_id: chat.id, text: "hi ann" });
  out.annSync = await until(async () => {
    const history = await a.call("history", { conversation_id: chat.id });
    return history.length === 2 ? history : null;
  });

  out.errors = {
    unknownMethod: await errorOf(a.call("frobnicate")),
    unknownConversation: await errorOf(a.call("send", { conversation_id: "01".repeat(16), text: "x" })),
    badId: await errorOf(a.call("send", { conversation_id: "zz", text: "x" })),
    emptyText: await errorOf(a.call("send", { conversation_id: chat.id, text: "" })),
    noDevice: await errorOf(ds.call("sync")),
  };
  const c = await PingWorker.start({ wasm: false });
  out.errors.inUse = await errorOf(c.call("open_device", { storage: "proto-a", user: "ann" }));
  out.errors.dsInUse = await errorOf(c.call("open_delivery", { storage: "proto-ds" }));
  c.terminate();

  // The delivery service restarts from its journal; its old ports die with its worker.
  await ds.call("close");
  ds.terminate();
  const ds2 = await PingWorker.start({ wasm: false });
  out.reopened = await ds2.call("open_delivery", { storage: "proto-ds", wait_for_lock_ms: 3000 });
  out.errors.unavailable = await errorOf(a.call("sync"));
  for (const w of [a, b, ds2]) w.terminate();
  return out;
}
"""


def test_worker_protocol(context: Any, base_url: str) -> None:
    page = context.new_page()
    page.goto(f"{base_url}/web/README.md")  # any page of the origin will do
    out = page.evaluate(SCRIPT)

    assert out["progress"][:4] == ["pyodide", "packages", "wasm", "ready"]
    assert out["start"]["pyodide"].startswith("314.") and out["start"]["wasm_bytes"] > 100_000
    assert out["describe"]["protocol"] == 1 and "open_device" in out["describe"]["methods"]
    assert out["openDelivery"] == {"storage": "proto-ds", "persistent": True, "replayed": 0}
    assert out["connections"] == 2
    assert out["ann"]["user"] == "ann" and out["ann"]["created"] is True and len(out["ann"]["device_id"]) == 32
    assert out["added"] == {"epoch": 1}
    assert out["sent"]["epoch"] == 1 and out["sent"]["seq"] == 2 and out["sent"]["ciphertext_bytes"] > 0

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
    assert errors["inUse"]["name"] == "DatabaseInUse" and "another tab or worker" in errors["inUse"]["message"]
    assert errors["dsInUse"]["name"] == "DatabaseInUse"
    assert errors["unavailable"]["name"] == "DeliveryUnavailable"

    # publish x2, claim, post commit, welcome, take welcome, post x2: all restored in order.
    assert out["reopened"]["replayed"] >= 8
