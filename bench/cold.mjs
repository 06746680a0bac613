// Cold start of one peer in a fresh Node process: prints one JSON line of milliseconds.
//   node bench/cold.mjs <peer>
// Times start when this script starts running (Node's own boot is excluded and the same
// for every peer).
import "fake-indexeddb/auto";
import { browserShims } from "./lib/env.mjs";

browserShims();
const module = await import(`./peers/${process.argv[2]}.mjs`);
const result = await module.cold();
process.stdout.write(JSON.stringify(result) + "\n");
