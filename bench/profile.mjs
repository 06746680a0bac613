// Profile of ping-web's round trip in Pyodide: where the time goes.
//   node bench/profile.mjs            prints markdown tables (used in bench/PROFILE.md)
// A round trip = alice.send() of 200 bytes + bob.receive() of its envelope, both through
// MessagingClient with the state persisted after every message.
import { bootPyodide, loadPingWeb, runPythonFile } from "./lib/pyodide.mjs";

const withIdb = !process.argv.includes("--no-idb");

const fmt = (x) => (x >= 100 ? x.toFixed(0) : x.toFixed(1));

const pyodide = await bootPyodide();
await loadPingWeb(pyodide);
await runPythonFile(pyodide, "bench/profile.py");
const result = JSON.parse(await pyodide.runPythonAsync(`await main(${withIdb ? "True" : "False"})`));
const f = result.ffi;

console.log(`## Round trip breakdown (${result.messages} round trips in ${result.rounds} rounds, 200-byte plaintext; medians)\n`);
for (const b of result.breakdown) {
  console.log(`### ${b.storage}\n`);
  console.log(`Round trip: ${fmt(b.round_trip_us_untimed)} us without timers, ${fmt(b.round_trip_us_timed)} us with them.\n`);
  console.log("| category | us per round trip | share | timed calls per round trip |");
  console.log("| --- | ---: | ---: | ---: |");
  const rows = Object.entries(b.categories_us).sort((x, y) => y[1] - x[1]);
  for (const [name, us] of rows) {
    const calls = b.calls_per_round_trip[name];
    console.log(`| ${name} | ${fmt(us)} | ${((100 * us) / b.round_trip_us_timed).toFixed(0)}% | ${calls === undefined ? "" : calls.toFixed(1)} |`);
  }
  console.log("");
}
console.log("### The wasm calls of one round trip, three ways (same process, same groups)\n");
console.log("createMessage + checkpoint + processMessage + checkpoint, " + `${f.rounds} rounds of ${f.n}, medians:\n`);
console.log("| called | us per round trip | difference |");
console.log("| --- | ---: | --- |");
console.log(`| from a JavaScript loop | ${fmt(f.js)} | the wasm work |`);
console.log(`| from Python, raw JsProxy calls | ${fmt(f.raw)} | +${fmt(f.raw - f.js)} us: the 4 Python-to-JS crossings |`);
console.log(`| from Python through ping_web.mls | ${fmt(f.wrapped)} | +${fmt(f.wrapped - f.raw)} us: to_js copies, to_bytes, result decoding |`);
console.log("");
console.log("### Isolated micro-measurements (Pyodide, us per call)\n");
console.log("| operation | us |");
console.log("| --- | ---: |");
for (const [name, us] of result.micro) console.log(`| ${name} | ${us.toFixed(2)} |`);
console.log("\n### cProfile of the same loop (MemoryStorage; overhead inflates Python ~2x)\n");
console.log("```");
console.log(result.cprofile.trim());
console.log("```");
const c = result.catchup;
console.log(`\n## Catch-up: receive_batch of ${c.n} queued messages (MemoryStorage)\n`);
console.log(`${fmt(c.us_per_message)} us per message (${Math.round(1e6 / c.us_per_message)} msg/s) without the profiler.\n`);
console.log("```");
console.log(c.cprofile.trim());
console.log("```");
