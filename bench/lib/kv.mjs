// Key/value stores for the JS peers that have no storage of their own (ping-web's wasm
// called from JS, ts-mls): "state persisted after every message" means every change is
// written here, and awaited, before the next message. Memory: a Map. IndexedDB: one
// readwrite transaction per write over fake-indexeddb (the same polyfill ping-web's
// IndexedDbStorage and core-crypto's keystore use in these runs).
import { hex } from "./pingwasm.mjs";

let databases = 0;

export class MemoryKv {
  constructor() {
    this.map = new Map();
    this.bytesWritten = 0;
  }
  async write(puts, deletes = []) {
    for (const key of deletes) this.map.delete(hex(key));
    for (const [key, value] of puts) {
      this.map.set(hex(key), value);
      this.bytesWritten += key.length + value.length;
    }
  }
  get(key) {
    return this.map.get(hex(key));
  }
  totalBytes() {
    let total = 0;
    for (const [key, value] of this.map) total += key.length / 2 + value.length;
    return total;
  }
}

export class IdbKv {
  static async open(label) {
    const name = `bench-${label}-${process.pid}-${++databases}`;
    const request = indexedDB.open(name, 1);
    request.onupgradeneeded = () => request.result.createObjectStore("kv");
    const db = await new Promise((resolve, reject) => {
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    });
    return new IdbKv(db);
  }
  constructor(db) {
    this.db = db;
    this.bytesWritten = 0;
  }
  /** One transaction: every request issued at once, then await its completion. */
  write(puts, deletes = []) {
    const tx = this.db.transaction(["kv"], "readwrite", { durability: "strict" });
    const store = tx.objectStore("kv");
    for (const key of deletes) store.delete(key);
    for (const [key, value] of puts) {
      store.put(value, key);
      this.bytesWritten += key.length + value.length;
    }
    return new Promise((resolve, reject) => {
      tx.oncomplete = () => resolve();
      tx.onabort = tx.onerror = () => reject(tx.error);
    });
  }
  async totalBytes() {
    const tx = this.db.transaction(["kv"], "readonly");
    const store = tx.objectStore("kv");
    const keys = store.getAllKeys();
    const values = store.getAll();
    await new Promise((resolve) => (tx.oncomplete = resolve));
    let total = 0;
    keys.result.forEach((k, i) => (total += k.byteLength + values.result[i].byteLength));
    return total;
  }
}

export function openKv(storage, label) {
  return storage === "idb" ? IdbKv.open(label) : Promise.resolve(new MemoryKv());
}
