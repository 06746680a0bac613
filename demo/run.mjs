// ping-web demo: boots Pyodide from dist/pyodide in Node, loads the ping_web wheel and runs
// demo/conversation.py, a scripted conversation between two users with real OpenMLS.
import { readFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import "fake-indexeddb/auto";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const { loadPyodide } = await import(join(root, "dist/pyodide/pyodide.mjs"));

const started = performance.now();
const pyodide = await loadPyodide({ indexURL: join(root, "dist/pyodide/") });
await pyodide.loadPackage(["ping_web"], { messageCallback: () => {} });
console.log(`Pyodide ${pyodide.version} and ping_web loaded in ${Math.round(performance.now() - started)} ms\n`);
const script = await readFile(join(root, "demo/conversation.py"), "utf8");
await pyodide.runPythonAsync(script);
