// ping_web in a module Web Worker: one device (or an in-memory delivery service) per worker.
//
//   const worker = new Worker(new URL("web/worker.js", location), { type: "module" });
//   worker.postMessage({ id: 1, method: "start", args: {} });           // boot Pyodide + ping_web
//   worker.postMessage({ id: 2, method: "open_device",
//                        args: { storage: "alice", user: "alice", relay: location.origin } });
//
// Every request is {id, method, args}; every reply is {id, result} or
// {id, error: {name, message}} (name: the PingError subclass, e.g. "DatabaseInUse").
// Events arrive as {event, data}: "progress" while starting, "update" after a background
// sync, "connection" when the relay connection changes, "error" when a sync failed. The
// full API is in web/README.md; web/client.js wraps it.
//
// This file only boots Pyodide and forwards messages: the device logic is Python
// (ping_worker.py next to this file, and the ping_web wheel).

const HERE = new URL(".", import.meta.url);
const DEFAULT_INDEX_URL = new URL("../dist/pyodide/", HERE).href;

let handle = null; // WorkerHost.handle of the Python host, once started
let starting = null; // the start() promise
let failure = null; // why start failed, if it did
const waiting = []; // messages that arrived before the host existed

const started = performance.now();
const elapsed = () => Math.round(performance.now() - started);
const progress = (stage, detail) => self.postMessage({ event: "progress", data: { stage, detail, ms: elapsed() } });
const errorRecord = (err, name) => ({ name: name || err?.name || "Error", message: String(err?.message ?? err) });

// Set before the first await: messages posted right after `new Worker` are not lost.
self.onmessage = (event) => {
  const message = event.data ?? {};
  if (message.method === "start") {
    start(message);
  } else if (handle) {
    handle(message);
  } else if (failure) {
    self.postMessage({ id: message.id, error: failure });
  } else {
    waiting.push(message);
  }
};

async function start({ id, args = {} }) {
  if (starting) {
    // A second start: answer with the first one's outcome.
    starting.then(
      (result) => self.postMessage({ id, result }),
      (err) => self.postMessage({ id, error: errorRecord(err, "StartupError") }),
    );
    return;
  }
  starting = boot(args);
  try {
    const result = await starting;
    self.postMessage({ id, result });
    for (const message of waiting.splice(0)) handle(message);
  } catch (err) {
    console.error(err);
    failure = errorRecord(err, "StartupError");
    self.postMessage({ id, error: failure });
    for (const message of waiting.splice(0)) self.postMessage({ id: message.id, error: failure });
  }
}

async function boot({ indexURL = DEFAULT_INDEX_URL, hostURL = new URL("ping_worker.py", HERE).href, wasm = true }) {
  progress("pyodide", "Loading the Pyodide runtime");
  const { loadPyodide } = await import(new URL("pyodide.mjs", indexURL).href);
  const fetchText = (url) =>
    fetch(url).then((response) => {
      if (!response.ok) throw new Error(`could not fetch ${url}: HTTP ${response.status}`);
      return response.text();
    });
  const hostSource = fetchText(hostURL);
  const pyodide = await loadPyodide({ indexURL });
  progress("packages", "Loading ping_web");
  await pyodide.loadPackage(["ping_web"], { messageCallback: () => {}, errorCallback: (m) => console.warn(m) });
  pyodide.FS.mkdirTree("/ping_worker");
  pyodide.FS.writeFile("/ping_worker/ping_worker.py", await hostSource);
  pyodide.runPython("import sys\nif '/ping_worker' not in sys.path: sys.path.insert(0, '/ping_worker')");
  const module = pyodide.pyimport("ping_worker");
  if (wasm) {
    progress("wasm", "Compiling the OpenMLS wasm module");
    pyodide.runPython("from ping_web.mls.openmls import MlsRuntime\nMlsRuntime.load()");
  }
  const host = module.WorkerHost();
  handle = host.handle; // one proxy for every message (a fresh attribute proxy each time would leak)
  progress("ready", "Pyodide and ping_web loaded");
  const info = pyodide.runPython(
    "import json, sys, ping_web.mls.loader as w\n" +
      "json.dumps({'python': sys.version.split()[0], 'wasm_bytes': w.wasm_size()})",
  );
  return { pyodide: pyodide.version, ...JSON.parse(info), boot_ms: elapsed() };
}
