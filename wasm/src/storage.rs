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
//!
//! so every entry of one group shares the prefix [`group_prefix`], which makes a per-group
//! export, import or drop a prefix scan (QueuedProposal rows included).
//! Values are JSON (OpenMLS needs a self-describing format).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;

use openmls_traits::storage::{traits, StorageProvider, CURRENT_VERSION};
use serde::{de::DeserializeOwned, Serialize};

const GROUP_SCOPE: u8 = 0x01;
const GLOBAL_SCOPE: u8 = 0x02;
const SEPARATOR: u8 = 0x00;

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

fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StorageError> {
    serde_json::from_slice(bytes).map_err(|e| StorageError(e.to_string()))
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

/// The in-memory key/value state of one provider, with undo back to the last checkpoint.
#[derive(Default)]
pub struct WorkingSet {
    entries: RefCell<BTreeMap<Vec<u8>, Vec<u8>>>,
    /// Value each touched key had at the last checkpoint (`None`: absent).
    undo: RefCell<BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
    /// While an operation runs: value each key had when the operation began.
    journal: RefCell<Option<BTreeMap<Vec<u8>, Option<Vec<u8>>>>>,
    /// Open savepoints, innermost last: value each key had when each was taken.
    savepoints: RefCell<Vec<BTreeMap<Vec<u8>, Option<Vec<u8>>>>>,
}

fn record_first(
    log: &RefCell<Option<BTreeMap<Vec<u8>, Option<Vec<u8>>>>>,
    key: &[u8],
    current: &dyn Fn() -> Option<Vec<u8>>,
) {
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

    fn put_back(&self, log: BTreeMap<Vec<u8>, Option<Vec<u8>>>) {
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

    fn get_raw(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.entries.borrow().get(key).cloned()
    }

    fn keys_with_prefix(&self, prefix: &[u8]) -> Vec<Vec<u8>> {
        self.entries
            .borrow()
            .range(prefix.to_vec()..)
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

    // -- typed helpers used by the StorageProvider implementation --

    fn write<V: Serialize + ?Sized>(&self, key: Vec<u8>, value: &V) -> Result<(), StorageError> {
        self.put(key, to_json(value)?);
        Ok(())
    }

    fn read<V: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<V>, StorageError> {
        self.get_raw(key).map(|bytes| from_json(&bytes)).transpose()
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
        self.delete(&group_key(group_id, label, &())?);
        Ok(())
    }

    /// Append to a list stored as a JSON array of values.
    fn append<V: Serialize>(&self, key: Vec<u8>, item: &V) -> Result<(), StorageError> {
        let mut list: Vec<serde_json::Value> = self.read(&key)?.unwrap_or_default();
        list.push(serde_json::to_value(item).map_err(|e| StorageError(e.to_string()))?);
        self.write(key, &list)
    }

    fn read_list<V: DeserializeOwned>(&self, key: &[u8]) -> Result<Vec<V>, StorageError> {
        Ok(self.read(key)?.unwrap_or_default())
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
        self.write(global_key(SIGNATURE_KEY_PAIR, public_key)?, key_pair)
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
        let wanted = serde_json::to_value(proposal_ref).map_err(|e| StorageError(e.to_string()))?;
        let mut refs: Vec<serde_json::Value> = self.read_list(&refs_key)?;
        refs.retain(|r| *r != wanted);
        if refs.is_empty() {
            self.delete(&refs_key);
        } else {
            self.write(refs_key, &refs)?;
        }
        self.delete(&group_key(group_id, QUEUED_PROPOSAL, proposal_ref)?);
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
        self.delete(&global_key(SIGNATURE_KEY_PAIR, public_key)?);
        Ok(())
    }

    fn delete_encryption_key_pair<K: traits::EncryptionKey<CURRENT_VERSION>>(
        &self,
        public_key: &K,
    ) -> Result<(), Self::Error> {
        self.delete(&global_key(ENCRYPTION_KEY_PAIR, public_key)?);
        Ok(())
    }

    fn delete_encryption_epoch_key_pairs<G: traits::GroupId<CURRENT_VERSION>, E: traits::EpochKey<CURRENT_VERSION>>(
        &self,
        group_id: &G,
        epoch: &E,
        leaf_index: u32,
    ) -> Result<(), Self::Error> {
        self.delete(&group_key(group_id, EPOCH_KEY_PAIRS, &(epoch, leaf_index))?);
        Ok(())
    }

    fn delete_key_package<R: traits::HashReference<CURRENT_VERSION>>(&self, hash_ref: &R) -> Result<(), Self::Error> {
        self.delete(&global_key(KEY_PACKAGE, hash_ref)?);
        Ok(())
    }

    fn delete_psk<I: traits::PskId<CURRENT_VERSION>>(&self, psk_id: &I) -> Result<(), Self::Error> {
        self.delete(&global_key(PSK, psk_id)?);
        Ok(())
    }
}
