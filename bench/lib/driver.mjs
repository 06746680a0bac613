// The benchmark cases for the JavaScript peers, written once over a small set of
// primitives each peer implements (bench/peers/*.mjs). ping-web's Python side runs the
// same cases in Python (bench/pingweb_bench.py), so no per-message call crosses into or
// out of Pyodide while a timer runs.
//
// Primitives (all async; every one that changes state persists it before returning):
//   newMember(label, storage)          a client with its own identity and storage
//   keyPackage(member)                 a KeyPackage (bytes) whose private keys member keeps
//   otherKeyPackages(count)            KeyPackages of `count` distinct other clients
//   createGroup(member)                a new group with member alone -> group handle
//   add(member, group, kps)            commit adding kps, merged -> {commit, welcome}
//   processCommit(member, group, commit)
//   join(member, welcome)              -> group handle
//   encrypt(member, group, plaintext)  -> message (what crosses the wire)
//   decrypt(member, group, message)    -> plaintext
//   decryptBatch(member, group, msgs)  all of them, state persisted once -> count
//   encryptMany(member, group, plaintext, n)  untimed helper for catch-up (may skip persistence)
//   storedBytes(member)                bytes held in member's storage (keys + values)
//   bytesWritten(member)               running total of bytes written to storage, or null
//   wireSize(message)                  bytes of a message on the wire
// Optional: sizesStorage ("idb" to measure sizes on IndexedDB), blockStore (true: storage
// grows in fixed blocks, only its total is reported), release(member) (free a client),
// wasmMemory(member) (bytes of the wasm linear memory the member's instance has).

export const PLAINTEXT = new Uint8Array(200).map((_, i) => i);
export const now = () => performance.now();

export class Driver {
  constructor(peer) {
    this.peer = peer;
    this.pairs = {};
    this.catchup = null;
    this.membership = null;
  }

  async pair(storage) {
    if (!this.pairs[storage]) {
      const p = this.peer;
      const alice = await p.newMember("alice", storage);
      const bob = await p.newMember("bob", storage);
      const group = await p.createGroup(alice);
      const { welcome } = await p.add(alice, group, [await p.keyPackage(bob)]);
      const bobGroup = await p.join(bob, welcome);
      const pair = { alice, bob, group, bobGroup };
      for (let i = 0; i < 20; i++) await this.roundTrip(pair); // warm-up
      this.pairs[storage] = pair;
    }
    return this.pairs[storage];
  }

  async roundTrip({ alice, bob, group, bobGroup }) {
    const message = await this.peer.encrypt(alice, group, PLAINTEXT);
    const got = await this.peer.decrypt(bob, bobGroup, message);
    if (got.length !== PLAINTEXT.length) throw new Error("round trip: wrong plaintext");
  }

  async prepare(kind, params) {
    const p = this.peer;
    if (kind === "throughput") {
      await this.pair(params.storage);
    } else if (kind === "catchup") {
      const sender = await p.newMember("sender", "memory");
      const group = await p.createGroup(sender);
      const receivers = [];
      for (let i = 0; i < params.receivers; i++) receivers.push(await p.newMember(`receiver${i}`, "memory"));
      const kps = [];
      for (const r of receivers) kps.push(await p.keyPackage(r));
      const { welcome } = await p.add(sender, group, kps);
      const groups = [];
      for (const r of receivers) groups.push(await p.join(r, welcome));
      const messages = await p.encryptMany(sender, group, PLAINTEXT, params.n);
      this.catchup = { receivers, groups, messages, next: 0 };
    } else if (kind === "membership") {
      const alice = await p.newMember("alice", "memory");
      const bob = await p.newMember("bob", "memory");
      const others = await p.otherKeyPackages(params.N - 1);
      this.membership = { alice, bob, others };
    } else if (kind === "groupsize") {
      // A group of N: alice, bob and N - 2 members who never send; alice sends, bob receives.
      const alice = await p.newMember("alice", "memory");
      const bob = await p.newMember("bob", "memory");
      const group = await p.createGroup(alice);
      const others = params.N > 2 ? await p.otherKeyPackages(params.N - 2) : [];
      const { welcome } = await p.add(alice, group, [await p.keyPackage(bob), ...others]);
      const bobGroup = await p.join(bob, welcome);
      const pair = { alice, bob, group, bobGroup };
      for (let i = 0; i < 5; i++) await this.roundTrip(pair); // warm-up
      const stored = p.storedBytes ? await p.storedBytes(alice) : null;
      this.groupsize = {
        pair,
        stored: p.blockStore ? null : stored,
        memory: p.wasmMemory ? p.wasmMemory(alice) : null,
      };
    } else if (kind === "history") {
      return { skip: "keeps no message history" };
    } else {
      throw new Error(`unknown case ${kind}`);
    }
  }

  async rep(kind, params) {
    const p = this.peer;
    if (kind === "throughput") {
      const pair = await this.pair(params.storage);
      const { alice, bob, group, bobGroup } = pair;
      const n = params.n;
      if (params.op === "send") {
        const sent = [];
        const start = now();
        for (let i = 0; i < n; i++) sent.push(await p.encrypt(alice, group, PLAINTEXT));
        const seconds = (now() - start) / 1000;
        for (const m of sent) await p.decrypt(bob, bobGroup, m); // untimed: keep bob in step
        return { value: n / seconds };
      }
      if (params.op === "receive") {
        const messages = [];
        for (let i = 0; i < n; i++) messages.push(await p.encrypt(alice, group, PLAINTEXT));
        const start = now();
        for (const m of messages) await p.decrypt(bob, bobGroup, m);
        return { value: n / ((now() - start) / 1000) };
      }
      if (params.op === "roundtrip") {
        const start = now();
        for (let i = 0; i < n; i++) await this.roundTrip(pair);
        return { value: n / ((now() - start) / 1000) };
      }
      throw new Error(`unknown op ${params.op}`);
    }
    if (kind === "catchup") {
      const c = this.catchup;
      const i = c.next++;
      const start = now();
      const count = await p.decryptBatch(c.receivers[i], c.groups[i], c.messages);
      const seconds = (now() - start) / 1000;
      if (count !== c.messages.length) throw new Error(`catch-up: ${count} of ${c.messages.length} decrypted`);
      return { value: count / seconds, ms: seconds * 1000 };
    }
    if (kind === "groupsize") {
      const { pair, stored, memory } = this.groupsize;
      const n = params.n;
      const sent = [];
      let start = now();
      for (let i = 0; i < n; i++) sent.push(await p.encrypt(pair.alice, pair.group, PLAINTEXT));
      const send = n / ((now() - start) / 1000);
      start = now();
      for (const m of sent) await p.decrypt(pair.bob, pair.bobGroup, m);
      const receive = n / ((now() - start) / 1000);
      return { send, receive, stored, memory };
    }
    if (kind === "membership") {
      const { alice, bob, others } = this.membership;
      const joiner = await p.newMember("joiner", "memory");
      const joinerKp = await p.keyPackage(joiner);
      const group = await p.createGroup(alice);
      const first = await p.add(alice, group, [await p.keyPackage(bob)]);
      const bobGroup = await p.join(bob, first.welcome);
      let t = now();
      const { commit, welcome } = await p.add(alice, group, [...others, joinerKp]);
      const add = now() - t;
      t = now();
      await p.processCommit(bob, bobGroup, commit);
      const process = now() - t;
      t = now();
      const joined = await p.join(joiner, welcome);
      const join = now() - t;
      // sanity: the joiner reads what alice sends in the new epoch
      const m = await p.encrypt(alice, group, PLAINTEXT);
      if ((await p.decrypt(joiner, joined, m)).length !== PLAINTEXT.length) throw new Error("joiner cannot read");
      if (p.release) await p.release(joiner);
      return { add, process, join, commitBytes: commit.length, welcomeBytes: welcome.length };
    }
    throw new Error(`unknown case ${kind}`);
  }

  async sizes() {
    const p = this.peer;
    // core-crypto's in-memory keystore cannot be measured: its sizes come from IndexedDB.
    const storage = p.sizesStorage ?? "memory";
    const alice = await p.newMember("alice", storage);
    const bob = await p.newMember("bob", storage);
    const kp = await p.keyPackage(bob);
    const group = await p.createGroup(alice);
    const beforeBob = await p.storedBytes(bob);
    const { commit, welcome } = await p.add(alice, group, [kp]);
    const bobGroup = await p.join(bob, welcome);
    const perConversation = (await p.storedBytes(bob)) - beforeBob;
    const messages = 100;
    const afterJoin = await p.storedBytes(bob);
    const writtenA = p.bytesWritten(alice);
    const writtenB = p.bytesWritten(bob);
    let ciphertext = 0;
    for (let i = 0; i < messages; i++) {
      const m = await p.encrypt(alice, group, PLAINTEXT);
      ciphertext = p.wireSize(m);
      await p.decrypt(bob, bobGroup, m);
    }
    const perMessage = ((await p.storedBytes(bob)) - afterJoin) / messages;
    const written =
      writtenA === null ? null : (p.bytesWritten(alice) - writtenA + p.bytesWritten(bob) - writtenB) / messages;
    // A store that only grows in fixed blocks (core-crypto's) shows no per-item change.
    const opaque = p.blockStore === true;
    return {
      keyPackage: kp.length,
      welcome: welcome.length,
      commit: commit.length,
      ciphertext,
      totalAfterJoin: afterJoin,
      perConversation: opaque ? null : perConversation,
      perMessage: opaque ? null : perMessage,
      writtenPerMessage: written,
    };
  }
}
