// One tab's ping_web in a module Web Worker: boots Pyodide, loads ping_web and host.py
// (next to this file), then hands every message from the page to the Python host.
//
// Requests {id, method, args} get {id, result} or {id, error: {name, message}}; the host
// also posts events {event, data}. See host.py for the methods.

const HERE = new URL(".", import.meta.url);
const INDEX_URL = new URL("../../dist/pyodide/", HERE).href;

let handle = null;
let failure = null;
const waiting = [];

// Set before the first await: messages posted right after `new Worker` are not lost.
self.onmessage = (event) => {
  const message = event.data ?? {};
  if (handle) handle(message);
  else if (failure) self.postMessage({ id: message.id, error: failure });
  else waiting.push(message);
};

async function boot() {
  const { loadPyodide } = await import(new URL("pyodide.mjs", INDEX_URL).href);
  const source = fetch(new URL("host.py", HERE)).then((response) => {
    if (!response.ok) throw new Error(`host.py: HTTP ${response.status}`);
    return response.text();
  });
  const pyodide = await loadPyodide({ indexURL: INDEX_URL });
  await pyodide.loadPackage(["ping_web"], { messageCallback: () => {}, errorCallback: (m) => console.warn(m) });
  pyodide.FS.mkdirTree("/tabs");
  pyodide.FS.writeFile("/tabs/tabs_host.py", await source);
  pyodide.runPython("import sys\nif '/tabs' not in sys.path: sys.path.insert(0, '/tabs')");
  const host = pyodide.pyimport("tabs_host").TabsHost();
  handle = host.handle;
}

boot().then(
  () => {
    for (const message of waiting.splice(0)) handle(message);
    self.postMessage({ event: "ready", data: null });
  },
  (err) => {
    console.error(err);
    failure = { name: "StartupError", message: String(err?.message ?? err) };
    for (const message of waiting.splice(0)) self.postMessage({ id: message.id, error: failure });
    self.postMessage({ event: "failed", data: failure });
  },
);
