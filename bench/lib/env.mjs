// Node host set-up shared by every benchmark process.
import { readFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "../..");

/** What core-crypto's browser build needs under Node (found when it was first run here). */
export function browserShims() {
  globalThis.window ??= globalThis;
  // Node 20 lacks Error.isError (core-crypto's transaction() calls it on failures).
  if (typeof Error.isError !== "function") {
    Error.isError = (value) => value instanceof Error || Object.prototype.toString.call(value) === "[object Error]";
  }
  // Its wasm-bindgen init fetch()es the .wasm file; Node's fetch cannot read file: URLs.
  if (!globalThis.fetch.__benchFileFetch) {
    const networkFetch = globalThis.fetch;
    const fileFetch = async (input, init) => {
      const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url;
      if (url.startsWith("file:")) {
        const bytes = await readFile(fileURLToPath(url));
        return new Response(bytes, { headers: { "content-type": "application/wasm" } });
      }
      return networkFetch(input, init);
    };
    fileFetch.__benchFileFetch = true;
    globalThis.fetch = fileFetch;
  }
}
