// Page-side helper for web/worker.js: start a ping_web device in a worker and talk to it.
//
//   import { PingWorker } from "./client.js";
//   const alice = await PingWorker.start({ onProgress: (p) => console.log(p.stage, p.detail) });
//   await alice.call("open_device", { storage: "alice", user: "alice" });
//   const chat = await alice.call("create_conversation", { name: "lunch" });
//   await alice.call("send", { conversation_id: chat.id, text: "hi" });
//
// A failed call rejects with a PingWorkerError whose `name` is the worker's error name
// (the PingError subclass, e.g. "DatabaseInUse"). The protocol is in web/README.md.

const WORKER_URL = new URL("./worker.js", import.meta.url);

export class PingWorkerError extends Error {
  constructor({ name, message } = {}) {
    super(message ?? "unknown error");
    this.name = name ?? "PingError";
  }
}

export class PingWorker {
  /**
   * Create the worker (it boots on `start`). `url` defaults to worker.js beside this file.
   * @param {{url?: URL|string, name?: string}} [options]
   */
  constructor({ url = WORKER_URL, name } = {}) {
    this.worker = new Worker(url, { type: "module", name });
    this._nextId = 1;
    this._waiting = new Map();
    this._listeners = new Map();
    this.worker.onmessage = (event) => this._receive(event.data);
    this.worker.onerror = (event) => {
      const error = new PingWorkerError({ name: "WorkerError", message: event.message || "the worker failed" });
      for (const { reject } of this._waiting.values()) reject(error);
      this._waiting.clear();
      this._emit("error", { name: error.name, message: error.message });
    };
  }

  /**
   * Create a worker and boot Pyodide + ping_web in it.
   * @param {{url?: URL|string, name?: string, indexURL?: string, wasm?: boolean,
   *          onProgress?: (p: {stage: string, detail: string, ms: number}) => void}} [options]
   * @returns {Promise<PingWorker>} with `info` set to the start result
   */
  static async start({ url, name, indexURL, wasm = true, onProgress } = {}) {
    const worker = new PingWorker({ url, name });
    if (onProgress) worker.on("progress", onProgress);
    const args = { wasm };
    if (indexURL) args.indexURL = indexURL;
    worker.info = await worker.call("start", args);
    return worker;
  }

  /**
   * One request: resolves with `result`, rejects with a PingWorkerError.
   * @param {string} method
   * @param {object} [args]
   * @param {Transferable[]} [transfer] e.g. a MessagePort passed in args
   */
  call(method, args = {}, transfer = []) {
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      this._waiting.set(id, { resolve, reject });
      this.worker.postMessage({ id, method, args }, transfer);
    });
  }

  /** Listen to worker events: "progress", "update", "error". Returns an unsubscribe function. */
  on(event, listener) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(listener);
    return () => this._listeners.get(event).delete(listener);
  }

  /** Stop the worker at once (its database lock is released with it). */
  terminate() {
    this.worker.terminate();
    const error = new PingWorkerError({ name: "WorkerTerminated", message: "the worker was terminated" });
    for (const { reject } of this._waiting.values()) reject(error);
    this._waiting.clear();
  }

  _receive(message) {
    if (message && "event" in message) {
      this._emit(message.event, message.data);
      return;
    }
    const waiting = this._waiting.get(message?.id);
    if (!waiting) return;
    this._waiting.delete(message.id);
    if (message.error) waiting.reject(new PingWorkerError(message.error));
    else waiting.resolve(message.result);
  }

  _emit(event, data) {
    for (const listener of this._listeners.get(event) ?? []) {
      try {
        listener(data);
      } catch (err) {
        console.error(err);
      }
    }
  }
}
