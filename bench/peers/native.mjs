// Peer: native OpenMLS. The same crate as the wasm module (wasm/: OpenMLS version, crypto
// provider, key/value working set, exported API), built for the host by ./build.sh bench
// (bench/native) and driven over a JSON-lines pipe. It runs the cases itself (its own
// driver, like the Python peer), so no per-message call crosses the pipe while a timer runs.
import { execFileSync, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { ROOT } from "../lib/env.mjs";

export const id = "native";
export const ownDriver = true;

export const BINARY = process.env.PING_BENCH_NATIVE || join(ROOT, ".cache/bench-native/release/ping_web_bench_native");

function requireBinary() {
  if (!existsSync(BINARY)) throw new Error(`no native benchmark at ${BINARY}: run ./build.sh bench`);
}

export async function cold() {
  requireBinary();
  const t0 = performance.now();
  const out = JSON.parse(execFileSync(BINARY, ["cold"], { encoding: "utf8" }).trim());
  // The binary times from its own start; the process start is what a JS peer's import is.
  return { importInit: out.importInit, firstClient: out.firstClient, processStart: performance.now() - t0 - out.firstClient };
}

export async function createPeer() {
  requireBinary();
  const child = spawn(BINARY, ["serve"], { stdio: ["pipe", "pipe", "inherit"] });
  const waiting = [];
  createInterface({ input: child.stdout }).on("line", (line) => {
    const reply = JSON.parse(line);
    const waiter = waiting.shift();
    if (reply.ok) waiter.resolve(reply.result);
    else waiter.reject(new Error(reply.error));
  });
  child.on("exit", (code) => {
    for (const waiter of waiting.splice(0)) waiter.reject(new Error(`native benchmark exited (${code})`));
  });
  const call = (op, kind, params) =>
    new Promise((resolve, reject) => {
      waiting.push({ resolve, reject });
      child.stdin.write(JSON.stringify({ op, kind, params: params ?? {} }) + "\n");
    });
  return {
    versions: () => call("versions"),
    prepare: (kind, params) => call("prepare", kind, params),
    rep: (kind, params) => call("rep", kind, params),
    sizes: () => call("sizes"),
    exit: () => child.stdin.end(),
  };
}
