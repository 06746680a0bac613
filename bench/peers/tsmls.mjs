// Peer: ts-mls 1.6.x (pure TypeScript; WebCrypto for Ed25519/AES-GCM/SHA-256, @hpke/core
// for X25519 HPKE). ts-mls keeps no state of its own: every operation returns a new
// ClientState, which is encoded with encodeGroupState and written to a Map or to IndexedDB
// (one transaction) before the next message. Commits are sent as PublicMessage
// (wireAsPublicMessage: true), which is what OpenMLS peers accept; ratchet tree in the Welcome.
import { openKv } from "../lib/kv.mjs";

export const id = "tsmls";
const encoder = new TextEncoder();
let groups = 0;

async function load() {
  const m = await import("ts-mls");
  const impl = await m.getCiphersuiteImpl(m.getCiphersuiteFromName("MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519"));
  return { m, impl };
}

export async function cold() {
  const t0 = performance.now();
  const { m, impl } = await load();
  const t1 = performance.now();
  await m.generateKeyPackage(
    { credentialType: "basic", identity: encoder.encode("alice") }, m.defaultCapabilities(), m.defaultLifetime, [], impl,
  );
  const t2 = performance.now();
  return { importInit: t1 - t0, firstClient: t2 - t0 };
}

export async function createPeer() {
  const { m, impl } = await load();
  const kpBytes = (publicPackage) =>
    m.encodeMlsMessage({ version: "mls10", wireformat: "mls_key_package", keyPackage: publicPackage });
  const decode = (bytes) => m.decodeMlsMessage(bytes, 0)[0];
  const save = (member, group) => {
    const key = group.id;
    return member.kv.write([[key, m.encodeGroupState(group.state)]]);
  };
  const newGroup = (state) => {
    const id = new Uint8Array(16);
    new DataView(id.buffer).setUint32(12, ++groups);
    return { id, state };
  };
  const generate = (label) =>
    m.generateKeyPackage({ credentialType: "basic", identity: encoder.encode(label) }, m.defaultCapabilities(), m.defaultLifetime, [], impl);

  const peer = {
    versions: () => ({}),
    async newMember(label, storage) {
      return { label, kv: await openKv(storage, `ts-${label}`), pendingKeyPackage: null };
    },
    async keyPackage(member) {
      const kp = await generate(member.label);
      const bytes = kpBytes(kp.publicPackage);
      // A client keeps the private part until the Welcome comes: store it too.
      member.pendingKeyPackage = kp;
      const { initPrivateKey, hpkePrivateKey, signaturePrivateKey } = kp.privatePackage;
      const secret = new Uint8Array([...initPrivateKey, ...hpkePrivateKey, ...signaturePrivateKey]);
      await member.kv.write([[encoder.encode("keypackage"), secret]]);
      return bytes;
    },
    async otherKeyPackages(count) {
      const out = [];
      for (let i = 0; i < count; i++) out.push(kpBytes((await generate(`other-${i}`)).publicPackage));
      return out;
    },
    async createGroup(member) {
      const kp = await generate(member.label);
      const group = newGroup(null);
      group.state = await m.createGroup(group.id, kp.publicPackage, kp.privatePackage, [], impl);
      await save(member, group);
      return group;
    },
    async add(member, group, kps) {
      const extraProposals = kps.map((bytes) => ({ proposalType: "add", add: { keyPackage: decode(bytes).keyPackage } }));
      const result = await m.createCommit(
        { state: group.state, cipherSuite: impl },
        { extraProposals, ratchetTreeExtension: true, wireAsPublicMessage: true },
      );
      group.state = result.newState;
      await save(member, group);
      return {
        commit: m.encodeMlsMessage(result.commit),
        welcome: m.encodeMlsMessage({ version: "mls10", wireformat: "mls_welcome", welcome: result.welcome }),
      };
    },
    async processCommit(member, group, commit) {
      const result = await m.processMessage(decode(commit), group.state, m.emptyPskIndex, m.acceptAll, impl);
      group.state = result.newState;
      await save(member, group);
    },
    async join(member, welcome) {
      const kp = member.pendingKeyPackage;
      const state = await m.joinGroup(decode(welcome).welcome, kp.publicPackage, kp.privatePackage, m.emptyPskIndex, impl);
      const group = { id: state.groupContext.groupId, state };
      await save(member, group);
      return group;
    },
    async encrypt(member, group, plaintext) {
      const result = await m.createApplicationMessage(group.state, plaintext, impl);
      group.state = result.newState;
      await save(member, group);
      return m.encodeMlsMessage({ version: "mls10", wireformat: "mls_private_message", privateMessage: result.privateMessage });
    },
    async decrypt(member, group, message) {
      const result = await m.processPrivateMessage(group.state, decode(message).privateMessage, m.emptyPskIndex, impl);
      group.state = result.newState;
      await save(member, group);
      return result.message;
    },
    async decryptBatch(member, group, messages) {
      let count = 0;
      for (const message of messages) {
        const result = await m.processPrivateMessage(group.state, decode(message).privateMessage, m.emptyPskIndex, impl);
        group.state = result.newState;
        if (result.kind === "applicationMessage") count++;
      }
      await save(member, group);
      return count;
    },
    async encryptMany(member, group, plaintext, n) {
      const out = [];
      for (let i = 0; i < n; i++) {
        const result = await m.createApplicationMessage(group.state, plaintext, impl);
        group.state = result.newState;
        out.push(m.encodeMlsMessage({ version: "mls10", wireformat: "mls_private_message", privateMessage: result.privateMessage }));
      }
      await save(member, group);
      return out;
    },
    storedBytes: (member) => member.kv.totalBytes(),
    bytesWritten: (member) => member.kv.bytesWritten,
    wireSize: (message) => message.length,
  };
  return peer;
}
