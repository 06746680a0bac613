//! One MLS group. Every mutating call either succeeds, or undoes its own writes to the
//! working set and reloads the group from it, so a failure changes nothing.

use openmls::messages::group_info::GroupInfo;
use openmls::prelude::{
    BasicCredential, GroupId, KeyPackageIn, LeafNodeIndex, LeafNodeParameters, MlsGroup, MlsGroupCreateConfig,
    MlsGroupJoinConfig, MlsMessageBodyIn, MlsMessageIn, MlsMessageOut, ProcessedMessageContent, ProtocolMessage,
    ProtocolVersion, Sender, SenderRatchetConfiguration, StagedWelcome,
};
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::types::HashType;
use openmls_traits::OpenMlsProvider;
use tls_codec::{Deserialize as _, Serialize as _};
use wasm_bindgen::prelude::*;

use crate::bytes::{append_changes, decode_byte_list, encode_byte_list, split_input};
use crate::error::{code, mls_error, Error, Result};
use crate::identity::{Identity, CIPHERSUITE};
use crate::provider::Provider;

/// Past epochs whose message secrets are kept, so late application messages still decrypt.
const MAX_PAST_EPOCHS: usize = 3;
/// Sender ratchet: how far back out-of-order messages may arrive, and how far ahead.
const OUT_OF_ORDER_TOLERANCE: u32 = 64;
const MAXIMUM_FORWARD_DISTANCE: u32 = 10_000;
const GROUP_ID_LEN: usize = 16;
const MAX_EXPORT_LEN: usize = 1024;

/// Kinds in the first byte of `processMessage`'s result.
const KIND_APPLICATION: u8 = 1;
const KIND_COMMIT: u8 = 2;
const KIND_PROPOSAL: u8 = 3;
/// A message we sent ourselves, fanned back by the delivery service: nothing to apply.
const KIND_OWN: u8 = 4;
/// Flag bits in the second byte: this member is still in the group; the commit was an
/// external one (a new member's, `Sender::NewMemberCommit`).
const FLAG_ACTIVE: u8 = 1;
const FLAG_EXTERNAL: u8 = 2;
const NO_LEAF: u32 = u32::MAX;

fn ratchet() -> SenderRatchetConfiguration {
    SenderRatchetConfiguration::new(OUT_OF_ORDER_TOLERANCE, MAXIMUM_FORWARD_DISTANCE)
}

fn create_config() -> MlsGroupCreateConfig {
    MlsGroupCreateConfig::builder()
        .ciphersuite(CIPHERSUITE)
        .use_ratchet_tree_extension(true)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .sender_ratchet_configuration(ratchet())
        .build()
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .sender_ratchet_configuration(ratchet())
        .build()
}

fn parse_key_package(provider: &Provider, bytes: &[u8]) -> Result<openmls::prelude::KeyPackage> {
    let key_package: KeyPackageIn = match parse_message(bytes)? {
        MlsMessageBodyIn::KeyPackage(kp) => kp,
        _ => return Err(Error::new(code::WRONG_MESSAGE_TYPE, "expected a KeyPackage")),
    };
    key_package
        .validate(provider.crypto(), ProtocolVersion::Mls10)
        .map_err(|e| mls_error(code::KEY_PACKAGE, e))
}

/// Validate a KeyPackage (signature, ciphersuite, lifetime) and return a byte list
/// `[credential identity, signature public key]`.
///
/// The validated KeyPackage is remembered by the provider, so that an `addMembers` of the
/// same bytes does not verify it again.
#[wasm_bindgen(js_name = inspectKeyPackage)]
pub fn inspect_key_package(provider: &Provider, key_package: &[u8]) -> Result<Vec<u8>> {
    let bytes = key_package;
    let key_package = parse_key_package(provider, bytes)?;
    let leaf = key_package.leaf_node();
    let identity = BasicCredential::try_from(leaf.credential().clone())
        .map(|c| c.identity().to_vec())
        .map_err(|e| Error::new(code::KEY_PACKAGE, format!("not a basic credential: {e}")))?;
    let out = encode_byte_list(&[identity, leaf.signature_key().as_slice().to_vec()]);
    provider.remember_validated(bytes, key_package);
    Ok(out)
}

/// The group id and epoch a GroupInfo (TLS-serialized `MlsMessage`) claims, unverified: a
/// byte list `[group_id, epoch u64 BE]`, so the caller can check them (and bind them into
/// the commit it makes) before joining; `joinExternal` verifies the GroupInfo itself.
#[wasm_bindgen(js_name = inspectGroupInfo)]
pub fn inspect_group_info(group_info: &[u8]) -> Result<Vec<u8>> {
    match parse_message(group_info)? {
        MlsMessageBodyIn::GroupInfo(info) => Ok(encode_byte_list(&[
            info.group_id().as_slice().to_vec(),
            info.epoch().as_u64().to_be_bytes().to_vec(),
        ])),
        _ => Err(Error::new(code::WRONG_MESSAGE_TYPE, "expected a GroupInfo")),
    }
}

fn parse_message(bytes: &[u8]) -> Result<MlsMessageBodyIn> {
    let message = MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|e| Error::new(code::MALFORMED_MESSAGE, format!("not an MLS message: {e}")))?;
    Ok(message.extract())
}

fn serialize(message: MlsMessageOut) -> Result<Vec<u8>> {
    message
        .tls_serialize_detached()
        .map_err(|e| Error::new(code::LIBRARY, e))
}

/// Flag bit of the `...WithChanges` inputs: take a checkpoint first.
const CHECKPOINT_FIRST: u8 = 1;

fn checkpoint_first(provider: &Provider, input: &[u8]) {
    if input.first().is_some_and(|flags| flags & CHECKPOINT_FIRST != 0) {
        provider.storage().checkpoint();
    }
}

/// `u32 len || result || change list` of every change since the last checkpoint.
fn with_changes(provider: &Provider, result: Vec<u8>) -> Vec<u8> {
    let changes = provider.storage().changes();
    let size: usize = changes
        .iter()
        .map(|(k, v)| 8 + k.len() + v.as_ref().map_or(0, Vec::len))
        .sum();
    let mut out = Vec::with_capacity(4 + result.len() + size);
    out.extend_from_slice(&(result.len() as u32).to_be_bytes());
    out.extend_from_slice(&result);
    append_changes(&mut out, &changes);
    out
}

/// A loaded MLS group of the provider it was opened with.
#[wasm_bindgen]
pub struct Group {
    inner: MlsGroup,
    /// The GroupInfo of the epoch our pending commit makes (signed by us, ratchet tree and
    /// external_pub inside), for the delivery service to keep with the commit.
    staged_group_info: Option<Vec<u8>>,
}

fn group_info_bytes(group_info: Option<GroupInfo>) -> Result<Option<Vec<u8>>> {
    group_info.map(|info| serialize(MlsMessageOut::from(info))).transpose()
}

/// A group joined by an external commit, and that commit (TLS-serialized `MlsMessage`).
#[wasm_bindgen]
pub struct ExternalJoin {
    group: Option<Group>,
    commit: Vec<u8>,
}

#[wasm_bindgen]
impl ExternalJoin {
    #[wasm_bindgen(getter)]
    pub fn commit(&self) -> Vec<u8> {
        self.commit.clone()
    }

    /// The group (once: it moves out).
    #[wasm_bindgen(js_name = takeGroup)]
    pub fn take_group(&mut self) -> Result<Group> {
        self.group
            .take()
            .ok_or_else(|| Error::new(code::INVALID_INPUT, "the group was taken already"))
    }
}

impl Group {
    fn wrap(inner: MlsGroup) -> Group {
        Group {
            inner,
            staged_group_info: None,
        }
    }

    /// Run a mutating operation; on error undo its storage writes and reload the group.
    fn guarded<T>(&mut self, provider: &Provider, op: impl FnOnce(&mut MlsGroup) -> Result<T>) -> Result<T> {
        let result = provider.storage().atomically(|| op(&mut self.inner));
        if result.is_err() {
            if let Ok(Some(group)) = MlsGroup::load(provider.storage(), self.inner.group_id()) {
                self.inner = group;
            }
        }
        result
    }
}

#[wasm_bindgen]
impl Group {
    /// Create a group with the given 16-byte id, `identity` its only member.
    pub fn create(provider: &Provider, identity: &Identity, group_id: &[u8]) -> Result<Group> {
        if group_id.len() != GROUP_ID_LEN {
            return Err(Error::new(
                code::INVALID_INPUT,
                format!("group id must be {GROUP_ID_LEN} bytes, got {}", group_id.len()),
            ));
        }
        if MlsGroup::load(provider.storage(), &GroupId::from_slice(group_id))
            .ok()
            .flatten()
            .is_some()
        {
            return Err(Error::new(code::INVALID_INPUT, "a group with this id already exists"));
        }
        provider
            .storage()
            .atomically(|| {
                MlsGroup::new_with_group_id(
                    provider,
                    &identity.signer,
                    &create_config(),
                    GroupId::from_slice(group_id),
                    identity.credential.clone(),
                )
            })
            .map(Group::wrap)
            .map_err(|e| mls_error(code::CREATE, e))
    }

    /// Join from a Welcome (TLS-serialized `MlsMessage`) made for one of our KeyPackages.
    pub fn join(provider: &Provider, welcome: &[u8]) -> Result<Group> {
        let welcome = match parse_message(welcome)? {
            MlsMessageBodyIn::Welcome(welcome) => welcome,
            _ => return Err(Error::new(code::WRONG_MESSAGE_TYPE, "expected a Welcome")),
        };
        // Staging consumes the KeyPackage's private key: a failed join must put it back.
        provider
            .storage()
            .atomically(|| {
                StagedWelcome::new_from_welcome(provider, &join_config(), welcome, None)
                    .map_err(|e| mls_error(code::JOIN, e))
                    .and_then(|staged| staged.into_group(provider).map_err(|e| mls_error(code::JOIN, e)))
            })
            .map(Group::wrap)
    }

    /// Load a group from the provider's working set; `undefined` if it has none.
    pub fn load(provider: &Provider, group_id: &[u8]) -> Result<Option<Group>> {
        MlsGroup::load(provider.storage(), &GroupId::from_slice(group_id))
            .map(|group| group.map(Group::wrap))
            .map_err(|e| Error::new(code::STORAGE, e))
    }

    /// Stage a commit adding the members whose KeyPackages are given (a byte list).
    /// Returns a byte list `[commit, welcome]`; the commit stays pending until
    /// `mergePendingCommit` or `clearPendingCommit`.
    #[wasm_bindgen(js_name = addMembers)]
    pub fn add_members(
        &mut self,
        provider: &Provider,
        identity: &Identity,
        key_packages: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>> {
        // KeyPackages inspectKeyPackage just validated are not verified a second time.
        let validated = decode_byte_list(key_packages)?
            .iter()
            .map(|raw| match provider.take_validated(raw) {
                Some(key_package) => Ok(key_package),
                None => parse_key_package(provider, raw),
            })
            .collect::<Result<Vec<_>>>()?;
        if validated.is_empty() {
            return Err(Error::new(code::INVALID_INPUT, "no KeyPackages given"));
        }
        self.guarded(provider, |group| {
            group.set_aad(aad.to_vec());
            let (commit, welcome, group_info) = group
                .add_members(provider, &identity.signer, &validated)
                .map_err(|e| mls_error(code::COMMIT, e))?;
            Ok((
                encode_byte_list(&[serialize(commit)?, serialize(welcome)?]),
                group_info_bytes(group_info)?,
            ))
        })
        .map(|(out, info)| {
            self.staged_group_info = info;
            out
        })
    }

    /// Stage a commit removing the members at `leaf_indexes`. Returns the commit.
    #[wasm_bindgen(js_name = removeMembers)]
    pub fn remove_members(
        &mut self,
        provider: &Provider,
        identity: &Identity,
        leaf_indexes: &[u32],
        aad: &[u8],
    ) -> Result<Vec<u8>> {
        let members: Vec<LeafNodeIndex> = leaf_indexes.iter().map(|i| LeafNodeIndex::new(*i)).collect();
        for leaf in &members {
            if self.inner.member(*leaf).is_none() {
                return Err(Error::new(
                    code::INVALID_INPUT,
                    format!("no member at leaf {}", leaf.u32()),
                ));
            }
        }
        self.guarded(provider, |group| {
            group.set_aad(aad.to_vec());
            let (commit, _, group_info) = group
                .remove_members(provider, &identity.signer, &members)
                .map_err(|e| mls_error(code::COMMIT, e))?;
            Ok((serialize(commit)?, group_info_bytes(group_info)?))
        })
        .map(|(out, info)| {
            self.staged_group_info = info;
            out
        })
    }

    /// Stage a commit that refreshes our own leaf (post-compromise security).
    #[wasm_bindgen(js_name = selfUpdate)]
    pub fn self_update(&mut self, provider: &Provider, identity: &Identity, aad: &[u8]) -> Result<Vec<u8>> {
        self.guarded(provider, |group| {
            group.set_aad(aad.to_vec());
            let bundle = group
                .self_update(provider, &identity.signer, LeafNodeParameters::default())
                .map_err(|e| mls_error(code::COMMIT, e))?;
            let info = group_info_bytes(bundle.group_info().cloned())?;
            Ok((serialize(bundle.into_commit())?, info))
        })
        .map(|(out, info)| {
            self.staged_group_info = info;
            out
        })
    }

    /// Apply our pending commit (the delivery service accepted it).
    #[wasm_bindgen(js_name = mergePendingCommit)]
    pub fn merge_pending_commit(&mut self, provider: &Provider) -> Result<()> {
        if self.inner.pending_commit().is_none() {
            return Err(Error::new(code::NO_PENDING_COMMIT, "no pending commit to merge"));
        }
        self.guarded(provider, |group| {
            group
                .merge_pending_commit(provider)
                .map_err(|e| mls_error(code::MERGE, e))
        })
    }

    /// Drop our pending commit (the delivery service took another one for this epoch).
    #[wasm_bindgen(js_name = clearPendingCommit)]
    pub fn clear_pending_commit(&mut self, provider: &Provider) -> Result<()> {
        if self.inner.pending_commit().is_none() {
            return Err(Error::new(code::NO_PENDING_COMMIT, "no pending commit to discard"));
        }
        self.guarded(provider, |group| {
            group
                .clear_pending_commit(provider.storage())
                .map_err(|e| Error::new(code::STORAGE, e))
        })
    }

    #[wasm_bindgen(getter, js_name = hasPendingCommit)]
    pub fn has_pending_commit(&self) -> bool {
        self.inner.pending_commit().is_some()
    }

    /// The GroupInfo of the epoch the last commit staged here makes (empty if none was
    /// staged since this group was loaded): what a delivery service keeps with the commit.
    #[wasm_bindgen(getter, js_name = stagedGroupInfo)]
    pub fn staged_group_info(&self) -> Vec<u8> {
        self.staged_group_info.clone().unwrap_or_default()
    }

    /// A GroupInfo of the current epoch, signed by this member, with the ratchet tree and
    /// external_pub inside (TLS-serialized `MlsMessage`): enough to join by external commit.
    #[wasm_bindgen(js_name = exportGroupInfo)]
    pub fn export_group_info(&self, provider: &Provider, identity: &Identity) -> Result<Vec<u8>> {
        let message = self
            .inner
            .export_group_info(provider.crypto(), &identity.signer, true)
            .map_err(|e| Error::new(code::EXPORT, format!("{e} ({e:?})")))?;
        serialize(message)
    }

    /// Join the group a GroupInfo describes by an external commit (RFC 9420 §12.4.3.2): the
    /// GroupInfo's signature and tree are verified, and a leaf with our own signature key
    /// (a stale copy of this device) is removed in the same commit (resync). OpenMLS merges
    /// an external commit at once; the caller keeps the group only if the delivery service
    /// takes the commit. `aad` is bound into the commit.
    #[wasm_bindgen(js_name = joinExternal)]
    pub fn join_external(
        provider: &Provider,
        identity: &Identity,
        group_info: &[u8],
        aad: &[u8],
    ) -> Result<ExternalJoin> {
        let info = match parse_message(group_info)? {
            MlsMessageBodyIn::GroupInfo(info) => info,
            _ => return Err(Error::new(code::WRONG_MESSAGE_TYPE, "expected a GroupInfo")),
        };
        provider.storage().atomically(|| {
            let failed = |e: &dyn std::fmt::Display| Error::new(code::JOIN, format!("external commit: {e}"));
            let (inner, bundle) = MlsGroup::external_commit_builder()
                .with_config(join_config())
                .with_aad(aad.to_vec())
                .build_group(provider, info, identity.credential.clone())
                .map_err(|e| failed(&e))?
                .leaf_node_parameters(LeafNodeParameters::default())
                .load_psks(provider.storage())
                .map_err(|e| failed(&e))?
                .build(provider.rand(), provider.crypto(), &identity.signer, |_| true)
                .map_err(|e| failed(&e))?
                .finalize(provider)
                .map_err(|e| failed(&e))?;
            let info = group_info_bytes(bundle.group_info().cloned())?;
            let commit = serialize(bundle.into_commit())?;
            let mut group = Group::wrap(inner);
            group.staged_group_info = info;
            Ok(ExternalJoin {
                group: Some(group),
                commit,
            })
        })
    }

    /// Encrypt an application message. Returns the TLS-serialized `MlsMessage`.
    #[wasm_bindgen(js_name = createMessage)]
    pub fn create_message(
        &mut self,
        provider: &Provider,
        identity: &Identity,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>> {
        self.guarded(provider, |group| {
            group.set_aad(aad.to_vec());
            let message = group
                .create_message(provider, &identity.signer, plaintext)
                .map_err(|e| mls_error(code::SEND, e))?;
            serialize(message)
        })
    }

    /// [`Self::create_message`] and the working set's changes, in one call (from Python, every
    /// call is a crossing: this makes a sent message one).
    ///
    /// `input`: `u8 flags || u32 aad_len || aad || plaintext`; flags bit 0 (`CHECKPOINT_FIRST`)
    /// takes a checkpoint before anything else (the caller has stored the changes it was last
    /// given). Returns `u32 message_len || message || change list`: every change since the
    /// last checkpoint, this message's included, without taking a checkpoint.
    #[wasm_bindgen(js_name = createMessageWithChanges)]
    pub fn create_message_with_changes(
        &mut self,
        provider: &Provider,
        identity: &Identity,
        input: &[u8],
    ) -> Result<Vec<u8>> {
        checkpoint_first(provider, input);
        let (_, fields) = split_input(input, 1)?;
        let (aad, plaintext) = (fields[0], fields[1]);
        let message = self.create_message(provider, identity, plaintext, aad)?;
        Ok(with_changes(provider, message))
    }

    /// [`Self::process_message`] and the working set's changes, in one call.
    ///
    /// `input`: `u8 flags || u32 message_len || message || u32 aad_len || expected_aad ||
    /// plaintext_sha256` (empty or 32 bytes), flags as for `createMessageWithChanges`.
    /// Returns `u32 result_len || processed result || change list`, as there.
    #[wasm_bindgen(js_name = processMessageWithChanges)]
    pub fn process_message_with_changes(&mut self, provider: &Provider, input: &[u8]) -> Result<Vec<u8>> {
        checkpoint_first(provider, input);
        let (_, fields) = split_input(input, 2)?;
        let result = self.process_message(provider, fields[0], fields[1], fields[2])?;
        Ok(with_changes(provider, result))
    }

    /// Process an inbound application, commit or proposal message (commits are merged).
    ///
    /// If `expected_aad` is not empty, a message whose authenticated data differs is
    /// rejected (`aad_mismatch`); if `plaintext_sha256` is not empty, an application message
    /// whose plaintext does not hash to it is rejected (`hash_mismatch`). Either way the
    /// message's effects (ratchet step, commit) are undone.
    ///
    /// Result: `kind u8 || flags u8 || sender_leaf u32 || epoch u64 || plaintext`, where kind is
    /// 1 application, 2 commit, 3 proposal, 4 own message echoed back; flags bit 0 set while we are still a member;
    /// sender_leaf is 0xFFFFFFFF for non-member senders; epoch is the group's epoch after.
    #[wasm_bindgen(js_name = processMessage)]
    pub fn process_message(
        &mut self,
        provider: &Provider,
        message: &[u8],
        expected_aad: &[u8],
        plaintext_sha256: &[u8],
    ) -> Result<Vec<u8>> {
        let protocol: ProtocolMessage = match parse_message(message)? {
            MlsMessageBodyIn::PrivateMessage(m) => m.into(),
            MlsMessageBodyIn::PublicMessage(m) => m.into(),
            _ => {
                return Err(Error::new(
                    code::WRONG_MESSAGE_TYPE,
                    "expected a group message (application, commit or proposal)",
                ))
            }
        };
        self.guarded(provider, |group| {
            let processed = group
                .process_message(provider, protocol)
                .map_err(|e| mls_error(code::PROCESS, e))?;
            if !expected_aad.is_empty() && processed.aad() != expected_aad {
                return Err(Error::new(
                    code::AAD_MISMATCH,
                    "the envelope's header does not match the data its sender authenticated",
                ));
            }
            let sender_leaf = match processed.sender() {
                Sender::Member(leaf) => leaf.u32(),
                _ => NO_LEAF,
            };
            let external = matches!(processed.sender(), Sender::NewMemberCommit);
            let (kind, body) = match processed.into_content() {
                ProcessedMessageContent::ApplicationMessage(app) => {
                    let plaintext = app.into_bytes();
                    if !plaintext_sha256.is_empty() {
                        let digest = provider
                            .crypto()
                            .hash(HashType::Sha2_256, &plaintext)
                            .map_err(|e| Error::new(code::LIBRARY, format!("{e:?}")))?;
                        if digest != plaintext_sha256 {
                            return Err(Error::new(
                                code::HASH_MISMATCH,
                                "the decrypted plaintext does not match the envelope's content hash",
                            ));
                        }
                    }
                    (KIND_APPLICATION, plaintext)
                }
                ProcessedMessageContent::StagedCommitMessage(staged) => {
                    group
                        .merge_staged_commit(provider, *staged)
                        .map_err(|e| mls_error(code::MERGE, e))?;
                    (KIND_COMMIT, Vec::new())
                }
                ProcessedMessageContent::ProposalMessage(proposal) => {
                    group
                        .store_pending_proposal(provider.storage(), *proposal)
                        .map_err(|e| Error::new(code::STORAGE, e))?;
                    (KIND_PROPOSAL, Vec::new())
                }
                ProcessedMessageContent::ExternalJoinProposalMessage(_) => (KIND_PROPOSAL, Vec::new()),
                ProcessedMessageContent::OwnPendingCommit | ProcessedMessageContent::OwnPrivateMessage => {
                    (KIND_OWN, Vec::new())
                }
            };
            let mut out = Vec::with_capacity(14 + body.len());
            out.push(kind);
            let flags = if group.is_active() { FLAG_ACTIVE } else { 0 } | if external { FLAG_EXTERNAL } else { 0 };
            out.push(flags);
            out.extend_from_slice(&sender_leaf.to_be_bytes());
            out.extend_from_slice(&group.epoch().as_u64().to_be_bytes());
            out.extend_from_slice(&body);
            Ok(out)
        })
    }

    /// RFC 9420 §8.5 exporter secret of the current epoch; `length` in 1..=1024.
    #[wasm_bindgen(js_name = exportSecret)]
    pub fn export_secret(&self, provider: &Provider, label: &str, context: &[u8], length: usize) -> Result<Vec<u8>> {
        if length == 0 || length > MAX_EXPORT_LEN {
            return Err(Error::new(
                code::INVALID_INPUT,
                format!("export length must be 1..={MAX_EXPORT_LEN}, got {length}"),
            ));
        }
        self.inner
            .export_secret(provider.crypto(), label, context, length)
            .map_err(|e| mls_error(code::EXPORT, e))
    }

    #[wasm_bindgen(getter)]
    pub fn epoch(&self) -> u64 {
        self.inner.epoch().as_u64()
    }

    #[wasm_bindgen(getter, js_name = groupId)]
    pub fn group_id(&self) -> Vec<u8> {
        self.inner.group_id().as_slice().to_vec()
    }

    #[wasm_bindgen(getter, js_name = ownLeafIndex)]
    pub fn own_leaf_index(&self) -> u32 {
        self.inner.own_leaf_index().u32()
    }

    #[wasm_bindgen(getter, js_name = isActive)]
    pub fn is_active(&self) -> bool {
        self.inner.is_active()
    }

    /// Members as a byte list of triples: `leaf_index (u32 BE)`, credential identity,
    /// signature public key.
    pub fn members(&self) -> Vec<u8> {
        let mut items: Vec<Vec<u8>> = Vec::new();
        for member in self.inner.members() {
            let identity = BasicCredential::try_from(member.credential)
                .map(|c| c.identity().to_vec())
                .unwrap_or_default();
            items.push(member.index.u32().to_be_bytes().to_vec());
            items.push(identity);
            items.push(member.signature_key);
        }
        encode_byte_list(&items)
    }
}

#[cfg(test)]
mod tests {
    //! Whole flows through the exported API, natively: what JavaScript would see, codes
    //! included (the conversion to a JS `Error` is the only step left out).

    use super::*;
    use crate::bytes::decode_changes;
    use crate::error::Error;
    use crate::storage::group_prefix;

    const GROUP: [u8; 16] = [7; 16];

    struct Device {
        provider: Provider,
        identity: Identity,
    }

    fn device(name: &[u8]) -> Device {
        let provider = Provider::default();
        let identity = Identity::create(&provider, name).unwrap();
        Device { provider, identity }
    }

    fn key_package(d: &Device) -> Vec<u8> {
        d.identity.key_package(&d.provider).unwrap()
    }

    fn sha256(data: &[u8]) -> Vec<u8> {
        Provider::default().crypto().hash(HashType::Sha2_256, data).unwrap()
    }

    fn code<T>(result: Result<T>) -> &'static str {
        match result {
            Ok(_) => "ok",
            Err(Error { code, .. }) => code,
        }
    }

    /// Processed result: (kind, active, sender leaf, epoch, plaintext).
    fn parse(out: &[u8]) -> (u8, bool, u32, u64, Vec<u8>) {
        (
            out[0],
            out[1] & FLAG_ACTIVE != 0,
            u32::from_be_bytes(out[2..6].try_into().unwrap()),
            u64::from_be_bytes(out[6..14].try_into().unwrap()),
            out[14..].to_vec(),
        )
    }

    /// Alice creates the group and adds Bob; both are at epoch 1.
    fn alice_and_bob() -> (Device, Group, Device, Group) {
        let alice = device(b"alice");
        let bob = device(b"bob");
        let mut group = Group::create(&alice.provider, &alice.identity, &GROUP).unwrap();
        let out = group
            .add_members(
                &alice.provider,
                &alice.identity,
                &encode_byte_list(&[key_package(&bob)]),
                b"",
            )
            .unwrap();
        let [_commit, welcome]: [Vec<u8>; 2] = decode_byte_list(&out).unwrap().try_into().unwrap();
        group.merge_pending_commit(&alice.provider).unwrap();
        let bob_group = Group::join(&bob.provider, &welcome).unwrap();
        assert_eq!((group.epoch(), bob_group.epoch()), (1, 1));
        (alice, group, bob, bob_group)
    }

    #[test]
    fn messages_round_trip_with_header_and_hash_checks() {
        let (alice, mut group, bob, mut bob_group) = alice_and_bob();
        let message = group
            .create_message(&alice.provider, &alice.identity, b"hello", b"header")
            .unwrap();
        bob.provider.checkpoint();

        // A wrong expected header or plaintext hash rejects the message and undoes its ratchet
        // step, so that it still decrypts afterwards.
        // The sender's own message, echoed back, is reported as such.
        let own = group.process_message(&alice.provider, &message, b"", b"").unwrap();
        assert_eq!(own[0], KIND_OWN);
        assert_eq!(
            code(bob_group.process_message(&bob.provider, &message, b"other", b"")),
            code::AAD_MISMATCH
        );
        assert!(!bob.provider.has_changes());
        assert_eq!(
            code(bob_group.process_message(&bob.provider, &message, b"", &sha256(b"hullo"))),
            code::HASH_MISMATCH
        );
        assert!(!bob.provider.has_changes());

        let out = bob_group
            .process_message(&bob.provider, &message, b"header", &sha256(b"hello"))
            .unwrap();
        assert_eq!(parse(&out), (KIND_APPLICATION, true, 0, 1, b"hello".to_vec()));
        // The same message again: its key is used up.
        assert_eq!(
            code(bob_group.process_message(&bob.provider, &message, b"", b"")),
            code::PROCESS
        );
    }

    #[test]
    fn bad_bytes_are_refused_before_openmls_sees_them() {
        let (alice, mut group, bob, mut bob_group) = alice_and_bob();
        assert_eq!(
            code(bob_group.process_message(&bob.provider, b"\x00\x01junk", b"", b"")),
            code::MALFORMED_MESSAGE
        );
        let key_package = key_package(&bob);
        assert_eq!(
            code(bob_group.process_message(&bob.provider, &key_package, b"", b"")),
            code::WRONG_MESSAGE_TYPE
        );
        assert_eq!(code(Group::join(&bob.provider, &key_package)), code::WRONG_MESSAGE_TYPE);
        let message = group
            .create_message(&alice.provider, &alice.identity, b"m", b"")
            .unwrap();
        assert_eq!(
            code(inspect_key_package(&bob.provider, &message)),
            code::WRONG_MESSAGE_TYPE
        );
        assert_eq!(
            code(group.add_members(&alice.provider, &alice.identity, b"", b"")),
            code::INVALID_INPUT
        );
        assert_eq!(
            code(group.add_members(&alice.provider, &alice.identity, b"\x00\x00\x00\x09ab", b"")),
            code::INVALID_INPUT
        );
        assert_eq!(
            code(group.remove_members(&alice.provider, &alice.identity, &[5], b"")),
            code::INVALID_INPUT
        );
        assert_eq!(
            code(group.export_secret(&alice.provider, "l", b"", 0)),
            code::INVALID_INPUT
        );
        assert_eq!(
            code(group.export_secret(&alice.provider, "l", b"", 1025)),
            code::INVALID_INPUT
        );
        assert_eq!(
            code(Group::create(&alice.provider, &alice.identity, &[1; 15])),
            code::INVALID_INPUT
        );
        assert_eq!(
            code(Group::create(&alice.provider, &alice.identity, &GROUP)),
            code::INVALID_INPUT
        );
        assert_eq!(
            group.export_secret(&alice.provider, "l", b"c", 32).unwrap(),
            bob_group.export_secret(&bob.provider, "l", b"c", 32).unwrap()
        );
    }

    #[test]
    fn a_pending_commit_blocks_other_commits_until_merged_or_cleared() {
        let (alice, mut group, _bob, _bob_group) = alice_and_bob();
        let carol = device(b"carol");
        group.self_update(&alice.provider, &alice.identity, b"").unwrap();
        assert!(group.has_pending_commit());
        let kp = encode_byte_list(&[key_package(&carol)]);
        assert_eq!(
            code(group.add_members(&alice.provider, &alice.identity, &kp, b"")),
            code::PENDING_COMMIT
        );
        assert_eq!(
            code(group.remove_members(&alice.provider, &alice.identity, &[1], b"")),
            code::PENDING_COMMIT
        );
        assert_eq!(
            code(group.self_update(&alice.provider, &alice.identity, b"")),
            code::PENDING_COMMIT
        );
        // Sending is still allowed: the pending commit is not applied yet.
        group
            .create_message(&alice.provider, &alice.identity, b"m", b"")
            .unwrap();

        group.clear_pending_commit(&alice.provider).unwrap();
        assert_eq!(
            code(group.clear_pending_commit(&alice.provider)),
            code::NO_PENDING_COMMIT
        );
        assert_eq!(
            code(group.merge_pending_commit(&alice.provider)),
            code::NO_PENDING_COMMIT
        );
        assert_eq!(group.epoch(), 1);
        group.add_members(&alice.provider, &alice.identity, &kp, b"").unwrap();
        group.merge_pending_commit(&alice.provider).unwrap();
        assert_eq!(group.epoch(), 2);
    }

    #[test]
    fn commits_out_of_order_are_wrong_epoch() {
        let (alice, mut group, bob, mut bob_group) = alice_and_bob();
        let first = group.self_update(&alice.provider, &alice.identity, b"").unwrap();
        group.merge_pending_commit(&alice.provider).unwrap();
        let second = group.self_update(&alice.provider, &alice.identity, b"").unwrap();
        group.merge_pending_commit(&alice.provider).unwrap();

        assert_eq!(
            code(bob_group.process_message(&bob.provider, &second, b"", b"")),
            code::WRONG_EPOCH
        );
        let out = bob_group.process_message(&bob.provider, &first, b"", b"").unwrap();
        assert_eq!(parse(&out), (KIND_COMMIT, true, 0, 2, vec![]));
        assert_eq!(
            code(bob_group.process_message(&bob.provider, &first, b"", b"")),
            code::WRONG_EPOCH
        );
        bob_group.process_message(&bob.provider, &second, b"", b"").unwrap();
        assert_eq!(bob_group.epoch(), 3);
    }

    #[test]
    fn a_removed_member_is_not_a_member() {
        let (alice, mut group, bob, mut bob_group) = alice_and_bob();
        let commit = group
            .remove_members(&alice.provider, &alice.identity, &[1], b"")
            .unwrap();
        group.merge_pending_commit(&alice.provider).unwrap();
        let out = bob_group.process_message(&bob.provider, &commit, b"", b"").unwrap();
        assert_eq!(parse(&out), (KIND_COMMIT, false, 0, 2, vec![]));
        assert!(!bob_group.is_active());
        assert_eq!(
            code(bob_group.create_message(&bob.provider, &bob.identity, b"m", b"")),
            code::NOT_MEMBER
        );
        assert_eq!(
            code(bob_group.self_update(&bob.provider, &bob.identity, b"")),
            code::NOT_MEMBER
        );
        let later = group
            .create_message(&alice.provider, &alice.identity, b"m", b"")
            .unwrap();
        assert_eq!(
            code(bob_group.process_message(&bob.provider, &later, b"", b"")),
            code::NOT_MEMBER
        );
    }

    #[test]
    fn a_commit_clears_the_proposal_queue_proposals_included() {
        let (alice, mut group, bob, mut bob_group) = alice_and_bob();
        let (proposal, _) = bob_group
            .inner
            .propose_self_update(&bob.provider, &bob.identity.signer, LeafNodeParameters::default())
            .unwrap();
        let proposal = serialize(proposal).unwrap();
        let out = group.process_message(&alice.provider, &proposal, b"", b"").unwrap();
        assert_eq!(parse(&out).0, KIND_PROPOSAL);

        let is_queue_key = |key: &[u8]| {
            key.starts_with(&group_prefix(&GROUP))
                && (key.windows(15).any(|w| w == b"QueuedProposal\x00")
                    || key.windows(18).any(|w| w == b"ProposalQueueRefs\x00"))
        };
        let queue_keys = |provider: &Provider| {
            let entries = provider.storage().entries_with_prefix(&group_prefix(&GROUP));
            entries.iter().filter(|(key, _)| is_queue_key(key)).count()
        };
        // The proposal (in chunks: it is large) and the list of references.
        let queued = queue_keys(&alice.provider);
        assert!(queued >= 2, "{queued}");
        alice.provider.checkpoint();

        let commit = group.self_update(&alice.provider, &alice.identity, b"").unwrap();
        group.merge_pending_commit(&alice.provider).unwrap();
        assert_eq!(queue_keys(&alice.provider), 0);
        let changes = decode_changes(&alice.provider.checkpoint()).unwrap();
        let deleted: Vec<_> = changes
            .iter()
            .filter(|(key, value)| value.is_none() && is_queue_key(key))
            .collect();
        assert_eq!(deleted.len(), queued);

        bob_group.process_message(&bob.provider, &commit, b"", b"").unwrap();
        assert_eq!(bob_group.epoch(), 2);
    }

    /// `u8 flags || (u32 len || field) * .. || last`.
    fn input(flags: u8, fields: &[&[u8]]) -> Vec<u8> {
        let mut out = vec![flags];
        for field in &fields[..fields.len() - 1] {
            out.extend_from_slice(&(field.len() as u32).to_be_bytes());
            out.extend_from_slice(field);
        }
        out.extend_from_slice(fields[fields.len() - 1]);
        out
    }

    /// `u32 len || result || change list` as (result, changes).
    fn split_result(out: &[u8]) -> (Vec<u8>, Vec<crate::storage::Change>) {
        let len = u32::from_be_bytes(out[..4].try_into().unwrap()) as usize;
        (out[4..4 + len].to_vec(), decode_changes(&out[4 + len..]).unwrap())
    }

    #[test]
    fn messages_with_their_changes_in_one_call() {
        let (alice, mut group, bob, mut bob_group) = alice_and_bob();
        alice.provider.checkpoint();
        bob.provider.checkpoint();
        let sha = sha256(b"hello");
        let mut sent = Vec::new();
        for round in 0..3 {
            // Without the flag the changes add up, as a checkpoint would report them.
            let out = group
                .create_message_with_changes(&alice.provider, &alice.identity, &input(0, &[b"hdr", b"hello"]))
                .unwrap();
            let (message, changes) = split_result(&out);
            assert!(!changes.is_empty());
            assert_eq!(changes, alice.provider.storage().changes());
            sent.push(message);
            let flags = if round == 0 { 0 } else { 1 };
            let out = bob_group
                .process_message_with_changes(&bob.provider, &input(flags, &[&sent[round], b"hdr", &sha]))
                .unwrap();
            let (result, changes) = split_result(&out);
            assert_eq!(parse(&result), (KIND_APPLICATION, true, 0, 1, b"hello".to_vec()));
            assert_eq!(changes, bob.provider.storage().changes());
        }
        // The flag takes the checkpoint first: the report holds this call's changes only.
        let before = alice.provider.storage().changes();
        let out = group
            .create_message_with_changes(&alice.provider, &alice.identity, &input(1, &[b"", b"x"]))
            .unwrap();
        let (_, changes) = split_result(&out);
        assert_eq!(changes.len(), 1);
        assert!(before.len() >= changes.len());
        // A refused message changes nothing, reports nothing, and can still be read.
        let again = group
            .create_message_with_changes(&alice.provider, &alice.identity, &input(1, &[b"h", b"y"]))
            .unwrap();
        let (message, _) = split_result(&again);
        bob.provider.checkpoint();
        assert_eq!(
            code(bob_group.process_message_with_changes(&bob.provider, &input(0, &[&message, b"other", b""]))),
            code::AAD_MISMATCH
        );
        assert!(bob.provider.storage().changes().is_empty());
        assert_eq!(
            code(bob_group.process_message_with_changes(&bob.provider, b"\x00\x00")),
            code::INVALID_INPUT
        );
        let out = bob_group
            .process_message_with_changes(&bob.provider, &input(0, &[&message, b"h", b""]))
            .unwrap();
        assert_eq!(parse(&split_result(&out).0).4, b"y");
    }

    /// Every entry of a provider, as stored.
    fn stored(provider: &Provider) -> Vec<(Vec<u8>, Vec<u8>)> {
        provider.storage().entries_with_prefix(&[])
    }

    fn restored(provider: &Provider) -> Provider {
        let fresh = Provider::default();
        let entries: Vec<_> = stored(provider).into_iter().map(|(k, v)| (k, Some(v))).collect();
        fresh.restore(&crate::bytes::encode_changes(&entries)).unwrap();
        fresh
    }

    fn is_json(value: &[u8]) -> bool {
        serde_json::from_slice::<serde_json::Value>(value).is_ok()
    }

    #[test]
    fn a_group_stored_in_format_1_carries_on_in_format_2() {
        // Two devices whose every value is JSON, as before format 2.
        let alice = device(b"alice");
        let bob = device(b"bob");
        alice.provider.storage().write_json_only(true);
        bob.provider.storage().write_json_only(true);
        let mut group = Group::create(&alice.provider, &alice.identity, &GROUP).unwrap();
        let kp = encode_byte_list(&[key_package(&bob)]);
        let out = group.add_members(&alice.provider, &alice.identity, &kp, b"").unwrap();
        let [_, welcome]: [Vec<u8>; 2] = decode_byte_list(&out).unwrap().try_into().unwrap();
        group.merge_pending_commit(&alice.provider).unwrap();
        let mut bob_group = Group::join(&bob.provider, &welcome).unwrap();
        for _ in 0..3 {
            let m = group
                .create_message(&alice.provider, &alice.identity, b"old", b"")
                .unwrap();
            bob_group.process_message(&bob.provider, &m, b"", b"").unwrap();
        }
        assert!(stored(&alice.provider).iter().all(|(_, v)| is_json(v)));

        // Restarted by this version: everything reads, and what is written is format 2.
        let (alice2, bob2) = (restored(&alice.provider), restored(&bob.provider));
        let alice_id = Identity::load(&alice2, b"alice", &alice.identity.public_key()).unwrap();
        let bob_id = Identity::load(&bob2, b"bob", &bob.identity.public_key()).unwrap();
        let mut group = Group::load(&alice2, &GROUP).unwrap().unwrap();
        let mut bob_group = Group::load(&bob2, &GROUP).unwrap().unwrap();
        let m = group.create_message(&alice2, &alice_id, b"new", b"").unwrap();
        let out = bob_group.process_message(&bob2, &m, b"", b"").unwrap();
        assert_eq!(parse(&out).4, b"new");
        for provider in [&alice2, &bob2] {
            let changes = decode_changes(&provider.checkpoint()).unwrap();
            assert!(!changes.is_empty());
            assert!(changes.iter().all(|(_, v)| v.as_ref().is_none_or(|v| !is_json(v))));
        }
        // A commit writes most of the group's values again, in format 2. Values OpenMLS
        // never writes again (the join config) stay as they are.
        let commit = bob_group.self_update(&bob2, &bob_id, b"").unwrap();
        bob_group.merge_pending_commit(&bob2).unwrap();
        group.process_message(&alice2, &commit, b"", b"").unwrap();
        for provider in [&alice2, &bob2] {
            let changes = decode_changes(&provider.checkpoint()).unwrap();
            let labels: Vec<String> = changes
                .iter()
                .filter(|(_, v)| v.is_some())
                .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
                .collect();
            for label in ["Tree", "GroupContext", "MessageSecrets", "EpochSecrets"] {
                assert!(labels.iter().any(|k| k.contains(label)), "{label} not written");
            }
            for (key, value) in changes {
                if let Some(value) = value {
                    assert!(!is_json(&value), "{:?}", String::from_utf8_lossy(&key));
                }
            }
        }
        let m = bob_group.create_message(&bob2, &bob_id, b"both ways", b"").unwrap();
        assert_eq!(
            parse(&group.process_message(&alice2, &m, b"", b"").unwrap()).4,
            b"both ways"
        );
        // And again after another restart.
        let alice3 = restored(&alice2);
        let mut group = Group::load(&alice3, &GROUP).unwrap().unwrap();
        let m = bob_group.create_message(&bob2, &bob_id, b"again", b"").unwrap();
        assert_eq!(
            parse(&group.process_message(&alice3, &m, b"", b"").unwrap()).4,
            b"again"
        );
    }

    #[test]
    fn a_group_survives_a_restore_into_a_fresh_provider() {
        let (alice, mut group, bob, _bob_group) = alice_and_bob();
        let snapshot = bob.provider.group_entries(&GROUP);
        let fresh = Provider::default();
        fresh.restore(&bob.provider.checkpoint()).unwrap();
        fresh.restore(&snapshot).unwrap();
        assert!(!fresh.has_changes());
        let mut restored = Group::load(&fresh, &GROUP).unwrap().unwrap();
        let members = decode_byte_list(&restored.members()).unwrap();
        assert_eq!(members.len(), 6); // two (leaf, identity, signature key) triples
        assert_eq!(
            (members[1].as_slice(), members[4].as_slice()),
            (b"alice".as_slice(), b"bob".as_slice())
        );
        let message = group
            .create_message(&alice.provider, &alice.identity, b"again", b"")
            .unwrap();
        let out = restored.process_message(&fresh, &message, b"", b"").unwrap();
        assert_eq!(parse(&out).4, b"again");
        assert!(Group::load(&fresh, &[9; 16]).unwrap().is_none());
        fresh.drop_group(&GROUP);
        assert!(Group::load(&fresh, &GROUP).unwrap().is_none());
    }
}
