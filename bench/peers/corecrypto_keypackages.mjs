// KeyPackages of `count` throw-away core-crypto clients, one base64 line each on stdout:
//   node bench/peers/corecrypto_keypackages.mjs <count>
// core-crypto refuses KeyPackages made by other stacks (its groups require its own
// credential capabilities), and in one process each new client costs more than the last
// (20 ms at first, 70 ms on average over 1000), so bench/peers/corecrypto.mjs makes large
// batches in fresh processes like this one.
import "fake-indexeddb/auto";
import { browserShims } from "../lib/env.mjs";

browserShims();
const { createPeer } = await import("./corecrypto.mjs");
const peer = await createPeer();
const count = Number(process.argv[2]);
const out = await peer.otherKeyPackagesInProcess(count);
process.stdout.write(out.map((kp) => Buffer.from(kp).toString("base64")).join("\n") + "\n");
