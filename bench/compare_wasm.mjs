// Compare builds of ping-web's wasm module, called from JavaScript (no Python, no storage):
//   node bench/compare_wasm.mjs [other.wasm ...]
// The shipped module (ping_web/mls/_wasm/) is always measured first; each other .wasm is loaded
// with the ping_web_mls.js glue beside it (or the shipped glue if there is none). Runs
// are interleaved; medians of 7 rounds. Used to weigh build settings (opt-level, wasm-opt
// level) against the size budget; see bench/PROFILE.md.
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { gzipSync } from "node:zlib";
import { decodeByteList, encodeByteList, GLUE_PATH, WASM_PATH } from "./lib/pingwasm.mjs";

function loader(wasmPath) {
  const sibling = join(dirname(wasmPath), "ping_web_mls.js");
  const glue = new Function(readFileSync(existsSync(sibling) ? sibling : GLUE_PATH, "utf8") + "\nreturn wasm_bindgen;");
  const bytes = readFileSync(wasmPath);
  const module = new WebAssembly.Module(bytes);
  return {
    raw: bytes.length,
    gzip: gzipSync(bytes, { level: 9 }).length,
    instantiate() {
      const ns = glue();
      ns.initSync({ module });
      return ns;
    },
  };
}

function setup(ns) {
  const pa = new ns.Provider(), pb = new ns.Provider();
  const ia = ns.Identity.create(pa, new TextEncoder().encode("alice"));
  const ib = ns.Identity.create(pb, new TextEncoder().encode("bob"));
  const ga = ns.Group.create(pa, ia, new Uint8Array(16).fill(7));
  const [, welcome] = decodeByteList(ga.addMembers(pa, ia, encodeByteList([ib.keyPackage(pb)]), new Uint8Array()));
  ga.mergePendingCommit(pa);
  const gb = ns.Group.join(pb, welcome.slice());
  pa.checkpoint();
  pb.checkpoint();
  const pt = new Uint8Array(200), aad = new Uint8Array(45);
  const sha = new Uint8Array(createHash("sha256").update(pt).digest());
  const time = (n, body) => {
    const t = performance.now();
    body();
    return ((performance.now() - t) / n) * 1000;
  };
  return {
    roundTrip: (n) => time(n, () => {
      for (let i = 0; i < n; i++) {
        const c = ga.createMessage(pa, ia, pt, aad);
        pa.checkpoint();
        gb.processMessage(pb, c, aad, sha);
        pb.checkpoint();
      }
    }),
    catchup(n) {
      const queued = [];
      for (let i = 0; i < n; i++) queued.push(ga.createMessage(pa, ia, pt, aad));
      pa.checkpoint();
      return time(n, () => {
        for (const c of queued) gb.processMessage(pb, c, aad, sha);
        pb.checkpoint();
      });
    },
    keyPackage(n) {
      const p = new ns.Provider();
      return time(n, () => {
        for (let i = 0; i < n; i++) ns.Identity.create(p, new TextEncoder().encode(`u${i}`)).keyPackage(p);
      });
    },
  };
}

const builds = [["shipped", WASM_PATH], ...process.argv.slice(2).map((p) => [p, p])].map(([name, path]) => {
  const l = loader(path);
  return { name, raw: l.raw, gzip: l.gzip, bench: setup(l.instantiate()), rt: [], cu: [], kp: [] };
});
for (const b of builds) b.bench.roundTrip(50);
for (let r = 0; r < 7; r++) {
  for (const b of builds) {
    b.rt.push(b.bench.roundTrip(100));
    b.cu.push(b.bench.catchup(200));
    b.kp.push(b.bench.keyPackage(30));
  }
}
const med = (a) => [...a].sort((x, y) => x - y)[a.length >> 1];
console.log("| build | raw | gzip -9 | round trip (us) | catch-up (us/msg) | identity + KeyPackage (us) |");
console.log("| --- | ---: | ---: | ---: | ---: | ---: |");
for (const b of builds) {
  console.log(`| ${b.name} | ${(b.raw / 1e6).toFixed(2)} MB | ${Math.round(b.gzip / 1e3)} KB | ${med(b.rt).toFixed(0)} | ${med(b.cu).toFixed(0)} | ${med(b.kp).toFixed(0)} |`);
}
