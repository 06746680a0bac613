//! The OpenMLS provider: [`Crypto`] (ciphersuite 0x0001) for crypto and randomness,
//! [`WorkingSet`] for storage.

use std::cell::RefCell;
use std::collections::HashMap;

use openmls::prelude::KeyPackage;
use openmls_traits::OpenMlsProvider;
use wasm_bindgen::prelude::*;

use crate::bytes::{decode_changes, encode_changes};
use crate::crypto::Crypto;
use crate::error::Result;
use crate::storage::{group_prefix, WorkingSet};

/// KeyPackages validated by `inspectKeyPackage` and not yet used, kept at most.
const VALIDATED_CAP: usize = 4096;

/// Crypto plus the key/value working set of one device.
#[wasm_bindgen]
#[derive(Default)]
pub struct Provider {
    crypto: Crypto,
    storage: WorkingSet,
    /// KeyPackages `inspectKeyPackage` validated (signature, ciphersuite, lifetime), keyed
    /// by their exact bytes, so that `addMembers` given the same bytes right after does not
    /// verify every signature a second time. Memory only, never persisted; an entry is
    /// taken out when used.
    validated: RefCell<HashMap<Vec<u8>, KeyPackage>>,
}

impl Provider {
    pub(crate) fn remember_validated(&self, bytes: &[u8], key_package: KeyPackage) {
        let mut validated = self.validated.borrow_mut();
        if validated.len() >= VALIDATED_CAP {
            validated.clear();
        }
        validated.insert(bytes.to_vec(), key_package);
    }

    pub(crate) fn take_validated(&self, bytes: &[u8]) -> Option<KeyPackage> {
        self.validated.borrow_mut().remove(bytes)
    }
}

impl OpenMlsProvider for Provider {
    type CryptoProvider = Crypto;
    type RandProvider = Crypto;
    type StorageProvider = WorkingSet;

    fn storage(&self) -> &WorkingSet {
        &self.storage
    }

    fn crypto(&self) -> &Crypto {
        &self.crypto
    }

    fn rand(&self) -> &Crypto {
        &self.crypto
    }
}

#[wasm_bindgen]
impl Provider {
    #[wasm_bindgen(constructor)]
    pub fn new() -> Provider {
        Provider::default()
    }

    /// Every entry written or deleted since the last checkpoint (a change list), and a new
    /// checkpoint. The caller persists it atomically with its own records.
    pub fn checkpoint(&self) -> Vec<u8> {
        encode_changes(&self.storage.checkpoint())
    }

    /// Undo every change since the last checkpoint.
    pub fn rollback(&self) {
        self.storage.rollback()
    }

    /// Mark the working set so that several calls can be undone together.
    pub fn savepoint(&self) {
        self.storage.begin_savepoint()
    }

    /// Undo every change since `savepoint()` and end it.
    #[wasm_bindgen(js_name = rollbackToSavepoint)]
    pub fn rollback_to_savepoint(&self) {
        self.storage.rollback_savepoint()
    }

    /// Keep the changes since `savepoint()` and end it.
    #[wasm_bindgen(js_name = releaseSavepoint)]
    pub fn release_savepoint(&self) {
        self.storage.release_savepoint()
    }

    /// Whether there are changes a checkpoint would return.
    #[wasm_bindgen(getter, js_name = hasChanges)]
    pub fn has_changes(&self) -> bool {
        self.storage.has_changes()
    }

    /// Load entries read back from storage (a change list); they are not reported by the
    /// next checkpoint.
    pub fn restore(&self, changes: &[u8]) -> Result<()> {
        self.storage.restore(decode_changes(changes)?);
        Ok(())
    }

    /// Write entries (a change list) as new changes, e.g. a snapshot being imported.
    #[wasm_bindgen(js_name = importEntries)]
    pub fn import_entries(&self, changes: &[u8]) -> Result<()> {
        self.storage.import(decode_changes(changes)?);
        Ok(())
    }

    /// Every entry of one group, as a change list (for snapshots).
    #[wasm_bindgen(js_name = groupEntries)]
    pub fn group_entries(&self, group_id: &[u8]) -> Vec<u8> {
        let entries: Vec<_> = self
            .storage
            .entries_with_prefix(&group_prefix(group_id))
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect();
        encode_changes(&entries)
    }

    /// Delete every entry of one group (reported by the next checkpoint).
    #[wasm_bindgen(js_name = dropGroup)]
    pub fn drop_group(&self, group_id: &[u8]) {
        self.storage.delete_prefix(&group_prefix(group_id))
    }

    /// The key prefix shared by every entry of one group.
    #[wasm_bindgen(js_name = groupPrefix)]
    pub fn group_prefix(group_id: &[u8]) -> Vec<u8> {
        group_prefix(group_id)
    }

    /// Number of entries in the working set.
    #[wasm_bindgen(getter, js_name = entryCount)]
    pub fn entry_count(&self) -> usize {
        self.storage.len()
    }
}
