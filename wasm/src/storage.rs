//! The key/value working set behind OpenMLS.
//!
//! OpenMLS reads and writes its state through `StorageProvider`. Here that state lives in
//! one in-memory ordered map. Python owns durability: after each operation it takes a
//! [`WorkingSet::checkpoint`] (every key changed since the last one) and writes it in one
//! atomic batch together with its own records. A failed operation is undone with
//! [`WorkingSet::rollback`], so a half-applied OpenMLS call never leaks into storage.
//!
//! Key layout (all entries carry the OpenMLS storage version in their last two bytes):
//! - group-scoped: `0x01 || u16 len || json(group_id) || label || 0x00 || json(sub_key) || u16 version`
//! - global:       `0x02 || label || 0x00 || json(key) || u16 version`
//! - a chunk of a group-scoped value: `value key || 0xff || path` ([`crate::chunks`])
//!
//! so every entry of one group shares the prefix [`group_prefix`], which makes a per-group
//! export, import or drop a prefix scan (QueuedProposal rows and chunks included).
//!
//! Values (OpenMLS needs a self-describing format), told apart by their first byte:
//! - format 1, JSON text (first byte `{`, `[`, `"`, a digit, `-`, `t`, `f` or `n`): what every
//!   value was before format 2, and what the identity's signature key pair still is (written
//!   once; backups carry it and tools read it as JSON);
//! - `0x02 || body`: format 2 ([`crate::value`]), the whole value: every other value;
//! - `0x03 || top chunk`: format 2, a group-scoped value of more than [`chunks::WHOLE_MAX`]
//!   bytes split into chunks, each its own entry, so a change rewrites only the chunks it
//!   touches.
//!
//! Every format is read wherever it is found; a value is written in the current format when
//! OpenMLS next writes it. So a database written before format 2 opens as it is and moves to
//! format 2 value by value, each in the batch of the operation that changed it.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Bound;

use openmls_traits::storage::{traits, StorageProvider, CURRENT_VERSION};
use serde::ser::SerializeSeq;
use serde::{de::DeserializeOwned, Serialize, Serializer};

use crate::{chunks, value};

const GROUP_SCOPE: u8 = 0x01;
const GLOBAL_SCOPE: u8 = 0x02;
const SEPARATOR: u8 = 0x00;
/// First byte of a format-2 value stored whole.
pub const FORMAT2_WHOLE: u8 = 0x02;
/// First byte of the top chunk of a format-2 value split into chunks.
pub const FORMAT2_CHUNKED: u8 = 0x03;
/// Between a value's key and the path of one of its chunks.
const CHUNK_SEPARATOR: u8 = 0xff;

/// Error of the working set: only (de)serialization can fail.
#[derive(Debug)]
pub struct StorageError(pub String);

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "storage: {}", self.0)
    }
}

impl std::error::Error for StorageError {}

fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(value).map_err(|e| StorageError(e.to_string()))
}

fn storage_error(e: impl fmt::Display) -> StorageError {
    StorageError(e.to_string())
}

/// The prefix of every chunk of the value stored under `key`.
fn chunk_prefix(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 1);
    out.extend_from_slice(key);
    out.push(CHUNK_SEPARATOR);
    out
}

/// The format-2 encoding of the value stored under `key` (`stored`), whatever its format;
/// `entries` holds its chunks if it has any. Not generic: one copy for every type read.
fn stored_body<'a>(
    entries: &'a BTreeMap<Vec<u8>, Vec<u8>>,
    key: &[u8],
    stored: &'a [u8],
) -> Result<Cow<'a, [u8]>, StorageError> {
    match stored.first() {
        Some(&FORMAT2_WHOLE) => Ok(Cow::Borrowed(&stored[1..])),
        Some(&FORMAT2_CHUNKED) => {
            let prefix = chunk_prefix(key);
            let chunk = |path: &[u8]| entries.get(&[prefix.as_slice(), path].concat()).map(|v| v.as_slice());
            chunks::assemble(&stored[1..], &chunk)
                .map(Cow::Owned)
                .map_err(|e| StorageError(e.0))
        }
        // Format 1 is read by way of format 2 (a generic JSON value, then its format-2
        // encoding), rather than by a JSON decoder for every type.
        _ => {
            let json: serde_json::Value = serde_json::from_slice(stored).map_err(storage_error)?;
            value::to_vec(&json).map(Cow::Owned).map_err(storage_error)
        }
    }
}

/// A list and one more item, serialized as one sequence (appending without cloning).
struct Appended<'a, V>(&'a [V], &'a V);

impl<V: Serialize> Serialize for Appended<'_, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len() + 1))?;
        for item in self.0 {
            seq.serialize_element(item)?;
        }
        seq.serialize_element(self.1)?;
        seq.end()
    }
}

/// Prefix shared by every entry of the group whose serialized id is `group_id_json`.
fn prefix_for_json(group_id_json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 + group_id_json.len());
    out.push(GROUP_SCOPE);
    out.extend_from_slice(&(group_id_json.len() as u16).to_be_bytes());
    out.extend_from_slice(group_id_json);
    out
}

/// The prefix of every entry belonging to the MLS group with id `group_id` (raw bytes).
pub fn group_prefix(group_id: &[u8]) -> Vec<u8> {
    let id = openmls::group::GroupId::from_slice(group_id);
    // GroupId serializes infallibly (it is a byte vector).
    prefix_for_json(&serde_json::to_vec(&id).unwrap_or_default())
}

fn group_key<G: Serialize, K: Serialize + ?Sized>(
    group_id: &G,
    label: &[u8],
    sub_key: &K,
) -> Result<Vec<u8>, StorageError> {
    let mut out = prefix_for_json(&to_json(group_id)?);
    out.extend_from_slice(label);
    out.push(SEPARATOR);
    out.extend_from_slice(&to_json(sub_key)?);
    out.extend_from_slice(&CURRENT_VERSION.to_be_bytes());
    Ok(out)
}

fn group_label_prefix<G: Serialize>(group_id: &G, label: &[u8]) -> Result<Vec<u8>, StorageError> {
    let mut out = prefix_for_json(&to_json(group_id)?);
    out.extend_from_slice(label);
    out.push(SEPARATOR);
    Ok(out)
}

fn global_key<K: Serialize + ?Sized>(label: &[u8], key: &K) -> Result<Vec<u8>, StorageError> {
    let mut out = vec![GLOBAL_SCOPE];
    out.extend_from_slice(label);
    out.push(SEPARATOR);
    out.extend_from_slice(&to_json(key)?);
    out.extend_from_slice(&CURRENT_VERSION.to_be_bytes());
    Ok(out)
}

/// One change since the last checkpoint: `None` means the key was deleted.
pub type Change = (Vec<u8>, Option<Vec<u8>>);

/// Value each touched key had at some earlier point (`None`: absent), to put it back.
type UndoLog = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// The in-memory key/value state of one provider, with undo back to the last checkpoint.
#[derive(Default)]
pub struct WorkingSet {
    entries: RefCell<BTreeMap<Vec<u8>, Vec<u8>>>,
    /// Value each touched key had at the last checkpoint (`None`: absent).
    undo: RefCell<UndoLog>,
    /// While an operation runs: value each key had when the operation began.
    journal: RefCell<Option<UndoLog>>,
    /// Open savepoints, innermost last: value each key had when each was taken.
    savepoints: RefCell<Vec<UndoLog>>,
    #[cfg(test)]
    json_only: std::cell::Cell<bool>,
}

fn record_first(log: &RefCell<Option<UndoLog>>, key: &[u8], current: &dyn Fn() -> Option<Vec<u8>>) {
    if let Some(log) = log.borrow_mut().as_mut() {
        if !log.contains_key(key) {
            log.insert(key.to_vec(), current());
        }
    }
}

impl WorkingSet {
    fn remember(&self, key: &[u8]) {
        let current = || self.entries.borrow().get(key).cloned();
        let mut undo = self.undo.borrow_mut();
        if !undo.contains_key(key) {
            undo.insert(key.to_vec(), current());
        }
        drop(undo);
        record_first(&self.journal, key, &current);
        for log in self.savepoints.borrow_mut().iter_mut() {
            if !log.contains_key(key) {
                log.insert(key.to_vec(), current());
            }
        }
    }

    fn put_back(&self, log: UndoLog) {
        let mut entries = self.entries.borrow_mut();
        for (key, before) in log {
            match before {
                Some(value) => entries.insert(key, value),
                None => entries.remove(&key),
            };
        }
    }

    /// Mark the current state so that several operations can be undone together.
    /// Savepoints nest: each rollback or release ends the innermost one.
    pub fn begin_savepoint(&self) {
        self.savepoints.borrow_mut().push(BTreeMap::new());
    }

    /// Put back every key changed since the innermost savepoint, and end it.
    pub fn rollback_savepoint(&self) {
        let log = self.savepoints.borrow_mut().pop().unwrap_or_default();
        self.put_back(log);
    }

    /// Keep the changes made since the innermost savepoint, and end it.
    pub fn release_savepoint(&self) {
        self.savepoints.borrow_mut().pop();
    }

    /// Start recording an operation so that [`Self::abort_op`] can undo exactly it.
    pub fn begin_op(&self) {
        *self.journal.borrow_mut() = Some(BTreeMap::new());
    }

    /// The operation succeeded: keep its writes.
    pub fn commit_op(&self) {
        *self.journal.borrow_mut() = None;
    }

    /// The operation failed: put back every key it touched.
    pub fn abort_op(&self) {
        let journal = self.journal.borrow_mut().take().unwrap_or_default();
        self.put_back(journal);
    }

    /// Run `op` as one operation: its writes stay if it succeeds and are undone if it fails.
    pub fn atomically<T, E>(&self, op: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        self.begin_op();
        let result = op();
        if result.is_ok() {
            self.commit_op();
        } else {
            self.abort_op();
        }
        result
    }

    fn put(&self, key: Vec<u8>, value: Vec<u8>) {
        self.remember(&key);
        self.entries.borrow_mut().insert(key, value);
    }

    fn delete(&self, key: &[u8]) {
        if self.entries.borrow().contains_key(key) {
            self.remember(key);
            self.entries.borrow_mut().remove(key);
        }
    }

    #[cfg(test)]
    fn get_raw(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.entries.borrow().get(key).cloned()
    }

    fn keys_with_prefix(&self, prefix: &[u8]) -> Vec<Vec<u8>> {
        self.entries
            .borrow()
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Every change since the last checkpoint (keys whose value did not end up changing are
    /// left out), and a new checkpoint.
    pub fn checkpoint(&self) -> Vec<Change> {
        let undo = std::mem::take(&mut *self.undo.borrow_mut());
        let entries = self.entries.borrow();
        undo.into_iter()
            .filter_map(|(key, before)| {
                let now = entries.get(&key).cloned();
                (now != before).then_some((key, now))
            })
            .collect()
    }

    /// Every change since the last checkpoint, as [`Self::checkpoint`] would report it,
    /// without taking a checkpoint.
    pub fn changes(&self) -> Vec<Change> {
        let undo = self.undo.borrow();
        let entries = self.entries.borrow();
        undo.iter()
            .filter_map(|(key, before)| {
                let now = entries.get(key);
                (now != before.as_ref()).then(|| (key.clone(), now.cloned()))
            })
            .collect()
    }

    /// Put every key back to its value at the last checkpoint.
    pub fn rollback(&self) {
        let undo = std::mem::take(&mut *self.undo.borrow_mut());
        self.savepoints.borrow_mut().clear();
        self.put_back(undo);
    }

    /// Whether changes are waiting for a checkpoint.
    pub fn has_changes(&self) -> bool {
        let entries = self.entries.borrow();
        self.undo
            .borrow()
            .iter()
            .any(|(key, before)| entries.get(key) != before.as_ref())
    }

    /// Load stored entries as they are (they are already durable: nothing to checkpoint).
    pub fn restore(&self, changes: Vec<Change>) {
        let mut entries = self.entries.borrow_mut();
        for (key, value) in changes {
            match value {
                Some(value) => entries.insert(key, value),
                None => entries.remove(&key),
            };
        }
    }

    /// Write entries as new changes (they reach storage with the next checkpoint).
    pub fn import(&self, changes: Vec<Change>) {
        for (key, value) in changes {
            match value {
                Some(value) => self.put(key, value),
                None => self.delete(&key),
            }
        }
    }

    /// Every entry whose key starts with `prefix`, in key order.
    pub fn entries_with_prefix(&self, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.entries
            .borrow()
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Delete every entry whose key starts with `prefix` (recorded as changes).
    pub fn delete_prefix(&self, prefix: &[u8]) {
        for key in self.keys_with_prefix(prefix) {
            self.delete(&key);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.borrow().is_empty()
    }

    // -- values: typed helpers used by the StorageProvider implementation --

    fn put_if_changed(&self, key: Vec<u8>, value: Vec<u8>) {
        if self.entries.borrow().get(&key) != Some(&value) {
            self.put(key, value);
        }
    }

    /// Store a value in format 1 (JSON): only the identity's signature key pair, which
    /// backups carry and tools read as JSON.
    fn write_json<V: Serialize + ?Sized>(&self, key: Vec<u8>, value: &V) -> Result<(), StorageError> {
        self.put_if_changed(key, to_json(value)?);
        Ok(())
    }

    /// Store a value in format 2; a large group-scoped one in chunks (only changed chunks
    /// are written).
    /// Each type gets one serializer only: what is written in JSON and what in format 2
    /// never share a call site, which keeps the module small.
    fn write<V: Serialize + ?Sized>(&self, key: Vec<u8>, value: &V) -> Result<(), StorageError> {
        #[cfg(test)]
        if self.writes_json() {
            let chunk_prefix = chunk_prefix(&key);
            self.write_json(key, value)?;
            self.delete_prefix(&chunk_prefix);
            return Ok(());
        }
        let body = value::to_vec(value).map_err(storage_error)?;
        self.store(key, &body);
        Ok(())
    }

    /// Store a value's format-2 encoding `body` under `key` (not generic: one copy for every
    /// type written).
    #[inline(never)]
    fn store(&self, key: Vec<u8>, body: &[u8]) {
        let chunk_prefix = chunk_prefix(&key);
        // Only group-scoped values change often enough to be worth chunks.
        let split = if key.first() == Some(&GROUP_SCOPE) {
            chunks::split(body)
        } else {
            None
        };
        match split {
            None => {
                let mut record = Vec::with_capacity(1 + body.len());
                record.push(FORMAT2_WHOLE);
                record.extend_from_slice(body);
                self.put_if_changed(key, record);
                self.delete_prefix(&chunk_prefix);
            }
            Some(split) => {
                let mut record = Vec::with_capacity(1 + split.top().len());
                record.push(FORMAT2_CHUNKED);
                record.extend_from_slice(split.top());
                self.put_if_changed(key, record);
                let existing = self.count_with_prefix(&chunk_prefix);
                let mut chunk_key = chunk_prefix.clone();
                let mut found = 0;
                for (path, bytes) in split.chunks() {
                    chunk_key.truncate(chunk_prefix.len());
                    chunk_key.extend_from_slice(path);
                    let same = match self.entries.borrow().get(&chunk_key) {
                        Some(old) => {
                            found += 1;
                            old == bytes
                        }
                        None => false,
                    };
                    if !same {
                        self.put(chunk_key.clone(), bytes.to_vec());
                    }
                }
                if existing > found {
                    // Chunks the value no longer has (it shrank or changed shape).
                    let kept: BTreeSet<&[u8]> = split.chunks().map(|(path, _)| path).collect();
                    for stale in self.keys_with_prefix(&chunk_prefix) {
                        if !kept.contains(&stale[chunk_prefix.len()..]) {
                            self.delete(&stale);
                        }
                    }
                }
            }
        }
    }

    fn count_with_prefix(&self, prefix: &[u8]) -> usize {
        self.entries
            .borrow()
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .count()
    }

    fn read<V: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<V>, StorageError> {
        let entries = self.entries.borrow();
        match entries.get(key) {
            None => Ok(None),
            Some(stored) => {
                let body = stored_body(&entries, key, stored)?;
                value::from_slice(&body).map(Some).map_err(storage_error)
            }
        }
    }

    /// Delete the value under `key`, chunks included.
    fn delete_value(&self, key: &[u8]) {
        self.delete(key);
        self.delete_prefix(&chunk_prefix(key));
    }

    fn write_group<G: Serialize, V: Serialize + ?Sized>(
        &self,
        group_id: &G,
        label: &[u8],
        value: &V,
    ) -> Result<(), StorageError> {
        self.write(group_key(group_id, label, &())?, value)
    }

    fn read_group<G: Serialize, V: DeserializeOwned>(
        &self,
        group_id: &G,
        label: &[u8],
    ) -> Result<Option<V>, StorageError> {
        self.read(&group_key(group_id, label, &())?)
    }

    fn delete_group<G: Serialize>(&self, group_id: &G, label: &[u8]) -> Result<(), StorageError> {
        self.delete_value(&group_key(group_id, label, &())?);
        Ok(())
    }

    /// Append to a list stored as a sequence of values.
    fn append<V: Serialize + DeserializeOwned>(&self, key: Vec<u8>, item: &V) -> Result<(), StorageError> {
        let list: Vec<V> = self.read(&key)?.unwrap_or_default();
        self.write(key, &Appended(&list, item))
    }

    fn read_list<V: DeserializeOwned>(&self, key: &[u8]) -> Result<Vec<V>, StorageError> {
        Ok(self.read(key)?.unwrap_or_default())
    }

    /// Tests write every value in format 1 to make a database as it was before format 2.
    #[cfg(test)]
    fn writes_json(&self) -> bool {
        self.json_only.get()
    }

    #[cfg(test)]
    pub(crate) fn write_json_only(&self, on: bool) {
        self.json_only.set(on);
    }
}

const JOIN_CONFIG: &[u8] = b"MlsGroupJoinConfig";
const OWN_LEAF_NODES: &[u8] = b"OwnLeafNodes";
const QUEUED_PROPOSAL: &[u8] = b"QueuedProposal";
const PROPOSAL_QUEUE_REFS: &[u8] = b"ProposalQueueRefs";
const TREE: &[u8] = b"Tree";
const INTERIM_TRANSCRIPT_HASH: &[u8] = b"InterimTranscriptHash";
const CONTEXT: &[u8] = b"GroupContext";
const CONFIRMATION_TAG: &[u8] = b"ConfirmationTag";
const GROUP_STATE: &[u8] = b"GroupState";
const MESSAGE_SECRETS: &[u8] = b"MessageSecrets";
const RESUMPTION_PSK_STORE: &[u8] = b"ResumptionPsk";
const OWN_LEAF_INDEX: &[u8] = b"OwnLeafNodeIndex";
const EPOCH_SECRETS: &[u8] = b"EpochSecrets";
const EPOCH_KEY_PAIRS: &[u8] = b"EpochKeyPairs";
const SIGNATURE_KEY_PAIR: &[u8] = b"SignatureKeyPair";
const ENCRYPTION_KEY_PAIR: &[u8] = b"EncryptionKeyPair";
const KEY_PACKAGE: &[u8] = b"KeyPackage";
const PSK: &[u8] = b"Psk";

impl StorageProvider<CURRENT_VERSION> for WorkingSet {
    type Error = StorageError;

    fn write_mls_join_config<G: traits::GroupId<CURRENT_VERSION>, C: traits::MlsGroupJoinConfig<CURRENT_VERSION>>(
        &self,
        group_id: &G,
        config: &C,
    ) -> Result<(), Self::Error> {
        self.write_group(group_id, JOIN_CONFIG, config)
    }

    fn append_own_leaf_node<G: traits::GroupId<CURRENT_VERSION>, L: traits::LeafNode<CURRENT_VERSION>>(
        &self,
        group_id: &G,
        leaf_node: &L,
    ) -> Result<(), Self::Error> {
        self.append(group_key(group_id, OWN_LEAF_NODES, &())?, leaf_node)
    }

    fn queue_proposal<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
        P: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
        proposal_ref: &R,
        proposal: &P,
    ) -> Result<(), Self::Error> {
        self.write(group_key(group_id, QUEUED_PROPOSAL, proposal_ref)?, proposal)?;
        self.append(group_key(group_id, PROPOSAL_QUEUE_REFS, &())?, proposal_ref)
    }

    fn write_tree<G: traits::GroupId<CURRENT_VERSION>, T: traits::TreeSync<CURRENT_VERSION>>(
        &self,
        group_id: &G,
        tree: &T,
    ) -> Result<(), Self::Error> {
        self.write_group(group_id, TREE, tree)
    }

    fn write_interim_transcript_hash<
        G: traits::GroupId<CURRENT_VERSION>,
        H: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
        hash: &H,
    ) -> Result<(), Self::Error> {
        self.write_group(group_id, INTERIM_TRANSCRIPT_HASH, hash)
    }

    fn write_context<G: traits::GroupId<CURRENT_VERSION>, C: traits::GroupContext<CURRENT_VERSION>>(
        &self,
        group_id: &G,
        context: &C,
    ) -> Result<(), Self::Error> {
        self.write_group(group_id, CONTEXT, context)
    }

    fn write_confirmation_tag<G: traits::GroupId<CURRENT_VERSION>, T: traits::ConfirmationTag<CURRENT_VERSION>>(
        &self,
        group_id: &G,
        tag: &T,
    ) -> Result<(), Self::Error> {
        self.write_group(group_id, CONFIRMATION_TAG, tag)
    }

    fn write_group_state<S: traits::GroupState<CURRENT_VERSION>, G: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &G,
        state: &S,
    ) -> Result<(), Self::Error> {
        self.write_group(group_id, GROUP_STATE, state)
    }

    fn write_message_secrets<G: traits::GroupId<CURRENT_VERSION>, M: traits::MessageSecrets<CURRENT_VERSION>>(
        &self,
        group_id: &G,
        secrets: &M,
    ) -> Result<(), Self::Error> {
        self.write_group(group_id, MESSAGE_SECRETS, secrets)
    }

    fn write_resumption_psk_store<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ResumptionPskStore<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
        store: &R,
    ) -> Result<(), Self::Error> {
        self.write_group(group_id, RESUMPTION_PSK_STORE, store)
    }

    fn write_own_leaf_index<G: traits::GroupId<CURRENT_VERSION>, L: traits::LeafNodeIndex<CURRENT_VERSION>>(
        &self,
        group_id: &G,
        index: &L,
    ) -> Result<(), Self::Error> {
        self.write_group(group_id, OWN_LEAF_INDEX, index)
    }

    fn write_group_epoch_secrets<G: traits::GroupId<CURRENT_VERSION>, E: traits::GroupEpochSecrets<CURRENT_VERSION>>(
        &self,
        group_id: &G,
        secrets: &E,
    ) -> Result<(), Self::Error> {
        self.write_group(group_id, EPOCH_SECRETS, secrets)
    }

    fn write_signature_key_pair<
        P: traits::SignaturePublicKey<CURRENT_VERSION>,
        K: traits::SignatureKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &P,
        key_pair: &K,
    ) -> Result<(), Self::Error> {
        self.write_json(global_key(SIGNATURE_KEY_PAIR, public_key)?, key_pair)
    }

    fn write_encryption_key_pair<K: traits::EncryptionKey<CURRENT_VERSION>, P: traits::HpkeKeyPair<CURRENT_VERSION>>(
        &self,
        public_key: &K,
        key_pair: &P,
    ) -> Result<(), Self::Error> {
        self.write(global_key(ENCRYPTION_KEY_PAIR, public_key)?, key_pair)
    }

    fn write_encryption_epoch_key_pairs<
        G: traits::GroupId<CURRENT_VERSION>,
        E: traits::EpochKey<CURRENT_VERSION>,
        P: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
        epoch: &E,
        leaf_index: u32,
        key_pairs: &[P],
    ) -> Result<(), Self::Error> {
        self.write(group_key(group_id, EPOCH_KEY_PAIRS, &(epoch, leaf_index))?, key_pairs)
    }

    fn write_key_package<R: traits::HashReference<CURRENT_VERSION>, K: traits::KeyPackage<CURRENT_VERSION>>(
        &self,
        hash_ref: &R,
        key_package: &K,
    ) -> Result<(), Self::Error> {
        self.write(global_key(KEY_PACKAGE, hash_ref)?, key_package)
    }

    fn write_psk<I: traits::PskId<CURRENT_VERSION>, B: traits::PskBundle<CURRENT_VERSION>>(
        &self,
        psk_id: &I,
        psk: &B,
    ) -> Result<(), Self::Error> {
        self.write(global_key(PSK, psk_id)?, psk)
    }

    fn mls_group_join_config<G: traits::GroupId<CURRENT_VERSION>, C: traits::MlsGroupJoinConfig<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<Option<C>, Self::Error> {
        self.read_group(group_id, JOIN_CONFIG)
    }

    fn own_leaf_nodes<G: traits::GroupId<CURRENT_VERSION>, L: traits::LeafNode<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<Vec<L>, Self::Error> {
        self.read_list(&group_key(group_id, OWN_LEAF_NODES, &())?)
    }

    fn queued_proposal_refs<G: traits::GroupId<CURRENT_VERSION>, R: traits::ProposalRef<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<Vec<R>, Self::Error> {
        self.read_list(&group_key(group_id, PROPOSAL_QUEUE_REFS, &())?)
    }

    fn queued_proposals<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
        P: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
    ) -> Result<Vec<(R, P)>, Self::Error> {
        let refs: Vec<R> = self.queued_proposal_refs(group_id)?;
        let mut out = Vec::with_capacity(refs.len());
        for proposal_ref in refs {
            let key = group_key(group_id, QUEUED_PROPOSAL, &proposal_ref)?;
            let proposal = self
                .read(&key)?
                .ok_or_else(|| StorageError("queued proposal reference without proposal".into()))?;
            out.push((proposal_ref, proposal));
        }
        Ok(out)
    }

    fn tree<G: traits::GroupId<CURRENT_VERSION>, T: traits::TreeSync<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<Option<T>, Self::Error> {
        self.read_group(group_id, TREE)
    }

    fn group_context<G: traits::GroupId<CURRENT_VERSION>, C: traits::GroupContext<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<Option<C>, Self::Error> {
        self.read_group(group_id, CONTEXT)
    }

    fn interim_transcript_hash<
        G: traits::GroupId<CURRENT_VERSION>,
        H: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
    ) -> Result<Option<H>, Self::Error> {
        self.read_group(group_id, INTERIM_TRANSCRIPT_HASH)
    }

    fn confirmation_tag<G: traits::GroupId<CURRENT_VERSION>, T: traits::ConfirmationTag<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<Option<T>, Self::Error> {
        self.read_group(group_id, CONFIRMATION_TAG)
    }

    fn group_state<S: traits::GroupState<CURRENT_VERSION>, G: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<Option<S>, Self::Error> {
        self.read_group(group_id, GROUP_STATE)
    }

    fn message_secrets<G: traits::GroupId<CURRENT_VERSION>, M: traits::MessageSecrets<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<Option<M>, Self::Error> {
        self.read_group(group_id, MESSAGE_SECRETS)
    }

    fn resumption_psk_store<G: traits::GroupId<CURRENT_VERSION>, R: traits::ResumptionPskStore<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<Option<R>, Self::Error> {
        self.read_group(group_id, RESUMPTION_PSK_STORE)
    }

    fn own_leaf_index<G: traits::GroupId<CURRENT_VERSION>, L: traits::LeafNodeIndex<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<Option<L>, Self::Error> {
        self.read_group(group_id, OWN_LEAF_INDEX)
    }

    fn group_epoch_secrets<G: traits::GroupId<CURRENT_VERSION>, E: traits::GroupEpochSecrets<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<Option<E>, Self::Error> {
        self.read_group(group_id, EPOCH_SECRETS)
    }

    fn signature_key_pair<
        P: traits::SignaturePublicKey<CURRENT_VERSION>,
        K: traits::SignatureKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &P,
    ) -> Result<Option<K>, Self::Error> {
        self.read(&global_key(SIGNATURE_KEY_PAIR, public_key)?)
    }

    fn encryption_key_pair<P: traits::HpkeKeyPair<CURRENT_VERSION>, K: traits::EncryptionKey<CURRENT_VERSION>>(
        &self,
        public_key: &K,
    ) -> Result<Option<P>, Self::Error> {
        self.read(&global_key(ENCRYPTION_KEY_PAIR, public_key)?)
    }

    fn encryption_epoch_key_pairs<
        G: traits::GroupId<CURRENT_VERSION>,
        E: traits::EpochKey<CURRENT_VERSION>,
        P: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
        epoch: &E,
        leaf_index: u32,
    ) -> Result<Vec<P>, Self::Error> {
        self.read_list(&group_key(group_id, EPOCH_KEY_PAIRS, &(epoch, leaf_index))?)
    }

    fn key_package<R: traits::HashReference<CURRENT_VERSION>, K: traits::KeyPackage<CURRENT_VERSION>>(
        &self,
        hash_ref: &R,
    ) -> Result<Option<K>, Self::Error> {
        self.read(&global_key(KEY_PACKAGE, hash_ref)?)
    }

    fn psk<B: traits::PskBundle<CURRENT_VERSION>, I: traits::PskId<CURRENT_VERSION>>(
        &self,
        psk_id: &I,
    ) -> Result<Option<B>, Self::Error> {
        self.read(&global_key(PSK, psk_id)?)
    }

    fn remove_proposal<G: traits::GroupId<CURRENT_VERSION>, R: traits::ProposalRef<CURRENT_VERSION>>(
        &self,
        group_id: &G,
        proposal_ref: &R,
    ) -> Result<(), Self::Error> {
        let refs_key = group_key(group_id, PROPOSAL_QUEUE_REFS, &())?;
        let wanted = value::to_vec(proposal_ref).map_err(storage_error)?;
        let refs: Vec<R> = self.read_list(&refs_key)?;
        let mut kept = Vec::with_capacity(refs.len());
        for r in &refs {
            if value::to_vec(r).map_err(storage_error)? != wanted {
                kept.push(r);
            }
        }
        if kept.is_empty() {
            self.delete_value(&refs_key);
        } else {
            self.write(refs_key, &kept)?;
        }
        self.delete_value(&group_key(group_id, QUEUED_PROPOSAL, proposal_ref)?);
        Ok(())
    }

    fn delete_own_leaf_nodes<G: traits::GroupId<CURRENT_VERSION>>(&self, group_id: &G) -> Result<(), Self::Error> {
        self.delete_group(group_id, OWN_LEAF_NODES)
    }

    fn delete_group_config<G: traits::GroupId<CURRENT_VERSION>>(&self, group_id: &G) -> Result<(), Self::Error> {
        self.delete_group(group_id, JOIN_CONFIG)
    }

    fn delete_tree<G: traits::GroupId<CURRENT_VERSION>>(&self, group_id: &G) -> Result<(), Self::Error> {
        self.delete_group(group_id, TREE)
    }

    fn delete_confirmation_tag<G: traits::GroupId<CURRENT_VERSION>>(&self, group_id: &G) -> Result<(), Self::Error> {
        self.delete_group(group_id, CONFIRMATION_TAG)
    }

    fn delete_group_state<G: traits::GroupId<CURRENT_VERSION>>(&self, group_id: &G) -> Result<(), Self::Error> {
        self.delete_group(group_id, GROUP_STATE)
    }

    fn delete_context<G: traits::GroupId<CURRENT_VERSION>>(&self, group_id: &G) -> Result<(), Self::Error> {
        self.delete_group(group_id, CONTEXT)
    }

    fn delete_interim_transcript_hash<G: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<(), Self::Error> {
        self.delete_group(group_id, INTERIM_TRANSCRIPT_HASH)
    }

    fn delete_message_secrets<G: traits::GroupId<CURRENT_VERSION>>(&self, group_id: &G) -> Result<(), Self::Error> {
        self.delete_group(group_id, MESSAGE_SECRETS)
    }

    fn delete_all_resumption_psk_secrets<G: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<(), Self::Error> {
        self.delete_group(group_id, RESUMPTION_PSK_STORE)
    }

    fn delete_own_leaf_index<G: traits::GroupId<CURRENT_VERSION>>(&self, group_id: &G) -> Result<(), Self::Error> {
        self.delete_group(group_id, OWN_LEAF_INDEX)
    }

    fn delete_group_epoch_secrets<G: traits::GroupId<CURRENT_VERSION>>(&self, group_id: &G) -> Result<(), Self::Error> {
        self.delete_group(group_id, EPOCH_SECRETS)
    }

    fn clear_proposal_queue<G: traits::GroupId<CURRENT_VERSION>, R: traits::ProposalRef<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<(), Self::Error> {
        // Unlike the reference memory storage, drop the proposals themselves too.
        self.delete_prefix(&group_label_prefix(group_id, QUEUED_PROPOSAL)?);
        self.delete_group(group_id, PROPOSAL_QUEUE_REFS)
    }

    fn delete_signature_key_pair<P: traits::SignaturePublicKey<CURRENT_VERSION>>(
        &self,
        public_key: &P,
    ) -> Result<(), Self::Error> {
        self.delete_value(&global_key(SIGNATURE_KEY_PAIR, public_key)?);
        Ok(())
    }

    fn delete_encryption_key_pair<K: traits::EncryptionKey<CURRENT_VERSION>>(
        &self,
        public_key: &K,
    ) -> Result<(), Self::Error> {
        self.delete_value(&global_key(ENCRYPTION_KEY_PAIR, public_key)?);
        Ok(())
    }

    fn delete_encryption_epoch_key_pairs<G: traits::GroupId<CURRENT_VERSION>, E: traits::EpochKey<CURRENT_VERSION>>(
        &self,
        group_id: &G,
        epoch: &E,
        leaf_index: u32,
    ) -> Result<(), Self::Error> {
        self.delete_value(&group_key(group_id, EPOCH_KEY_PAIRS, &(epoch, leaf_index))?);
        Ok(())
    }

    fn delete_key_package<R: traits::HashReference<CURRENT_VERSION>>(&self, hash_ref: &R) -> Result<(), Self::Error> {
        self.delete_value(&global_key(KEY_PACKAGE, hash_ref)?);
        Ok(())
    }

    fn delete_psk<I: traits::PskId<CURRENT_VERSION>>(&self, psk_id: &I) -> Result<(), Self::Error> {
        self.delete_value(&global_key(PSK, psk_id)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openmls::group::GroupId;
    use openmls_traits::storage::{traits, Entity, Key, StorageProvider, CURRENT_VERSION};
    use serde::{Deserialize, Serialize};

    use super::{group_prefix, Change, WorkingSet, FORMAT2_CHUNKED, FORMAT2_WHOLE};

    // Stand-ins for OpenMLS's entities: the working set only serializes them.
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    struct Ref(u8);
    impl Key<CURRENT_VERSION> for Ref {}
    impl Entity<CURRENT_VERSION> for Ref {}
    impl traits::ProposalRef<CURRENT_VERSION> for Ref {}

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    struct Proposal(String);
    impl Entity<CURRENT_VERSION> for Proposal {}
    impl traits::QueuedProposal<CURRENT_VERSION> for Proposal {}

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    struct Tree(String);
    impl Entity<CURRENT_VERSION> for Tree {}
    impl traits::TreeSync<CURRENT_VERSION> for Tree {}
    impl traits::LeafNode<CURRENT_VERSION> for Tree {}

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    struct PublicKey(Vec<u8>);
    impl Key<CURRENT_VERSION> for PublicKey {}
    impl traits::SignaturePublicKey<CURRENT_VERSION> for PublicKey {}

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    struct KeyPair(String);
    impl Entity<CURRENT_VERSION> for KeyPair {}
    impl traits::SignatureKeyPair<CURRENT_VERSION> for KeyPair {}

    fn k(key: &str) -> Vec<u8> {
        key.as_bytes().to_vec()
    }

    fn put(ws: &WorkingSet, key: &str, value: &str) {
        ws.import(vec![(k(key), Some(k(value)))]);
    }

    fn del(ws: &WorkingSet, key: &str) {
        ws.import(vec![(k(key), None)]);
    }

    fn get(ws: &WorkingSet, key: &str) -> Option<String> {
        ws.get_raw(key.as_bytes()).map(|v| String::from_utf8(v).unwrap())
    }

    fn set(changes: &[(&str, Option<&str>)]) -> Vec<Change> {
        changes.iter().map(|(key, value)| (k(key), value.map(k))).collect()
    }

    fn restored(entries: &[(&str, &str)]) -> WorkingSet {
        let ws = WorkingSet::default();
        ws.restore(entries.iter().map(|(key, value)| (k(key), Some(k(value)))).collect());
        ws
    }

    fn tree(ws: &WorkingSet, group: &GroupId) -> Option<Tree> {
        ws.tree(group).unwrap()
    }

    #[test]
    fn checkpoint_reports_each_changed_key_once_then_starts_afresh() {
        let ws = restored(&[("a", "1"), ("b", "2"), ("c", "3")]);
        put(&ws, "a", "10");
        put(&ws, "a", "11");
        del(&ws, "b");
        put(&ws, "c", "30");
        put(&ws, "c", "3"); // back to its checkpointed value: not a change
        put(&ws, "d", "4");
        put(&ws, "e", "5");
        del(&ws, "e"); // created and deleted again: not a change
        del(&ws, "zz"); // deleting an absent key: not a change
        assert!(ws.has_changes());
        assert_eq!(
            ws.checkpoint(),
            set(&[("a", Some("11")), ("b", None), ("d", Some("4"))])
        );
        assert!(!ws.has_changes());
        assert_eq!(ws.checkpoint(), vec![]);
        put(&ws, "a", "12");
        assert_eq!(ws.checkpoint(), set(&[("a", Some("12"))]));
    }

    #[test]
    fn changes_are_what_a_checkpoint_would_report_without_taking_it() {
        let ws = restored(&[("a", "1"), ("b", "2")]);
        put(&ws, "a", "10");
        del(&ws, "b");
        put(&ws, "c", "3");
        put(&ws, "c", "30");
        let expected = set(&[("a", Some("10")), ("b", None), ("c", Some("30"))]);
        assert_eq!(ws.changes(), expected);
        assert_eq!(ws.changes(), expected);
        assert!(ws.has_changes());
        assert_eq!(ws.checkpoint(), expected);
        assert_eq!(ws.changes(), vec![]);
    }

    #[test]
    fn rollback_returns_to_the_last_checkpoint() {
        let ws = restored(&[("a", "1"), ("b", "2")]);
        put(&ws, "a", "10");
        ws.checkpoint();
        put(&ws, "a", "11");
        del(&ws, "b");
        put(&ws, "c", "3");
        ws.rollback();
        assert_eq!(get(&ws, "a").as_deref(), Some("10"));
        assert_eq!(get(&ws, "b").as_deref(), Some("2"));
        assert_eq!(get(&ws, "c"), None);
        assert!(!ws.has_changes());
        assert_eq!(ws.checkpoint(), vec![]);
        assert_eq!(ws.len(), 2);
    }

    #[test]
    fn nested_savepoints_roll_back_and_release_innermost_first() {
        let ws = restored(&[("a", "1")]);
        ws.begin_savepoint();
        put(&ws, "a", "outer");
        put(&ws, "b", "outer");
        ws.begin_savepoint();
        put(&ws, "a", "inner");
        put(&ws, "c", "inner");
        ws.rollback_savepoint(); // undoes the inner savepoint's writes only
        assert_eq!(get(&ws, "a").as_deref(), Some("outer"));
        assert_eq!(get(&ws, "b").as_deref(), Some("outer"));
        assert_eq!(get(&ws, "c"), None);

        ws.begin_savepoint();
        put(&ws, "d", "kept by release");
        ws.release_savepoint(); // the outer savepoint still covers "d"
        assert_eq!(get(&ws, "d").as_deref(), Some("kept by release"));
        ws.rollback_savepoint();
        assert_eq!(get(&ws, "a").as_deref(), Some("1"));
        assert_eq!(get(&ws, "b"), None);
        assert_eq!(get(&ws, "d"), None);
        // Undone changes are no changes: the checkpoint reports none of them.
        assert_eq!(ws.checkpoint(), vec![]);
    }

    #[test]
    fn a_released_savepoint_keeps_its_changes_for_the_checkpoint() {
        let ws = restored(&[("a", "1")]);
        ws.begin_savepoint();
        put(&ws, "a", "2");
        ws.release_savepoint();
        assert_eq!(ws.checkpoint(), set(&[("a", Some("2"))]));
        // Ending a savepoint that does not exist is harmless.
        ws.release_savepoint();
        ws.rollback_savepoint();
        assert_eq!(get(&ws, "a").as_deref(), Some("2"));
    }

    #[test]
    fn rollback_drops_open_savepoints() {
        let ws = restored(&[("a", "1")]);
        ws.begin_savepoint();
        put(&ws, "a", "2");
        ws.rollback();
        assert_eq!(get(&ws, "a").as_deref(), Some("1"));
        put(&ws, "a", "3");
        ws.rollback_savepoint(); // no savepoint left: changes nothing
        assert_eq!(get(&ws, "a").as_deref(), Some("3"));
    }

    #[test]
    fn atomically_undoes_exactly_a_failed_operation() {
        let ws = restored(&[("a", "1")]);
        put(&ws, "before", "x");
        let failed: Result<(), &str> = ws.atomically(|| {
            put(&ws, "a", "2");
            put(&ws, "new", "y");
            del(&ws, "before");
            Err("boom")
        });
        assert_eq!(failed, Err("boom"));
        assert_eq!(get(&ws, "a").as_deref(), Some("1"));
        assert_eq!(get(&ws, "new"), None);
        assert_eq!(get(&ws, "before").as_deref(), Some("x"));
        let ok: Result<u8, ()> = ws.atomically(|| {
            put(&ws, "a", "3");
            Ok(7)
        });
        assert_eq!(ok, Ok(7));
        assert_eq!(ws.checkpoint(), set(&[("a", Some("3")), ("before", Some("x"))]));
    }

    #[test]
    fn restore_loads_silently_import_records_changes() {
        let ws = WorkingSet::default();
        ws.restore(set(&[("a", Some("1")), ("b", Some("2"))]));
        assert!(!ws.has_changes());
        assert_eq!(ws.checkpoint(), vec![]);
        ws.restore(set(&[("b", None)])); // a deletion read back from storage
        assert_eq!(get(&ws, "b"), None);
        assert_eq!(ws.checkpoint(), vec![]);
        // A rollback never undoes what was restored.
        ws.rollback();
        assert_eq!(get(&ws, "a").as_deref(), Some("1"));

        ws.import(set(&[("a", Some("10")), ("c", Some("3")), ("a", None)]));
        assert!(ws.has_changes());
        assert_eq!(ws.checkpoint(), set(&[("a", None), ("c", Some("3"))]));
        ws.import(set(&[("c", Some("30"))]));
        ws.rollback();
        assert_eq!(get(&ws, "c").as_deref(), Some("3"));
    }

    #[test]
    fn key_layout_is_scope_label_key_version() {
        let ws = WorkingSet::default();
        let group = GroupId::from_slice(&[7, 8, 9]);
        ws.write_tree(&group, &Tree("t".into())).unwrap();
        ws.write_signature_key_pair(&PublicKey(vec![1, 2]), &KeyPair("kp".into()))
            .unwrap();
        let changes = ws.checkpoint();
        let version = CURRENT_VERSION.to_be_bytes();

        let group_json = serde_json::to_vec(&group).unwrap();
        let mut group_key = vec![0x01];
        group_key.extend_from_slice(&(group_json.len() as u16).to_be_bytes());
        group_key.extend_from_slice(&group_json);
        assert_eq!(group_prefix(&[7, 8, 9]), group_key);
        group_key.extend_from_slice(b"Tree\x00");
        group_key.extend_from_slice(b"null"); // json(()): one entry per group
        group_key.extend_from_slice(&version);

        let mut global_key = vec![0x02];
        global_key.extend_from_slice(b"SignatureKeyPair\x00");
        global_key.extend_from_slice(br#"[1,2]"#);
        global_key.extend_from_slice(&version);

        // Group-scoped values in format 2 (0x02, then CBOR: the text "t"); global ones in JSON.
        assert_eq!(
            changes,
            vec![
                (group_key, Some(b"\x02\x61t".to_vec())),
                (global_key, Some(br#""kp""#.to_vec()))
            ]
        );
        assert_eq!(CURRENT_VERSION, 1);
        assert_eq!(tree(&ws, &group), Some(Tree("t".into())));
        assert_eq!(
            ws.signature_key_pair::<PublicKey, KeyPair>(&PublicKey(vec![1, 2]))
                .unwrap(),
            Some(KeyPair("kp".into()))
        );
    }

    #[test]
    fn group_entries_and_drop_group_are_prefix_scans_of_one_group() {
        let ws = WorkingSet::default();
        // Ids that are prefixes of one another still get disjoint key ranges.
        let short = GroupId::from_slice(&[1, 2]);
        let long = GroupId::from_slice(&[1, 2, 3]);
        for group in [&short, &long] {
            ws.write_tree(group, &Tree(format!("{:?}", group.as_slice()))).unwrap();
            ws.queue_proposal(group, &Ref(1), &Proposal("p".into())).unwrap();
        }
        ws.write_signature_key_pair(&PublicKey(vec![9]), &KeyPair("kp".into()))
            .unwrap();
        ws.checkpoint();
        assert_eq!(ws.len(), 7); // per group: tree, proposal, proposal refs; one global

        let entries = ws.entries_with_prefix(&group_prefix(&[1, 2]));
        assert_eq!(entries.len(), 3);
        assert!(entries.iter().all(|(key, _)| key.starts_with(&group_prefix(&[1, 2]))));
        assert!(ws.entries_with_prefix(&group_prefix(&[1])).is_empty());

        ws.delete_prefix(&group_prefix(&[1, 2]));
        let changes = ws.checkpoint();
        assert_eq!(changes.len(), 3);
        assert!(changes.iter().all(|(_, value)| value.is_none()));
        assert_eq!(tree(&ws, &short), None);
        assert_eq!(tree(&ws, &long), Some(Tree("[1, 2, 3]".into())));
        assert_eq!(ws.len(), 4);

        // Re-importing a snapshot brings the group back, as changes.
        ws.import(entries.into_iter().map(|(k, v)| (k, Some(v))).collect());
        assert_eq!(tree(&ws, &short), Some(Tree("[1, 2]".into())));
        assert_eq!(ws.checkpoint().len(), 3);
    }

    #[test]
    fn clearing_a_proposal_queue_drops_its_proposals() {
        let ws = WorkingSet::default();
        let group = GroupId::from_slice(&[5; 16]);
        let other = GroupId::from_slice(&[6; 16]);
        for n in 1..=3 {
            ws.queue_proposal(&group, &Ref(n), &Proposal(format!("p{n}"))).unwrap();
        }
        ws.queue_proposal(&other, &Ref(1), &Proposal("other".into())).unwrap();
        let queued: Vec<(Ref, Proposal)> = ws.queued_proposals(&group).unwrap();
        assert_eq!(queued.iter().map(|(r, _)| r.0).collect::<Vec<_>>(), vec![1, 2, 3]);
        ws.checkpoint();

        StorageProvider::<CURRENT_VERSION>::clear_proposal_queue::<GroupId, Ref>(&ws, &group).unwrap();
        assert!(ws
            .queued_proposals::<GroupId, Ref, Proposal>(&group)
            .unwrap()
            .is_empty());
        assert!(ws.queued_proposal_refs::<GroupId, Ref>(&group).unwrap().is_empty());
        // Nothing of the queue is left behind, proposals included: 3 proposals + the refs.
        assert!(ws.entries_with_prefix(&group_prefix(&[5; 16])).is_empty());
        let changes = ws.checkpoint();
        assert_eq!(changes.len(), 4);
        assert!(changes.iter().all(|(_, value)| value.is_none()));
        // Another group's queue is untouched.
        assert_eq!(ws.queued_proposals::<GroupId, Ref, Proposal>(&other).unwrap().len(), 1);
    }

    #[test]
    fn removing_one_proposal_keeps_the_others() {
        let ws = WorkingSet::default();
        let group = GroupId::from_slice(&[5; 16]);
        ws.queue_proposal(&group, &Ref(1), &Proposal("p1".into())).unwrap();
        ws.queue_proposal(&group, &Ref(2), &Proposal("p2".into())).unwrap();
        ws.remove_proposal(&group, &Ref(1)).unwrap();
        let queued: Vec<(Ref, Proposal)> = ws.queued_proposals(&group).unwrap();
        assert_eq!(queued, vec![(Ref(2), Proposal("p2".into()))]);
        ws.remove_proposal(&group, &Ref(2)).unwrap();
        assert!(ws.entries_with_prefix(&group_prefix(&[5; 16])).is_empty());
    }

    /// A secret tree in miniature: what OpenMLS rewrites after every message.
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    struct Secrets {
        context: Vec<u8>,
        ratchets: Vec<Option<Ratchet>>,
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    struct Ratchet {
        secret: Vec<u8>,
        generation: u32,
    }

    fn ratchet(fill: u8, generation: u32) -> Option<Ratchet> {
        Some(Ratchet {
            secret: vec![fill; 32],
            generation,
        })
    }
    impl Entity<CURRENT_VERSION> for Secrets {}
    impl traits::MessageSecrets<CURRENT_VERSION> for Secrets {}

    fn secrets(members: usize) -> Secrets {
        Secrets {
            context: vec![1; 100],
            ratchets: (0..members).map(|i| ratchet(i as u8, 0)).collect(),
        }
    }

    fn message_secrets(ws: &WorkingSet, group: &GroupId) -> Option<Secrets> {
        ws.message_secrets(group).unwrap()
    }

    #[test]
    fn large_values_are_chunked_and_a_change_writes_only_its_chunks() {
        let ws = WorkingSet::default();
        let group = GroupId::from_slice(&[3; 16]);
        let mut value = secrets(40);
        ws.write_message_secrets(&group, &value).unwrap();
        let first = ws.checkpoint();
        assert!(first.len() > 2, "{}", first.len());
        let top = first
            .iter()
            .filter(|(_, v)| v.as_ref().unwrap()[0] == FORMAT2_CHUNKED)
            .count();
        assert_eq!(top, 1);
        assert!(first.iter().all(|(k, _)| k.starts_with(&group_prefix(&[3; 16]))));
        assert_eq!(message_secrets(&ws, &group), Some(value.clone()));

        // One ratchet moves: one chunk is written.
        value.ratchets[7] = ratchet(0xaa, 1);
        ws.write_message_secrets(&group, &value).unwrap();
        let changes = ws.checkpoint();
        assert_eq!(changes.len(), 1);
        assert!(changes[0].1.as_ref().unwrap().len() < 64);
        assert_eq!(message_secrets(&ws, &group), Some(value.clone()));
        // Writing the same value again writes nothing.
        ws.write_message_secrets(&group, &value).unwrap();
        assert!(!ws.has_changes());

        // A fresh working set restored from the stored entries reads the same value.
        let fresh = WorkingSet::default();
        fresh.restore(
            ws.entries_with_prefix(&[])
                .into_iter()
                .map(|(k, v)| (k, Some(v)))
                .collect(),
        );
        assert_eq!(message_secrets(&fresh, &group), Some(value.clone()));

        // Fewer members: chunks no longer used are deleted; small again: stored whole.
        ws.write_message_secrets(&group, &secrets(35)).unwrap();
        let changes = ws.checkpoint();
        assert!(changes.iter().any(|(_, v)| v.is_none()));
        assert_eq!(message_secrets(&ws, &group), Some(secrets(35)));
        let small = Secrets {
            context: vec![2],
            ratchets: vec![None],
        };
        ws.write_message_secrets(&group, &small).unwrap();
        ws.checkpoint();
        assert_eq!(ws.len(), 1);
        assert_eq!(ws.entries_with_prefix(&[])[0].1[0], FORMAT2_WHOLE);
        assert_eq!(message_secrets(&ws, &group), Some(small));

        // Deleting a chunked value deletes its chunks.
        ws.write_message_secrets(&group, &value).unwrap();
        StorageProvider::<CURRENT_VERSION>::delete_message_secrets(&ws, &group).unwrap();
        assert!(ws.is_empty());
    }

    #[test]
    fn format_1_values_are_read_and_written_again_in_format_2() {
        let old = WorkingSet::default();
        old.write_json_only(true);
        let group = GroupId::from_slice(&[4; 16]);
        old.write_message_secrets(&group, &secrets(40)).unwrap();
        old.write_tree(&group, &Tree("t".into())).unwrap();
        old.queue_proposal(&group, &Ref(1), &Proposal("p1".into())).unwrap();
        old.queue_proposal(&group, &Ref(2), &Proposal("p2".into())).unwrap();
        let stored = old.checkpoint();
        assert!(stored.iter().all(|(_, v)| v.as_ref().unwrap()[0] == b'{'
            || v.as_ref().unwrap()[0] == b'['
            || v.as_ref().unwrap()[0] == b'"'));

        let ws = WorkingSet::default();
        ws.restore(stored);
        assert_eq!(message_secrets(&ws, &group), Some(secrets(40)));
        assert_eq!(tree(&ws, &group), Some(Tree("t".into())));
        let queued: Vec<(Ref, Proposal)> = ws.queued_proposals(&group).unwrap();
        assert_eq!(queued.len(), 2);
        assert!(!ws.has_changes()); // reading migrates nothing

        // Written again: format 2, in the next checkpoint.
        let mut value = secrets(40);
        value.ratchets[0] = None;
        ws.write_message_secrets(&group, &value).unwrap();
        ws.remove_proposal(&group, &Ref(1)).unwrap();
        ws.append_own_leaf_node(&group, &Tree("leaf".into())).unwrap();
        let changes = ws.checkpoint();
        let firsts: Vec<u8> = changes.iter().filter_map(|(_, v)| v.as_ref().map(|v| v[0])).collect();
        assert!(
            firsts.contains(&FORMAT2_CHUNKED) && firsts.contains(&FORMAT2_WHOLE),
            "{firsts:?}"
        );
        assert!(firsts.iter().all(|b| *b != b'{' && *b != b'['));
        assert_eq!(message_secrets(&ws, &group), Some(value));
        let queued: Vec<(Ref, Proposal)> = ws.queued_proposals(&group).unwrap();
        assert_eq!(queued, vec![(Ref(2), Proposal("p2".into()))]);
        let leaves: Vec<Tree> = ws.own_leaf_nodes(&group).unwrap();
        assert_eq!(leaves, vec![Tree("leaf".into())]);
        ws.append_own_leaf_node(&group, &Tree("second".into())).unwrap();
        let leaves: Vec<Tree> = ws.own_leaf_nodes(&group).unwrap();
        assert_eq!(leaves.len(), 2);
    }

    #[test]
    fn a_missing_chunk_is_a_storage_error() {
        let ws = WorkingSet::default();
        let group = GroupId::from_slice(&[5; 16]);
        ws.write_message_secrets(&group, &secrets(40)).unwrap();
        let changes = ws.checkpoint();
        let (chunk, _) = changes
            .iter()
            .find(|(_, v)| v.as_ref().unwrap()[0] != FORMAT2_CHUNKED)
            .unwrap();
        ws.restore(vec![(chunk.clone(), None)]);
        let err = ws.message_secrets::<GroupId, Secrets>(&group).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn a_corrupt_entry_is_a_storage_error() {
        let ws = WorkingSet::default();
        let group = GroupId::from_slice(&[1; 16]);
        ws.write_tree(&group, &Tree("t".into())).unwrap();
        let (key, _) = ws.checkpoint().remove(0);
        ws.restore(vec![(key, Some(b"{not json".to_vec()))]);
        let err = ws.tree::<GroupId, Tree>(&group).unwrap_err();
        assert!(err.to_string().starts_with("storage: "), "{err}");
        // A reference without its proposal is corrupt too.
        ws.queue_proposal(&group, &Ref(1), &Proposal("p".into())).unwrap();
        let proposal_key = ws
            .entries_with_prefix(&group_prefix(&[1; 16]))
            .into_iter()
            .map(|(k, _)| k)
            .find(|k| k.windows(15).any(|w| w == b"QueuedProposal\x00"))
            .unwrap();
        ws.restore(vec![(proposal_key, None)]);
        assert!(ws.queued_proposals::<GroupId, Ref, Proposal>(&group).is_err());
    }
}
