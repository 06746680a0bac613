// ping-web's wasm module called directly from JavaScript: the same files the wheel ships
// (ping_web/mls/_wasm/, built by ./build.sh), loaded the way ping_web/mls/loader.py does it
// (evaluate the no-modules glue, then initSync with the compiled module). No Python.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "./env.mjs";

export const WASM_DIR = join(ROOT, "ping_web/mls/_wasm");
export const GLUE_PATH = join(WASM_DIR, "ping_web_mls.js");
export const WASM_PATH = join(WASM_DIR, "ping_web_mls_bg.wasm");

let compiled = null;

/** A fresh instance of the module: its exports namespace (Provider, Identity, Group, ...). */
export function instantiate() {
  if (compiled === null) {
    compiled = {
      // The glue declares `let wasm_bindgen` at top level: wrap it so each call gets its own.
      glue: new Function(readFileSync(GLUE_PATH, "utf8") + "\nreturn wasm_bindgen;\n//# sourceURL=ping_web_mls.js"),
      module: new WebAssembly.Module(readFileSync(WASM_PATH)),
    };
  }
  const ns = compiled.glue();
  ns.wasmMemory = ns.initSync({ module: compiled.module }).memory;
  return ns;
}

export function encodeByteList(items) {
  let size = 0;
  for (const item of items) size += 4 + item.length;
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  let pos = 0;
  for (const item of items) {
    view.setUint32(pos, item.length);
    out.set(item, pos + 4);
    pos += 4 + item.length;
  }
  return out;
}

export function decodeByteList(data) {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const items = [];
  let pos = 0;
  while (pos < data.length) {
    const size = view.getUint32(pos);
    items.push(data.subarray(pos + 4, pos + 4 + size));
    pos += 4 + size;
  }
  return items;
}

/** A change list (docs/wasm-api.md) as [key, value | null] pairs (views into `data`). */
export function decodeChanges(data) {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const changes = [];
  let pos = 0;
  while (pos < data.length) {
    const keyLength = view.getUint32(pos);
    const key = data.subarray(pos + 4, pos + 4 + keyLength);
    pos += 4 + keyLength;
    const valueLength = view.getUint32(pos);
    pos += 4;
    if (valueLength === 0xffffffff) {
      changes.push([key, null]);
    } else {
      changes.push([key, data.subarray(pos, pos + valueLength)]);
      pos += valueLength;
    }
  }
  return changes;
}

export const hex = (bytes) => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("hex");
