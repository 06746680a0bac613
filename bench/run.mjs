// ping-web benchmarks, side by side with core-crypto and ts-mls.
//
//   ./build.sh bench                       build what is missing, then this
//   node bench/run.mjs                     the full run (about 10 minutes on 2 cores)
//   PING_BENCH_QUICK=1 node bench/run.mjs  a fast smoke run (fewer runs, smaller cases)
//
// Every peer runs in its own Node process (bench/worker.mjs), kept alive across cases;
// cold starts run in fresh processes (bench/cold.mjs). Runs of one case are interleaved
// across peers, in a rotating order, so load on the machine hits all peers alike; every
// figure is the median of its runs with min and max, and every ratio is the median of
// per-run ratios of runs made back to back in this same invocation.
// Prints one markdown table and writes bench/RESULTS.md.
import { execFileSync, fork } from "node:child_process";
import { readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import os from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

const BENCH = dirname(fileURLToPath(import.meta.url));
const ROOT = join(BENCH, "..");
const QUICK = process.env.PING_BENCH_QUICK === "1";
const COMMAND = process.env.PING_BENCH_COMMAND || `${QUICK ? "PING_BENCH_QUICK=1 " : ""}node bench/run.mjs`;

const PEERS = [
  { id: "pingweb_py", label: "ping-web (Python in Pyodide)" },
  { id: "pingweb_js", label: "ping-web wasm from JS" },
  { id: "native", label: "native OpenMLS (same crate, host build)" },
  { id: "corecrypto", label: "core-crypto" },
  { id: "tsmls", label: "ts-mls" },
];

const CONFIG = QUICK
  ? {
      coldRuns: 2,
      throughput: { runs: 2, memory: 50, idb: 30 },
      catchup: { n: 1000, runs: 2 },
      membership: [
        { N: 10, runs: 2 },
        { N: 100, runs: 2 },
      ],
      groupsize: { sizes: [2, 10, 100], runs: 2, n: 30 },
      history: { stored: [10000], storages: ["memory"], runs: 2, n: 20 },
      identity: { runs: 2 },
      recovery: { sizes: [2, 100], runs: 2, history: 1000 },
    }
  : {
      coldRuns: 5,
      throughput: { runs: 5, memory: 200, idb: 100 },
      catchup: { n: 10000, runs: 3 },
      membership: [
        { N: 10, runs: 5 },
        { N: 100, runs: 3 },
        { N: 1000, runs: 2, cap: "N=1000: 2 runs per peer (a run takes seconds, its KeyPackages tens of seconds)" },
      ],
      groupsize: { sizes: [2, 10, 100, 1000], runs: 3, n: 100 },
      history: { stored: [10000, 100000], storages: ["memory", "idb"], runs: 3, n: 50 },
      identity: { runs: 5 },
      recovery: { sizes: [2, 100, 1000], runs: 3, history: 10000 },
    };

// -- small helpers ---------------------------------------------------------------------------

const log = (...args) => process.stderr.write(args.join(" ") + "\n");
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const summary = (xs) => (xs.length ? { median: median(xs), min: Math.min(...xs), max: Math.max(...xs), n: xs.length } : null);

function num(x) {
  if (x === null || x === undefined || Number.isNaN(x)) return "—";
  const a = Math.abs(x);
  if (a >= 100) return Math.round(x).toLocaleString("en-US");
  if (a >= 10) return x.toFixed(1);
  return x.toFixed(2);
}
const cell = (s) => (s ? `${num(s.median)} (${num(s.min)}–${num(s.max)})` : "—");
// Decimal units, as in the size budget (2.0 MB, 650 KB) and tests/unit/test_wasm_size.py.
const kb = (bytes) => `${(bytes / 1000).toLocaleString("en-US", { maximumFractionDigits: 0 })} KB`;

function rotated(list, r) {
  return list.map((_, i) => list[(i + r) % list.length]);
}

// -- peers in their own processes ------------------------------------------------------------

class Worker {
  constructor(peer) {
    this.peer = peer;
    this.child = fork(join(BENCH, "worker.mjs"), [peer.id], { stdio: ["ignore", "inherit", "inherit", "ipc"] });
    this.pending = new Map();
    this.nextId = 0;
    this.ready = new Promise((resolve, reject) => {
      this.child.on("message", (message) => {
        if (message.ready) return resolve();
        const waiter = this.pending.get(message.id);
        this.pending.delete(message.id);
        if (message.ok) waiter.resolve(message.result);
        else waiter.reject(new Error(message.error));
      });
      this.child.on("exit", (code) => {
        const error = new Error(`${peer.id} worker exited (${code})`);
        reject(error);
        for (const waiter of this.pending.values()) waiter.reject(error);
        this.pending.clear();
      });
    });
  }
  call(op, kind, params) {
    return new Promise((resolve, reject) => {
      const id = ++this.nextId;
      this.pending.set(id, { resolve, reject });
      this.child.send({ id, op, kind, params });
    });
  }
  async exit() {
    try {
      await this.call("exit");
    } catch {
      /* already gone */
    }
  }
}

const errors = [];
function failed(peer, what, error) {
  const line = String(error?.message ?? error).split("\n")[0];
  errors.push(`${peer.label}, ${what}: ${line}`);
  log(`  ! ${peer.id} ${what}: ${line}`);
}

// -- cases -----------------------------------------------------------------------------------

function coldStarts() {
  const runs = Object.fromEntries(PEERS.map((p) => [p.id, []]));
  for (let r = 0; r < CONFIG.coldRuns; r++) {
    for (const peer of rotated(PEERS, r)) {
      try {
        const out = execFileSync(process.execPath, [join(BENCH, "cold.mjs"), peer.id], { cwd: ROOT, encoding: "utf8" });
        runs[peer.id].push(JSON.parse(out.trim().split("\n").pop()));
      } catch (error) {
        failed(peer, "cold start", error);
      }
    }
    log(`  cold start run ${r + 1}/${CONFIG.coldRuns}`);
  }
  const field = (id, name) => runs[id].map((x) => x[name]).filter((x) => x !== undefined);
  return { runs, field };
}

/** prepare every peer, then `runs` rounds of one rep per peer (rotating order). */
async function interleaved(workers, kind, params, runs, label) {
  const results = Object.fromEntries(workers.map((w) => [w.peer.id, []]));
  const live = [];
  for (const w of workers) {
    const start = performance.now();
    try {
      const prepared = await w.call("prepare", kind, params);
      if (prepared?.skip) {
        log(`  ${label}: ${w.peer.id} skipped (${prepared.skip})`);
        continue;
      }
      live.push(w);
      log(`  ${label}: ${w.peer.id} prepared in ${Math.round(performance.now() - start)} ms`);
    } catch (error) {
      failed(w.peer, label, error);
    }
  }
  for (let r = 0; r < runs; r++) {
    for (const w of rotated(live, r)) {
      if (results[w.peer.id] === null) continue;
      try {
        results[w.peer.id].push(await w.call("rep", kind, params));
      } catch (error) {
        failed(w.peer, label, error);
        results[w.peer.id] = null;
      }
    }
  }
  for (const id of Object.keys(results)) if (results[id] === null) results[id] = [];
  return results;
}

/** Median (min, max) of per-run ratios a/b, runs paired in order. */
function pairedRatio(a, b, invert = false) {
  const n = Math.min(a.length, b.length);
  const ratios = [];
  for (let i = 0; i < n; i++) ratios.push(invert ? b[i] / a[i] : a[i] / b[i]);
  return summary(ratios);
}

// -- sizes of what ships ---------------------------------------------------------------------

function fileSizes(path) {
  const bytes = readFileSync(path);
  return { raw: bytes.length, gzip: gzipSync(bytes, { level: 9 }).length };
}

function jsTreeSizes(dirs) {
  let raw = 0;
  const chunks = [];
  const walk = (dir) => {
    for (const name of readdirSync(dir)) {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) walk(path);
      else if (/\.(m?js)$/.test(name) && !name.endsWith(".d.ts")) {
        const data = readFileSync(path);
        raw += data.length;
        chunks.push(data);
      }
    }
  };
  for (const dir of dirs) walk(dir);
  return { raw, gzip: gzipSync(Buffer.concat(chunks), { level: 9 }).length };
}

// -- versions and machine --------------------------------------------------------------------

const pkgVersion = (name) => JSON.parse(readFileSync(join(ROOT, "node_modules", name, "package.json"), "utf8")).version;

function machine() {
  const cpuinfo = readFileSync("/proc/cpuinfo", "utf8");
  const model = (cpuinfo.match(/^model name\s*:\s*(.*)$/m) || [, os.cpus()[0]?.model ?? "?"])[1];
  const memKb = Number((readFileSync("/proc/meminfo", "utf8").match(/^MemTotal:\s*(\d+)/m) || [, 0])[1]);
  let nproc = String(os.availableParallelism?.() ?? os.cpus().length);
  try {
    nproc = execFileSync("nproc", { encoding: "utf8" }).trim();
  } catch {
    /* keep Node's count */
  }
  return { nproc, model, memory: `${(memKb / 1024 / 1024).toFixed(1)} GiB`, kernel: `${os.type()} ${os.release()}` };
}

function gitRevision() {
  try {
    const rev = execFileSync("git", ["rev-parse", "--short", "HEAD"], { cwd: ROOT, encoding: "utf8" }).trim();
    const dirty = execFileSync("git", ["status", "--porcelain", "--", "ping_web", "wasm/src"], { cwd: ROOT, encoding: "utf8" }).trim();
    return dirty ? `${rev} + uncommitted changes in ping_web/ or wasm/src` : rev;
  } catch {
    return "?";
  }
}

// -- main ------------------------------------------------------------------------------------

const started = new Date();
const load0 = os.loadavg();
const t0 = performance.now();
log(`ping-web benchmarks${QUICK ? " (quick)" : ""}: ${PEERS.map((p) => p.label).join(", ")}`);

log("cold start (fresh processes)");
const cold = coldStarts();

log("starting one worker per peer");
const workers = PEERS.map((p) => new Worker(p));
for (const w of workers) {
  try {
    await w.ready;
  } catch (error) {
    failed(w.peer, "start", error);
  }
}
const versions = {};
for (const w of workers) {
  try {
    versions[w.peer.id] = await w.call("versions");
  } catch (error) {
    failed(w.peer, "versions", error);
    versions[w.peer.id] = {};
  }
}

const throughput = {};
for (const storage of ["memory", "idb"]) {
  for (const op of ["send", "receive", "roundtrip"]) {
    const n = CONFIG.throughput[storage];
    const label = `${op} ${storage}`;
    log(`${label}: ${CONFIG.throughput.runs} runs of ${n} messages`);
    throughput[label] = await interleaved(workers, "throughput", { storage, op, n }, CONFIG.throughput.runs, label);
  }
}

log(`catch-up: ${CONFIG.catchup.n} queued messages, ${CONFIG.catchup.runs} runs`);
const catchup = await interleaved(
  workers,
  "catchup",
  { n: CONFIG.catchup.n, receivers: CONFIG.catchup.runs },
  CONFIG.catchup.runs,
  "catch-up",
);

const membership = {};
for (const { N, runs } of CONFIG.membership) {
  log(`membership: add ${N}, ${runs} runs`);
  membership[N] = await interleaved(workers, "membership", { N }, runs, `add ${N}`);
}

log(`identity: ${CONFIG.identity.runs} runs (ping-web only)`);
const identity = await interleaved(
  workers.filter((w) => w.peer.id === "pingweb_py"),
  "identity",
  { log: 100, users: 10 },
  CONFIG.identity.runs,
  "identity",
);

const recovery = {};
for (const N of CONFIG.recovery.sizes) {
  log(`recovery: rejoin a group of ${N}${N === CONFIG.recovery.sizes[0] ? `, history of ${CONFIG.recovery.history}` : ""}`);
  const params = { N, history: N === CONFIG.recovery.sizes[0] ? CONFIG.recovery.history : 0 };
  recovery[N] = await interleaved(workers.filter((w) => w.peer.id === "pingweb_py"), "recovery", params, CONFIG.recovery.runs, `recovery ${N}`);
}

const groupsize = {};
for (const N of CONFIG.groupsize.sizes) {
  log(`group of ${N}: ${CONFIG.groupsize.runs} runs of ${CONFIG.groupsize.n} messages`);
  groupsize[N] = await interleaved(workers, "groupsize", { N, n: CONFIG.groupsize.n }, CONFIG.groupsize.runs, `group of ${N}`);
}

const history = {};
for (const storage of CONFIG.history.storages) {
  for (const stored of CONFIG.history.stored) {
    const key = `${storage} ${stored}`;
    log(`history: ${stored} stored messages, ${storage}, ${CONFIG.history.runs} runs of ${CONFIG.history.n}`);
    history[key] = await interleaved(workers, "history", { storage, stored, n: CONFIG.history.n }, CONFIG.history.runs, `history ${key}`);
  }
}

log("sizes");
const sizes = {};
for (const w of workers) {
  try {
    sizes[w.peer.id] = await w.call("sizes");
  } catch (error) {
    failed(w.peer, "sizes", error);
    sizes[w.peer.id] = null;
  }
}
for (const w of workers) await w.exit();

// -- the table -------------------------------------------------------------------------------

const ids = PEERS.map((p) => p.id);
const rows = [];
const row = (name, values) => rows.push(`| ${name} | ${values.join(" | ")} |`);
const values = (xs) => summary(xs);
const val = (results, id, field = "value") => (results[id] ?? []).map((x) => x[field]);

row("cold start: Pyodide boot (ms)", ids.map((id) => (id === "pingweb_py" ? cell(values(cold.field(id, "runtimeBoot"))) : "—")));
row("cold start: import + init (ms)", ids.map((id) => cell(values(cold.field(id, "importInit")))));
row("cold start: to first usable client (ms)", ids.map((id) => cell(values(cold.field(id, "firstClient")))));
const storageName = { memory: "memory", idb: "IndexedDB" };
for (const storage of ["memory", "idb"]) {
  for (const [op, name] of [["send", "send"], ["receive", "receive"], ["roundtrip", "round trip"]]) {
    row(`${name}, ${storageName[storage]} (msg/s)`, ids.map((id) => cell(values(val(throughput[`${op} ${storage}`], id)))));
  }
}
row(`catch-up: ${CONFIG.catchup.n.toLocaleString("en-US")} queued, one batch (msg/s)`, ids.map((id) => cell(values(val(catchup, id)))));
for (const { N, cap } of CONFIG.membership) {
  const capped = cap ? " ¹" : "";
  row(`add ${N}: commit (ms)${capped}`, ids.map((id) => cell(values(val(membership[N], id, "add")))));
  row(`add ${N}: receiver processes it (ms)${capped}`, ids.map((id) => cell(values(val(membership[N], id, "process")))));
  row(`add ${N}: join from the Welcome (ms)${capped}`, ids.map((id) => cell(values(val(membership[N], id, "join")))));
}

const thousands = (n) => n.toLocaleString("en-US");
{
  const only = (field) => ids.map((id) => (id === "pingweb_py" ? cell(values(val(identity, id, field))) : "—"));
  row("verify a device log of 100 entries (ms)", only("verify"));
  row("add 10 users' devices, device checks on (ms)", only("add_checked"));
  row("add 10 users' devices, device checks off (ms)", only("add_unchecked"));
  row("join a group of 11, device checks on (ms)", only("join_checked"));
  row("join a group of 11, device checks off (ms)", only("join_unchecked"));
  for (const N of CONFIG.recovery.sizes) {
    const of = (field) => ids.map((id) => (id === "pingweb_py" ? cell(values(val(recovery[N], id, field))) : "—"));
    row(`rejoin a group of ${thousands(N)}: external commit (ms)`, of("rejoin"));
    row(`rejoin a group of ${thousands(N)}: a member processes it (ms)`, of("process"));
  }
  const first = recovery[CONFIG.recovery.sizes[0]];
  const hist = (field) => ids.map((id) => (id === "pingweb_py" ? cell(values(val(first, id, field))) : "—"));
  row(`history of ${thousands(CONFIG.recovery.history)} messages to a new device: build and send (ms)`, hist("history_send"));
  row(`history of ${thousands(CONFIG.recovery.history)} messages to a new device: import (ms)`, hist("history_import"));
}
for (const N of CONFIG.groupsize.sizes) {
  row(`send, group of ${thousands(N)} (msg/s)`, ids.map((id) => cell(values(val(groupsize[N], id, "send")))));
  row(`receive, group of ${thousands(N)} (msg/s)`, ids.map((id) => cell(values(val(groupsize[N], id, "receive")))));
}
for (const storage of CONFIG.history.storages) {
  for (const stored of CONFIG.history.stored) {
    const results = history[`${storage} ${stored}`];
    const where = `${thousands(stored)} stored messages, ${storageName[storage]}`;
    row(`send, ${where} (msg/s)`, ids.map((id) => cell(values(val(results, id, "send")))));
    row(`receive, ${where} (msg/s)`, ids.map((id) => cell(values(val(results, id, "receive")))));
    row(`reopen, ${where} (ms) ⁶`, ids.map((id) => cell(values(val(results, id, "reopen")))));
  }
}
const largest = CONFIG.groupsize.sizes[CONFIG.groupsize.sizes.length - 1];
const onceOf = (id, field) => {
  const xs = val(groupsize[largest], id, field).filter((x) => x !== null && x !== undefined);
  return xs.length ? xs[xs.length - 1] : null;
};
row(`wasm linear memory, group of ${thousands(largest)} created ⁷`, ids.map((id) => {
  const bytes = onceOf(id, "memory");
  return bytes === null ? "—" : `${(bytes / 1e6).toFixed(1)} MB`;
}));
row(`storage, group of ${thousands(largest)} created (creator's keys + values) ⁷`, ids.map((id) => {
  const bytes = onceOf(id, "stored");
  return bytes === null ? "—" : `${Math.round(bytes).toLocaleString("en-US")} B`;
}));

const pingWasm = fileSizes(join(ROOT, "ping_web/mls/_wasm/ping_web_mls_bg.wasm"));
const pyodideWasm = fileSizes(join(ROOT, "dist/pyodide/pyodide.asm.wasm"));
const ccWasm = fileSizes(join(dirname(fileURLToPath(import.meta.resolve("@wireapp/core-crypto/browser"))), "autogenerated/wasm-bindgen/index_bg.wasm"));
const tsJs = jsTreeSizes(["ts-mls/dist/src", "@hpke/core", "@noble/hashes", "@noble/ciphers"].map((d) => join(ROOT, "node_modules", d)));
row("wasm, raw", [`${kb(pingWasm.raw)} (+ Pyodide ${kb(pyodideWasm.raw)})`, kb(pingWasm.raw), "— (host build)", kb(ccWasm.raw), `— (JS ${kb(tsJs.raw)}) ²`]);
row("wasm, gzip -9", [`${kb(pingWasm.gzip)} (+ Pyodide ${kb(pyodideWasm.gzip)})`, kb(pingWasm.gzip), "—", kb(ccWasm.gzip), `— (JS ${kb(tsJs.gzip)}) ²`]);
const sizeRow = (name, field, envelopeField) =>
  row(name, ids.map((id) => {
    const s = sizes[id];
    if (!s || s[field] === null || s[field] === undefined) return "—";
    const base = `${Math.round(s[field]).toLocaleString("en-US")} B`;
    return envelopeField && s[envelopeField] ? `${base} (envelope ${Math.round(s[envelopeField]).toLocaleString("en-US")} B)` : base;
  }));
sizeRow("KeyPackage", "keyPackage");
sizeRow("Welcome (1 member added)", "welcome", "welcomeEnvelope");
sizeRow("commit (adding 1 member)", "commit", "commitEnvelope");
sizeRow("application message (200 B plaintext)", "ciphertext", "ciphertextEnvelope");
sizeRow("joiner's storage after joining (identity + 1 conversation) ³", "totalAfterJoin");
sizeRow("persisted per conversation (joiner)", "perConversation");
sizeRow("persisted per message (receiver) ⁴", "perMessage");
sizeRow("written to storage per message (sender + receiver) ⁵", "writtenPerMessage");

const header = `| case | ${PEERS.map((p) => p.label).join(" | ")} |\n| --- | ${PEERS.map(() => "---:").join(" | ")} |`;
const table = `${header}\n${rows.join("\n")}`;

// -- targets ---------------------------------------------------------------

const targets = [];
const target = (name, ratio, goal, better, detail = "") => {
  if (!ratio) return targets.push(`| ${name} | — | ${goal} | not measured |`);
  const m = ratio.median;
  const met = better === "higher" ? m >= goal.value : m <= goal.value;
  const by = better === "higher" ? `${((1 - m / goal.value) * 100).toFixed(0)}% short` : `${((m / goal.value - 1) * 100).toFixed(0)}% over`;
  targets.push(`| ${name} | ${num(m)}${ratio.n > 1 ? ` (${num(ratio.min)}–${num(ratio.max)})` : ""}${detail} | ${goal.text} | ${met ? "met" : `missed, ${by}`} |`);
};
const rt = (storage, id) => val(throughput[`roundtrip ${storage}`], id);
const catchupOf = (id) => val(catchup, id);
target("round trip, memory: ping-web ÷ core-crypto (in-memory keystore)", pairedRatio(rt("memory", "pingweb_py"), rt("memory", "corecrypto")), { value: 1.5, text: "≥ 1.5" }, "higher");
target("round trip, memory: wasm from JS ÷ ping-web Python (Python overhead)", pairedRatio(rt("memory", "pingweb_js"), rt("memory", "pingweb_py")), { value: 1.3, text: "≤ 1.3" }, "lower");
target("round trip, IndexedDB: ping-web ÷ core-crypto (IndexedDB keystore)", pairedRatio(rt("idb", "pingweb_py"), rt("idb", "corecrypto")), { value: 1.5, text: "≥ 1.5" }, "higher");
const written = sizes.pingweb_py?.writtenPerMessage;
target("written to storage per message, sender + receiver (B)", written === undefined ? null : { median: written, n: 1 }, { value: 1500, text: "≤ 1,500" }, "lower");
target(`catch-up of ${CONFIG.catchup.n.toLocaleString("en-US")}: ping-web ÷ core-crypto`, pairedRatio(catchupOf("pingweb_py"), catchupOf("corecrypto")), { value: 1.5, text: "≥ 1.5" }, "higher");
target(`catch-up of ${CONFIG.catchup.n.toLocaleString("en-US")}: ping-web ÷ wasm from JS`, pairedRatio(catchupOf("pingweb_py"), catchupOf("pingweb_js")), { value: 0.85, text: "≥ 0.85" }, "higher");
target("import + init after Pyodide boot, wheel install included (ms)", summary(cold.field("pingweb_py", "importInit")), { value: 150, text: "≤ 150" }, "lower");
target("round trip: wasm from JS ÷ native OpenMLS", pairedRatio(rt("memory", "pingweb_js"), rt("memory", "native")), { value: 0.6, text: "≥ 0.6" }, "higher");
target("wasm raw (MB)", { median: pingWasm.raw / 1e6, n: 1 }, { value: 1.5, text: "≤ 1.5" }, "lower");
target("wasm gzip (KB)", { median: pingWasm.gzip / 1e3, n: 1 }, { value: 550, text: "≤ 550" }, "lower");
const historyOf = (storage, stored, field) => val(history[`${storage} ${stored}`] ?? [], "pingweb_py", field);
if (CONFIG.history.stored.length > 1) {
  const [few, many] = [CONFIG.history.stored[0], CONFIG.history.stored[CONFIG.history.stored.length - 1]];
  for (const storage of CONFIG.history.storages) {
    for (const [field, name] of [["send", "send"], ["receive", "receive"]]) {
      target(`${name} with ${thousands(many)} stored ÷ with ${thousands(few)}, ${storageName[storage]} (no work grows with history)`,
        pairedRatio(historyOf(storage, many, field), historyOf(storage, few, field)), { value: 0.85, text: "≥ 0.85" }, "higher");
    }
    target(`reopen with ${thousands(many)} stored ÷ with ${thousands(few)}, ${storageName[storage]}`,
      pairedRatio(historyOf(storage, many, "reopen"), historyOf(storage, few, "reopen")), { value: 1.2, text: "≤ 1.2" }, "lower");
  }
}
// Secondary figures, kept from earlier rounds for comparison.
for (const [op, name] of [["send", "send"], ["receive", "receive"]]) {
  target(`${name}, memory: wasm from JS ÷ ping-web Python`, pairedRatio(val(throughput[`${op} memory`], "pingweb_js"), val(throughput[`${op} memory`], "pingweb_py")), { value: 1.3, text: "≤ 1.3" }, "lower");
}
target("catch-up: wasm from JS ÷ native OpenMLS", pairedRatio(catchupOf("pingweb_js"), catchupOf("native")), { value: 0.6, text: "≥ 0.6" }, "higher");
target("round trip, memory: ping-web ÷ ts-mls", pairedRatio(rt("memory", "pingweb_py"), rt("memory", "tsmls")), { value: 3, text: "≥ 3" }, "higher");
if (identity.pingweb_py?.length) {
  target("verify a device log of 100 entries in Pyodide (ms)", summary(val(identity, "pingweb_py", "verify")), { value: 50, text: "< 50" }, "lower");
  target("add 10: cost of the device checks (checked ÷ unchecked time)", pairedRatio(val(identity, "pingweb_py", "add_checked"), val(identity, "pingweb_py", "add_unchecked")), { value: 1.1, text: "≤ 1.1" }, "lower");
  target("join: cost of the device checks (checked ÷ unchecked time)", pairedRatio(val(identity, "pingweb_py", "join_checked"), val(identity, "pingweb_py", "join_unchecked")), { value: 1.1, text: "≤ 1.1" }, "lower");
}
if (membership[100]) {
  target("add 100 members (commit): ping-web ÷ core-crypto time", pairedRatio(val(membership[100], "pingweb_py", "add"), val(membership[100], "corecrypto", "add")), { value: 1, text: "≤ 1" }, "lower");
}
target("the same import + init without installing the wheels (ms)", summary(cold.runs.pingweb_py.map((x) => x.import + x.wasmInit)), { value: 150, text: "≤ 150" }, "lower");
const targetTable = `| target | measured (median, min–max of paired runs) | goal | result |\n| --- | ---: | ---: | --- |\n${targets.join("\n")}`;

const coldSplit = cold.runs.pingweb_py.length
  ? `ping-web cold start split (medians): Pyodide boot ${num(median(cold.field("pingweb_py", "runtimeBoot")))} ms, ` +
    `installing the wheel (loadPackage("ping_web"), the first loadPackage of the process) ${num(median(cold.field("pingweb_py", "loadPackage")))} ms, ` +
    `\`import ping_web.client\` ${num(median(cold.field("pingweb_py", "import")))} ms, ` +
    `wasm init (\`MlsRuntime.load().provider()\`) ${num(median(cold.field("pingweb_py", "wasmInit")))} ms.`
  : "";

// -- output ----------------------------------------------------------------------------------

const elapsed = (performance.now() - t0) / 1000;
const load1 = os.loadavg();
const m = machine();
const v = {
  node: process.version,
  pyodide: versions.pingweb_py?.pyodide ?? pkgVersion("pyodide"),
  python: versions.pingweb_py?.python ?? "?",
  openmls: versions.pingweb_js?.openmls ?? "?",
  ping_web_mls: versions.pingweb_js?.ping_web_mls ?? "?",
  coreCrypto: versions.corecrypto?.["core-crypto"] ?? pkgVersion("@wireapp/core-crypto"),
  tsMls: pkgVersion("ts-mls"),
  fakeIndexeddb: pkgVersion("fake-indexeddb"),
};

console.log(table);

const notes = [
  `All peers: ciphersuite 0x0001 (MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519), 200-byte messages, two members unless said otherwise, each client with its own keystore; state persisted after every message (memory: a Map / dict / core-crypto's in-memory keystore; IndexedDB: fake-indexeddb ${v.fakeIndexeddb} in Node for every peer).`,
  `ping-web (Python): the public API, \`MessagingClient\` over \`MemoryStorage\` or \`IndexedDbStorage\`; each send/receive commits one atomic batch (MLS delta, cursor, records, history, outbox) before it returns, and envelopes cross as encoded bytes. Timers run inside Python (bench/pingweb_bench.py).`,
  `ping-web wasm from JS: the same ping_web_mls_bg.wasm, no Python: the provider's checkpoint written to a Map / one IndexedDB transaction after every call, with the same 45-byte authenticated header and in-wasm plaintext SHA-256 check, but no envelope, cursor, records or history.`,
  `native OpenMLS: the crate of the wasm module (wasm/: same OpenMLS, RustCrypto provider and key/value working set, same Cargo.lock) built for the host (${versions.native?.target ?? "?"}, release, LTO) by ./build.sh bench and driven through the same exported API as the wasm from JS, in its own process (bench/native); its checkpoint is applied to a hash map after every call. No IndexedDB outside a JavaScript host. Its cold start is timed inside the process (provider, then identity and KeyPackage).`,
  `core-crypto ${v.coreCrypto}: browser build (wasm), one transaction per operation; \`Database.inMemory()\` for memory, \`Database.open()\` (encrypted at rest) for IndexedDB. ts-mls ${v.tsMls}: \`encodeGroupState\` of the new state written after every operation; commits as PublicMessage.`,
  `round trip = one message encrypted by A and decrypted by B (both persisted). send: B decrypts the batch afterwards, untimed. receive: A encrypts first, untimed. catch-up: one receiver (a fresh one per run) applies ${CONFIG.catchup.n.toLocaleString("en-US")} queued messages as one batch with one storage write: \`MessagingClient.receive_batch\`, one core-crypto transaction, one ts-mls state write.`,
  `add N: a group of two (A, B); A commits adding N new members (N−1 KeyPackages from other clients plus a joiner's), merged and persisted; B processes the commit; the joiner joins from the Welcome (ratchet tree inside). ping-web: \`add_members\` + \`confirm_commit\`, \`receive\`, \`join\`.`,
  ...(CONFIG.membership.some((x) => x.cap) ? [`¹ ${CONFIG.membership.find((x) => x.cap).cap}.`] : []),
  `² ts-mls ships JavaScript, not wasm: the .js files of ts-mls, @hpke/core, @noble/hashes and @noble/ciphers as installed (unminified). ping-web (Python) also needs the Pyodide runtime shown.`,
  `³ keys + values in the client's storage after it joined a group of two. core-crypto: its IndexedDB keystore, which is a fixed set of 8 KB blocks (structured-clone size), so it shows no per-conversation or per-message growth.`,
  `⁴ growth of the receiver's storage per message over 100 messages: for ping-web it is the stored history (plaintext and metadata), which the others do not keep.`,
  `⁵ keys + values written per message, sender and receiver together (the whole batch for ping-web, the checkpoint for wasm-from-JS, the encoded group state for ts-mls); core-crypto does not expose it.`,
  `group of N: alice, bob and N − 2 members who never send (their KeyPackages from other clients); alice sends ${CONFIG.groupsize.n} messages (timed), then bob receives them (timed); memory storage for every peer.`,
  `stored messages: ping-web only (the others keep no history): a conversation of two whose devices each hold that many history entries (written directly into storage), then ${CONFIG.history.n} sends and receives.`,
  `⁶ bob's device closed, then opened again from its storage up to its conversation loaded (\`MessagingClient.open\` + \`conversation()\`).`,
  `⁷ after the group of ${thousands(largest)} is created and 5 messages exchanged: the creator's wasm linear memory (core-crypto's and ts-mls's are not reachable from here) and the bytes in its storage (core-crypto's in-memory keystore cannot be measured).`,
  coldSplit,
];

const results = `# Benchmark results

Generated by \`bench/run.mjs\`; do not edit by hand (the analysis is in [PROFILE.md](PROFILE.md)).

- date: ${started.toISOString()}
- command: \`${COMMAND}\`${QUICK ? " (quick smoke run: fewer runs and smaller cases, not for comparison)" : ""}
- runs: cold start ${CONFIG.coldRuns}; send/receive/round trip ${CONFIG.throughput.runs} runs of ${CONFIG.throughput.memory} (memory) / ${CONFIG.throughput.idb} (IndexedDB) messages; catch-up ${CONFIG.catchup.runs}; add N: ${CONFIG.membership.map((x) => `N=${x.N} ${x.runs}`).join(", ")}; group of N: ${CONFIG.groupsize.runs} runs of ${CONFIG.groupsize.n}; stored messages: ${CONFIG.history.runs} runs of ${CONFIG.history.n}; total ${Math.round(elapsed)} s
- machine: ${m.nproc} CPUs (nproc), ${m.model}, ${m.memory} RAM, ${m.kernel}; load average ${load0[0].toFixed(2)} at start, ${load1[0].toFixed(2)} at end
- versions: Node ${v.node}, Pyodide ${v.pyodide} (Python ${v.python}), OpenMLS ${v.openmls} (ping_web_mls ${v.ping_web_mls}), core-crypto ${v.coreCrypto}, ts-mls ${v.tsMls}, fake-indexeddb ${v.fakeIndexeddb}
- ping-web revision: ${gitRevision()}

Each cell: median (min–max) over the runs. Higher is better for msg/s, lower for ms and bytes.

${table}

${notes.filter(Boolean).map((n) => `- ${n}`).join("\n")}

## Targets

Ratios are medians of per-run ratios, each pairing runs made back to back in this invocation.

${targetTable}
${errors.length ? `\n## Failures\n\n${errors.map((e) => `- ${e}`).join("\n")}\n` : ""}`;

writeFileSync(join(BENCH, "RESULTS.md"), results);
log(`\nwrote bench/RESULTS.md (${Math.round(elapsed)} s)`);
console.log(`\n${targetTable}`);
if (errors.length) {
  console.log(`\nFailures:\n${errors.map((e) => `- ${e}`).join("\n")}`);
  process.exitCode = 1;
}
