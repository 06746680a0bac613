// Peer: ping-web's Python API in Pyodide (MessagingClient with MemoryStorage or
// IndexedDbStorage over fake-indexeddb). The cases themselves run in Python
// (bench/pingweb_bench.py); this wrapper only boots Pyodide and forwards one call per rep.
import { bootPyodide, loadPingWeb, runPythonFile } from "../lib/pyodide.mjs";

export const id = "pingweb-py";
export const ownDriver = true;

export async function cold() {
  const t0 = performance.now();
  const pyodide = await bootPyodide();
  const t1 = performance.now();
  await loadPingWeb(pyodide); // the ping_web wheel (with its wasm and bytecode; no dependencies)
  const t2 = performance.now();
  pyodide.runPython("import ping_web.client, ping_web.storage");
  const t3 = performance.now();
  pyodide.runPython("from ping_web.mls.openmls import MlsRuntime\nMlsRuntime.load().provider()");
  const t4 = performance.now();
  await pyodide.runPythonAsync(
    "from ping_web.client import MessagingClient\nfrom ping_web.storage import MemoryStorage\n" +
      "await MessagingClient.open(MemoryStorage(), b'alice')",
  );
  const t5 = performance.now();
  return {
    runtimeBoot: t1 - t0,
    loadPackage: t2 - t1,
    import: t3 - t2,
    wasmInit: t4 - t3,
    importInit: t4 - t1,
    firstClient: t5 - t0,
  };
}

export async function createPeer() {
  const pyodide = await bootPyodide();
  await loadPingWeb(pyodide);
  await runPythonFile(pyodide, "bench/pingweb_bench.py");
  const py = (name) => pyodide.globals.get(name);
  const [prepare, rep, sizes, versions] = ["prepare", "rep", "sizes", "versions"].map(py);
  return {
    versions: () => ({ ...JSON.parse(versions()), pyodide: pyodide.version }),
    prepare: async (kind, params) => JSON.parse(await prepare(kind, JSON.stringify(params ?? {}))),
    rep: async (kind, params) => JSON.parse(await rep(kind, JSON.stringify(params ?? {}))),
    sizes: async () => JSON.parse(await sizes()),
  };
}
