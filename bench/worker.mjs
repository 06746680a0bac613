// One benchmark peer in its own Node process, driven over IPC by bench/run.mjs:
//   {op: "versions" | "prepare" | "rep" | "sizes" | "exit", kind, params} -> {ok, result | error}
// A process per peer keeps their heaps, wasm instances and IndexedDB polyfill apart.
import "fake-indexeddb/auto";
import { Driver } from "./lib/driver.mjs";
import { browserShims } from "./lib/env.mjs";

browserShims();
const peerId = process.argv[2];
const module = await import(`./peers/${peerId}.mjs`);
// The Python peer runs its cases inside Pyodide (its own driver); the JS peers share one.
const primitives = await module.createPeer();
const peer = module.ownDriver ? primitives : Object.assign(new Driver(primitives), { versions: primitives.versions });

process.on("message", async (message) => {
  try {
    let result;
    if (message.op === "versions") result = await peer.versions();
    else if (message.op === "prepare") result = await peer.prepare(message.kind, message.params);
    else if (message.op === "rep") result = await peer.rep(message.kind, message.params);
    else if (message.op === "sizes") result = await peer.sizes();
    else if (message.op === "exit") {
      process.send({ id: message.id, ok: true, result: null }, () => process.exit(0));
      return;
    } else throw new Error(`unknown op ${message.op}`);
    process.send({ id: message.id, ok: true, result: result ?? null });
  } catch (error) {
    process.send({ id: message.id, ok: false, error: String(error?.stack ?? error) });
  }
});
process.send({ ready: true });
