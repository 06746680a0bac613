//! The benchmark's native column: ping-web's OpenMLS crate (`wasm/`: the same OpenMLS
//! version, crypto provider and key/value working set) built for the host and driven
//! through the same exported API the wasm module gives JavaScript, with the same cases as
//! `bench/lib/driver.mjs` (state persisted after every call: the provider's checkpoint
//! applied to a map).
//!
//!   ping_web_bench_native serve   one JSON request per stdin line, one JSON reply per line:
//!                                 {"op": "versions" | "prepare" | "rep" | "sizes", "kind", "params"}
//!                                 -> {"ok": true, "result": ...} | {"ok": false, "error": "..."}
//!   ping_web_bench_native cold    one JSON line: the cold start, in ms from process start
//!
//! Run by `bench/peers/native.mjs` (started by `bench/run.mjs`); built by `./build.sh bench`.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::types::HashType;
use openmls_traits::OpenMlsProvider;
use ping_web_mls::{Group, Identity, Provider};
use serde_json::{json, Value};

const PLAINTEXT_LEN: usize = 200;
const DELETED: u32 = u32::MAX;
const KIND_APPLICATION: u8 = 1;

type Res<T> = Result<T, String>;

fn err<E: std::fmt::Debug>(e: E) -> String {
    format!("{e:?}")
}

fn plaintext() -> Vec<u8> {
    (0..PLAINTEXT_LEN).map(|i| i as u8).collect()
}

fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

/// A change list (docs/wasm-api.md): `u32 key_len || key || u32 value_len || value`, repeated.
fn decode_changes(data: &[u8]) -> Vec<(&[u8], Option<&[u8]>)> {
    let mut out = Vec::new();
    let mut pos = 0;
    let u32_at = |pos: usize| u32::from_be_bytes(data[pos..pos + 4].try_into().unwrap());
    while pos < data.len() {
        let key_len = u32_at(pos) as usize;
        let key = &data[pos + 4..pos + 4 + key_len];
        pos += 4 + key_len;
        let value_len = u32_at(pos);
        pos += 4;
        if value_len == DELETED {
            out.push((key, None));
        } else {
            out.push((key, Some(&data[pos..pos + value_len as usize])));
            pos += value_len as usize;
        }
    }
    out
}

fn encode_byte_list(items: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for item in items {
        out.extend_from_slice(&(item.len() as u32).to_be_bytes());
        out.extend_from_slice(item);
    }
    out
}

fn decode_byte_list(data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let len = u32::from_be_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
        out.push(data[pos + 4..pos + 4 + len].to_vec());
        pos += 4 + len;
    }
    out
}

/// "State persisted after every message": a map, as the JS peers' MemoryKv.
#[derive(Default)]
struct Kv {
    map: HashMap<Vec<u8>, Vec<u8>>,
    bytes_written: usize,
}

impl Kv {
    fn write(&mut self, changes: &[u8]) {
        for (key, value) in decode_changes(changes) {
            match value {
                Some(value) => {
                    self.bytes_written += key.len() + value.len();
                    self.map.insert(key.to_vec(), value.to_vec());
                }
                None => {
                    self.map.remove(key);
                }
            }
        }
    }

    fn total_bytes(&self) -> usize {
        self.map.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

struct Member {
    provider: Provider,
    identity: Identity,
    kv: Kv,
    seq: u64,
}

impl Member {
    fn new(label: &str) -> Res<Member> {
        let provider = Provider::new();
        let identity = Identity::create(&provider, label.as_bytes()).map_err(err)?;
        let mut member = Member {
            provider,
            identity,
            kv: Kv::default(),
            seq: 0,
        };
        member.persist();
        Ok(member)
    }

    fn persist(&mut self) {
        let changes = self.provider.checkpoint();
        self.kv.write(&changes);
    }

    fn key_package(&mut self) -> Res<Vec<u8>> {
        let kp = self.identity.key_package(&self.provider).map_err(err)?;
        self.persist();
        Ok(kp)
    }

    fn create_group(&mut self, counter: &mut u32) -> Res<Group> {
        *counter += 1;
        let mut gid = [0u8; 16];
        gid[0] = 0x6e;
        gid[12..].copy_from_slice(&counter.to_be_bytes());
        let group = Group::create(&self.provider, &self.identity, &gid).map_err(err)?;
        self.persist();
        Ok(group)
    }

    fn add(&mut self, group: &mut Group, kps: &[Vec<u8>]) -> Res<(Vec<u8>, Vec<u8>)> {
        self.seq += 1;
        let aad = header(self.seq);
        let refs: Vec<&[u8]> = kps.iter().map(|k| k.as_slice()).collect();
        let out = group
            .add_members(
                &self.provider,
                &self.identity,
                &encode_byte_list(&refs),
                &aad,
            )
            .map_err(err)?;
        group.merge_pending_commit(&self.provider).map_err(err)?;
        self.persist();
        let mut items = decode_byte_list(&out).into_iter();
        Ok((items.next().unwrap(), items.next().unwrap()))
    }

    fn process_commit(&mut self, group: &mut Group, commit: &[u8]) -> Res<()> {
        group
            .process_message(&self.provider, commit, b"", b"")
            .map_err(err)?;
        self.persist();
        Ok(())
    }

    fn join(&mut self, welcome: &[u8]) -> Res<Group> {
        let group = Group::join(&self.provider, welcome).map_err(err)?;
        self.persist();
        Ok(group)
    }

    fn encrypt(&mut self, group: &mut Group, plaintext: &[u8]) -> Res<Message> {
        self.seq += 1;
        let aad = header(self.seq);
        let ct = group
            .create_message(&self.provider, &self.identity, plaintext, &aad)
            .map_err(err)?;
        self.persist();
        Ok(Message {
            ct,
            aad,
            sha: sha256(&self.provider, plaintext),
        })
    }

    fn decrypt(&mut self, group: &mut Group, message: &Message) -> Res<Vec<u8>> {
        let out = group
            .process_message(&self.provider, &message.ct, &message.aad, &message.sha)
            .map_err(err)?;
        self.persist();
        Ok(out[14..].to_vec())
    }
}

struct Message {
    ct: Vec<u8>,
    aad: Vec<u8>,
    sha: Vec<u8>,
}

fn sha256(provider: &Provider, data: &[u8]) -> Vec<u8> {
    provider.crypto().hash(HashType::Sha2_256, data).unwrap()
}

/// The 45-byte authenticated header ping-web binds into each message:
/// kind u8 || sender_device 16 || epoch u64 || seq u64 || hlc.wall_ms u64 || hlc.counter u32.
fn header(seq: u64) -> Vec<u8> {
    let mut out = vec![0u8; 45];
    out[25..33].copy_from_slice(&seq.to_be_bytes());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    out[33..41].copy_from_slice(&now.to_be_bytes());
    out
}

fn other_key_packages(count: usize) -> Res<Vec<Vec<u8>>> {
    let provider = Provider::new();
    (0..count)
        .map(|i| {
            Identity::create(&provider, format!("other-{i}").as_bytes())
                .and_then(|id| id.key_package(&provider))
                .map_err(err)
        })
        .collect()
}

struct Pair {
    alice: Member,
    bob: Member,
    group: Group,
    bob_group: Group,
}

struct Catchup {
    receivers: Vec<(Member, Group)>,
    messages: Vec<Message>,
    next: usize,
}

struct GroupSize {
    pair: Pair,
    stored: usize,
}

struct Membership {
    alice: Member,
    bob: Member,
    others: Vec<Vec<u8>>,
}

#[derive(Default)]
struct Bench {
    groups: u32,
    pair: Option<Pair>,
    catchup: Option<Catchup>,
    membership: Option<Membership>,
    groupsize: Option<GroupSize>,
}

impl Bench {
    fn new_pair(&mut self) -> Res<Pair> {
        let mut alice = Member::new("alice")?;
        let mut bob = Member::new("bob")?;
        let mut group = alice.create_group(&mut self.groups)?;
        let kp = bob.key_package()?;
        let (_, welcome) = alice.add(&mut group, &[kp])?;
        let bob_group = bob.join(&welcome)?;
        let mut pair = Pair {
            alice,
            bob,
            group,
            bob_group,
        };
        for _ in 0..20 {
            round_trip(&mut pair)?; // warm-up
        }
        Ok(pair)
    }

    fn prepare(&mut self, kind: &str, params: &Value) -> Res<Value> {
        match kind {
            "throughput" => {
                if params["storage"] != "memory" {
                    return Ok(json!({"skip": "no IndexedDB outside a JavaScript host"}));
                }
                if self.pair.is_none() {
                    self.pair = Some(self.new_pair()?);
                }
            }
            "catchup" => {
                let n = params["n"].as_u64().ok_or("n")? as usize;
                let count = params["receivers"].as_u64().ok_or("receivers")? as usize;
                let mut sender = Member::new("sender")?;
                let mut group = sender.create_group(&mut self.groups)?;
                let mut members = Vec::new();
                let mut kps = Vec::new();
                for i in 0..count {
                    let mut receiver = Member::new(&format!("receiver{i}"))?;
                    kps.push(receiver.key_package()?);
                    members.push(receiver);
                }
                let (_, welcome) = sender.add(&mut group, &kps)?;
                let mut receivers = Vec::new();
                for mut member in members {
                    let joined = member.join(&welcome)?;
                    receivers.push((member, joined));
                }
                let pt = plaintext();
                let sha = sha256(&sender.provider, &pt);
                let mut messages = Vec::with_capacity(n);
                for _ in 0..n {
                    sender.seq += 1;
                    let aad = header(sender.seq);
                    let ct = group
                        .create_message(&sender.provider, &sender.identity, &pt, &aad)
                        .map_err(err)?;
                    sender.provider.checkpoint();
                    messages.push(Message {
                        ct,
                        aad,
                        sha: sha.clone(),
                    });
                }
                self.catchup = Some(Catchup {
                    receivers,
                    messages,
                    next: 0,
                });
            }
            "groupsize" => {
                // A group of N: alice, bob and N - 2 members who never send.
                let n = params["N"].as_u64().ok_or("N")? as usize;
                let mut alice = Member::new("alice")?;
                let mut bob = Member::new("bob")?;
                let mut group = alice.create_group(&mut self.groups)?;
                let mut kps = vec![bob.key_package()?];
                kps.extend(other_key_packages(n.saturating_sub(2))?);
                let (_, welcome) = alice.add(&mut group, &kps)?;
                let bob_group = bob.join(&welcome)?;
                let mut pair = Pair {
                    alice,
                    bob,
                    group,
                    bob_group,
                };
                for _ in 0..5 {
                    round_trip(&mut pair)?;
                }
                let stored = pair.alice.kv.total_bytes();
                self.groupsize = Some(GroupSize { pair, stored });
            }
            "history" => return Ok(json!({"skip": "keeps no message history"})),
            "membership" => {
                let n = params["N"].as_u64().ok_or("N")? as usize;
                self.membership = Some(Membership {
                    alice: Member::new("alice")?,
                    bob: Member::new("bob")?,
                    others: other_key_packages(n - 1)?,
                });
            }
            _ => return Err(format!("unknown case {kind}")),
        }
        Ok(Value::Null)
    }

    fn rep(&mut self, kind: &str, params: &Value) -> Res<Value> {
        match kind {
            "throughput" => {
                let pair = self.pair.as_mut().ok_or("not prepared")?;
                let n = params["n"].as_u64().ok_or("n")? as usize;
                let pt = plaintext();
                match params["op"].as_str().unwrap_or("") {
                    "send" => {
                        let start = Instant::now();
                        let mut sent = Vec::with_capacity(n);
                        for _ in 0..n {
                            sent.push(pair.alice.encrypt(&mut pair.group, &pt)?);
                        }
                        let seconds = start.elapsed().as_secs_f64();
                        for m in &sent {
                            pair.bob.decrypt(&mut pair.bob_group, m)?; // untimed: keep bob in step
                        }
                        Ok(json!({"value": n as f64 / seconds}))
                    }
                    "receive" => {
                        let mut sent = Vec::with_capacity(n);
                        for _ in 0..n {
                            sent.push(pair.alice.encrypt(&mut pair.group, &pt)?);
                        }
                        let start = Instant::now();
                        for m in &sent {
                            pair.bob.decrypt(&mut pair.bob_group, m)?;
                        }
                        Ok(json!({"value": n as f64 / start.elapsed().as_secs_f64()}))
                    }
                    "roundtrip" => {
                        let start = Instant::now();
                        for _ in 0..n {
                            round_trip(pair)?;
                        }
                        Ok(json!({"value": n as f64 / start.elapsed().as_secs_f64()}))
                    }
                    op => Err(format!("unknown op {op}")),
                }
            }
            "catchup" => {
                let c = self.catchup.as_mut().ok_or("not prepared")?;
                let (member, group) = c.receivers.get_mut(c.next).ok_or("no receiver left")?;
                c.next += 1;
                let start = Instant::now();
                let mut count = 0;
                for m in &c.messages {
                    let out = group
                        .process_message(&member.provider, &m.ct, &m.aad, &m.sha)
                        .map_err(err)?;
                    if out[0] == KIND_APPLICATION {
                        count += 1;
                    }
                }
                member.persist();
                let seconds = start.elapsed().as_secs_f64();
                if count != c.messages.len() {
                    return Err(format!(
                        "catch-up: {count} of {} decrypted",
                        c.messages.len()
                    ));
                }
                Ok(json!({"value": count as f64 / seconds, "ms": seconds * 1000.0}))
            }
            "groupsize" => {
                let g = self.groupsize.as_mut().ok_or("not prepared")?;
                let n = params["n"].as_u64().ok_or("n")? as usize;
                let pt = plaintext();
                let start = Instant::now();
                let mut sent = Vec::with_capacity(n);
                for _ in 0..n {
                    sent.push(g.pair.alice.encrypt(&mut g.pair.group, &pt)?);
                }
                let send = n as f64 / start.elapsed().as_secs_f64();
                let start = Instant::now();
                for m in &sent {
                    g.pair.bob.decrypt(&mut g.pair.bob_group, m)?;
                }
                let receive = n as f64 / start.elapsed().as_secs_f64();
                Ok(json!({"send": send, "receive": receive, "stored": g.stored}))
            }
            "membership" => {
                let m = self.membership.as_mut().ok_or("not prepared")?;
                let mut joiner = Member::new("joiner")?;
                let joiner_kp = joiner.key_package()?;
                let mut group = m.alice.create_group(&mut self.groups)?;
                let bob_kp = m.bob.key_package()?;
                let (_, welcome) = m.alice.add(&mut group, &[bob_kp])?;
                let mut bob_group = m.bob.join(&welcome)?;
                let mut kps = m.others.clone();
                kps.push(joiner_kp);
                let t = Instant::now();
                let (commit, welcome) = m.alice.add(&mut group, &kps)?;
                let add = ms(t);
                let t = Instant::now();
                m.bob.process_commit(&mut bob_group, &commit)?;
                let process = ms(t);
                let t = Instant::now();
                let mut joined = joiner.join(&welcome)?;
                let join = ms(t);
                let message = m.alice.encrypt(&mut group, &plaintext())?;
                if joiner.decrypt(&mut joined, &message)?.len() != PLAINTEXT_LEN {
                    return Err("the joiner cannot read the new epoch".into());
                }
                Ok(json!({"add": add, "process": process, "join": join,
                          "commitBytes": commit.len(), "welcomeBytes": welcome.len()}))
            }
            _ => Err(format!("unknown case {kind}")),
        }
    }

    fn sizes(&mut self) -> Res<Value> {
        let mut alice = Member::new("alice")?;
        let mut bob = Member::new("bob")?;
        let kp = bob.key_package()?;
        let mut group = alice.create_group(&mut self.groups)?;
        let before_bob = bob.kv.total_bytes();
        let (commit, welcome) = alice.add(&mut group, std::slice::from_ref(&kp))?;
        let mut bob_group = bob.join(&welcome)?;
        let per_conversation = bob.kv.total_bytes() - before_bob;
        let after_join = bob.kv.total_bytes();
        let (written_a, written_b) = (alice.kv.bytes_written, bob.kv.bytes_written);
        let messages = 100;
        let mut ciphertext = 0;
        let pt = plaintext();
        for _ in 0..messages {
            let m = alice.encrypt(&mut group, &pt)?;
            ciphertext = m.ct.len();
            bob.decrypt(&mut bob_group, &m)?;
        }
        let per_message = (bob.kv.total_bytes() as f64 - after_join as f64) / messages as f64;
        let written = (alice.kv.bytes_written - written_a + bob.kv.bytes_written - written_b)
            as f64
            / messages as f64;
        Ok(json!({
            "keyPackage": kp.len(), "welcome": welcome.len(), "commit": commit.len(),
            "ciphertext": ciphertext, "totalAfterJoin": after_join,
            "perConversation": per_conversation, "perMessage": per_message, "writtenPerMessage": written,
        }))
    }
}

fn round_trip(pair: &mut Pair) -> Res<()> {
    let message = pair.alice.encrypt(&mut pair.group, &plaintext())?;
    let got = pair.bob.decrypt(&mut pair.bob_group, &message)?;
    if got.len() != PLAINTEXT_LEN {
        return Err("round trip: wrong plaintext".into());
    }
    Ok(())
}

fn versions() -> Value {
    let info = ping_web_mls::build_info();
    let mut out = serde_json::Map::new();
    for line in info.lines() {
        if let Some((k, v)) = line.split_once('=') {
            out.insert(k.to_string(), Value::String(v.to_string()));
        }
    }
    out.insert(
        "target".into(),
        Value::String(std::env::consts::ARCH.to_string()),
    );
    Value::Object(out)
}

fn cold(start: Instant) -> Value {
    let provider = Provider::new();
    let init = ms(start);
    let identity = Identity::create(&provider, b"alice").unwrap();
    identity.key_package(&provider).unwrap();
    json!({"importInit": init, "firstClient": ms(start)})
}

fn serve() {
    let mut bench = Bench::default();
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let reply = match serde_json::from_str::<Value>(&line) {
            Err(e) => json!({"ok": false, "error": format!("bad request: {e}")}),
            Ok(request) => {
                let kind = request["kind"].as_str().unwrap_or("");
                let params = &request["params"];
                let result = match request["op"].as_str().unwrap_or("") {
                    "versions" => Ok(versions()),
                    "prepare" => bench.prepare(kind, params),
                    "rep" => bench.rep(kind, params),
                    "sizes" => bench.sizes(),
                    "exit" => break,
                    op => Err(format!("unknown op {op}")),
                };
                match result {
                    Ok(result) => json!({"ok": true, "result": result}),
                    Err(error) => json!({"ok": false, "error": error}),
                }
            }
        };
        writeln!(stdout, "{reply}").unwrap();
        stdout.flush().unwrap();
    }
}

fn main() {
    let start = Instant::now();
    match std::env::args().nth(1).as_deref() {
        Some("cold") => println!("{}", cold(start)),
        Some("serve") => serve(),
        _ => {
            eprintln!("usage: ping_web_bench_native serve | cold");
            std::process::exit(2);
        }
    }
}
