// Boot Pyodide from dist/pyodide in Node (as demo/run.mjs does) and load ping_web.
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import "fake-indexeddb/auto"; // IndexedDbStorage in Node: the same polyfill the other peers use
import { ROOT } from "./env.mjs";

export const DIST = join(ROOT, "dist/pyodide/");

export async function bootPyodide() {
  const { loadPyodide } = await import(join(DIST, "pyodide.mjs"));
  return loadPyodide({ indexURL: DIST });
}

export async function loadPingWeb(pyodide) {
  await pyodide.loadPackage(["ping_web"], { messageCallback: () => {} });
}

export async function runPythonFile(pyodide, relPath) {
  return pyodide.runPythonAsync(await readFile(join(ROOT, relPath), "utf8"));
}
