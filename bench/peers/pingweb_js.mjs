// Peer: ping-web's wasm module called directly from JavaScript (no Python). Same files as
// the wheel ships; bytes in, bytes out per docs/wasm-api.md. State persisted after every
// call: the provider's checkpoint (changed working-set entries) is written to a Map or to
// IndexedDB (one transaction) and awaited. It sends the same 45-byte authenticated header
// and checks the same plaintext SHA-256 in wasm as ping-web's Python layer, so the MLS
// work is identical; what it skips is everything Python does (envelopes, cursor, records,
// history, outbox).
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { decodeByteList, decodeChanges, encodeByteList, instantiate, GLUE_PATH, WASM_PATH } from "../lib/pingwasm.mjs";
import { openKv } from "../lib/kv.mjs";

export const id = "pingweb-js";

const encoder = new TextEncoder();
const EMPTY = new Uint8Array(0);
let groups = 0;

export async function cold() {
  const t0 = performance.now();
  const glue = readFileSync(GLUE_PATH, "utf8");
  const bytes = readFileSync(WASM_PATH);
  const ns = new Function(glue + "\nreturn wasm_bindgen;")();
  ns.initSync({ module: new WebAssembly.Module(bytes) });
  const t1 = performance.now();
  const provider = new ns.Provider();
  const identity = ns.Identity.create(provider, encoder.encode("alice"));
  identity.keyPackage(provider);
  const t2 = performance.now();
  return { importInit: t1 - t0, firstClient: t2 - t0 };
}

function header(seq) {
  // kind u8 || sender_device 16 || epoch u64 || seq u64 || hlc.wall_ms u64 || hlc.counter u32
  const out = new Uint8Array(45);
  const view = new DataView(out.buffer);
  view.setBigUint64(25, BigInt(seq));
  view.setBigUint64(33, BigInt(Date.now()));
  return out;
}

const sha256 = (data) => new Uint8Array(createHash("sha256").update(data).digest());

export async function createPeer() {
  const peer = {
    versions: () => {
      const ns = instantiate();
      return Object.fromEntries(ns.buildInfo().split("\n").map((line) => line.split("=")));
    },

    async newMember(label, storage) {
      const ns = instantiate(); // one wasm instance per client, as MessagingClient has
      const provider = new ns.Provider();
      const identity = ns.Identity.create(provider, encoder.encode(label));
      const member = { ns, provider, identity, kv: await openKv(storage, `pwjs-${label}`), seq: 0 };
      await peer.persist(member);
      return member;
    },

    async persist(member) {
      const changes = decodeChanges(member.provider.checkpoint());
      const puts = [], deletes = [];
      for (const [key, value] of changes) (value === null ? deletes : puts).push(value === null ? key : [key, value]);
      await member.kv.write(puts, deletes);
    },

    async keyPackage(member) {
      const kp = member.identity.keyPackage(member.provider);
      await peer.persist(member);
      return kp;
    },

    async otherKeyPackages(count) {
      const ns = instantiate();
      const provider = new ns.Provider();
      const out = [];
      for (let i = 0; i < count; i++) {
        out.push(ns.Identity.create(provider, encoder.encode(`other-${i}`)).keyPackage(provider));
      }
      return out;
    },

    async createGroup(member) {
      const gid = new Uint8Array(16);
      new DataView(gid.buffer).setUint32(12, ++groups);
      gid[0] = 0x70;
      const group = member.ns.Group.create(member.provider, member.identity, gid);
      await peer.persist(member);
      return group;
    },

    async add(member, group, kps) {
      const aad = header(++member.seq);
      const [commit, welcome] = decodeByteList(group.addMembers(member.provider, member.identity, encodeByteList(kps), aad));
      group.mergePendingCommit(member.provider);
      await peer.persist(member);
      return { commit: commit.slice(), welcome: welcome.slice() };
    },

    async processCommit(member, group, commit) {
      group.processMessage(member.provider, commit, EMPTY, EMPTY);
      await peer.persist(member);
    },

    async join(member, welcome) {
      const group = member.ns.Group.join(member.provider, welcome);
      await peer.persist(member);
      return group;
    },

    async encrypt(member, group, plaintext) {
      const aad = header(++member.seq);
      const ct = group.createMessage(member.provider, member.identity, plaintext, aad);
      await peer.persist(member);
      return { ct, aad, sha: sha256(plaintext) };
    },

    async decrypt(member, group, message) {
      const out = group.processMessage(member.provider, message.ct, message.aad, message.sha);
      await peer.persist(member);
      return out.subarray(14);
    },

    async decryptBatch(member, group, messages) {
      let count = 0;
      for (const m of messages) {
        const out = group.processMessage(member.provider, m.ct, m.aad, m.sha);
        if (out[0] === 1) count++;
      }
      await peer.persist(member);
      return count;
    },

    async encryptMany(member, group, plaintext, n) {
      const out = [];
      const sha = sha256(plaintext);
      for (let i = 0; i < n; i++) {
        const aad = header(++member.seq);
        out.push({ ct: group.createMessage(member.provider, member.identity, plaintext, aad), aad, sha });
        member.provider.checkpoint();
      }
      await peer.persist(member);
      return out;
    },

    async storedBytes(member) {
      return member.kv.totalBytes();
    },
    bytesWritten: (member) => member.kv.bytesWritten,
    wasmMemory: (member) => member.ns.wasmMemory.buffer.byteLength,
    wireSize: (message) => message.ct.length,
    async release(member) {
      member.provider.free?.();
    },
  };
  return peer;
}

