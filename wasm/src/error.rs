//! Errors cross into JavaScript as `Error` objects with a stable `code` string.
//!
//! Python maps `code` onto its `PingError` subclasses, so codes are API: add, never rename
//! (`docs/wasm-api.md` lists them and what they mean).
//!
//! Inside the crate a failure is an [`Error`]: a code and a message, plain Rust. It becomes a
//! JS `Error` only where an export returns it to JavaScript (wasm-bindgen converts it with
//! `From<Error> for JsValue`), so the crate's logic and its unit tests, which run natively,
//! never touch a JS value.
//!
//! Which code an OpenMLS error gets is decided in this module and nowhere else: [`ErrorCode`]
//! is implemented for every OpenMLS error type the crate returns, by matching its variants
//! (nested errors included). Group-state conditions get their own codes so callers can react
//! (merge or discard a pending commit, drop a conversation they were removed from); anything
//! else gets the code of the operation that failed.

use std::fmt::{Debug, Display};

use openmls::prelude::{
    AddMembersError, CommitBuilderStageError, CreateCommitError, CreateMessageError, CreationFromExternalError,
    EmptyInputError, ExportSecretError, KeyPackageNewError, KeyPackageVerifyError, LibraryError, MergeCommitError,
    MergePendingCommitError, MlsGroupStateError, NewGroupError, ProcessMessageError, RemoveMembersError,
    SelfUpdateError, StageCommitError, ValidationError, WelcomeError,
};
use openmls_traits::types::CryptoError;
use wasm_bindgen::JsValue;

use crate::storage::StorageError;

/// Stable error codes (see `docs/wasm-api.md`).
pub mod code {
    pub const INVALID_INPUT: &str = "invalid_input";
    pub const MALFORMED_MESSAGE: &str = "malformed_message";
    pub const WRONG_MESSAGE_TYPE: &str = "wrong_message_type";
    pub const NOT_FOUND: &str = "not_found";
    pub const STORAGE: &str = "storage";
    pub const PENDING_COMMIT: &str = "pending_commit";
    pub const NO_PENDING_COMMIT: &str = "no_pending_commit";
    pub const NOT_MEMBER: &str = "not_member";
    pub const WRONG_EPOCH: &str = "wrong_epoch";
    pub const HASH_MISMATCH: &str = "hash_mismatch";
    pub const AAD_MISMATCH: &str = "aad_mismatch";
    pub const LIBRARY: &str = "library";
    pub const KEY_PACKAGE: &str = "key_package";
    pub const CREATE: &str = "create_failed";
    pub const JOIN: &str = "join_failed";
    pub const COMMIT: &str = "commit_failed";
    pub const SEND: &str = "send_failed";
    pub const PROCESS: &str = "process_failed";
    pub const MERGE: &str = "merge_failed";
    pub const EXPORT: &str = "export_failed";
    pub const SIGN: &str = "sign_failed";
}

/// A failure on its way to JavaScript: a stable code and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub code: &'static str,
    pub message: String,
}

impl Error {
    pub fn new(code: &'static str, message: impl Display) -> Error {
        Error {
            code,
            message: message.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// A JS `Error` named `PingWasmError` with `code` set. Runs only in wasm, where an export
/// returns an [`Error`].
impl From<Error> for JsValue {
    fn from(err: Error) -> JsValue {
        let js = js_sys::Error::new(&err.message);
        js.set_name("PingWasmError");
        // Setting a property on a fresh Error object cannot fail.
        let _ = js_sys::Reflect::set(&js, &JsValue::from_str("code"), &JsValue::from_str(err.code));
        js.into()
    }
}

/// The code an error has in its own right, whatever operation failed.
pub trait ErrorCode {
    /// `Some(code)` for the conditions with their own code (group state, wrong epoch,
    /// storage, OpenMLS internal errors, bad arguments); `None` for a plain failure of the
    /// operation, which then gets the operation's code.
    fn code(&self) -> Option<&'static str>;
}

/// An OpenMLS error as an [`Error`]: its own code if it has one, else `operation`.
pub fn mls_error<E: ErrorCode + Debug + Display>(operation: &'static str, err: E) -> Error {
    let code = err.code().unwrap_or(operation);
    Error {
        code,
        message: format!("{err} ({err:?})"),
    }
}

impl ErrorCode for LibraryError {
    fn code(&self) -> Option<&'static str> {
        Some(code::LIBRARY)
    }
}

impl ErrorCode for StorageError {
    fn code(&self) -> Option<&'static str> {
        Some(code::STORAGE)
    }
}

impl ErrorCode for CryptoError {
    fn code(&self) -> Option<&'static str> {
        None
    }
}

impl ErrorCode for MlsGroupStateError {
    fn code(&self) -> Option<&'static str> {
        match self {
            MlsGroupStateError::LibraryError(e) => e.code(),
            MlsGroupStateError::UseAfterEviction => Some(code::NOT_MEMBER),
            MlsGroupStateError::PendingCommit => Some(code::PENDING_COMMIT),
            MlsGroupStateError::NoPendingCommit => Some(code::NO_PENDING_COMMIT),
            MlsGroupStateError::PendingProposal | MlsGroupStateError::PendingProposalNotFound => None,
        }
    }
}

impl ErrorCode for EmptyInputError {
    fn code(&self) -> Option<&'static str> {
        Some(code::INVALID_INPUT)
    }
}

impl ErrorCode for ValidationError {
    fn code(&self) -> Option<&'static str> {
        match self {
            ValidationError::LibraryError(e) => e.code(),
            ValidationError::WrongEpoch => Some(code::WRONG_EPOCH),
            ValidationError::KeyPackageVerifyError(e) => e.code(),
            _ => None,
        }
    }
}

impl ErrorCode for StageCommitError {
    fn code(&self) -> Option<&'static str> {
        match self {
            StageCommitError::LibraryError(e) => e.code(),
            _ => None,
        }
    }
}

impl ErrorCode for CreateCommitError {
    fn code(&self) -> Option<&'static str> {
        match self {
            CreateCommitError::LibraryError(e) => e.code(),
            _ => None,
        }
    }
}

impl<S: ErrorCode> ErrorCode for CommitBuilderStageError<S> {
    fn code(&self) -> Option<&'static str> {
        match self {
            CommitBuilderStageError::LibraryError(e) => e.code(),
            CommitBuilderStageError::KeyStoreError(e) => e.code(),
        }
    }
}

impl<S: ErrorCode> ErrorCode for MergeCommitError<S> {
    fn code(&self) -> Option<&'static str> {
        match self {
            MergeCommitError::LibraryError(e) => e.code(),
            MergeCommitError::StorageError(e) => e.code(),
        }
    }
}

impl ErrorCode for KeyPackageVerifyError {
    fn code(&self) -> Option<&'static str> {
        match self {
            KeyPackageVerifyError::LibraryError(e) => e.code(),
            _ => None,
        }
    }
}

impl ErrorCode for KeyPackageNewError {
    fn code(&self) -> Option<&'static str> {
        match self {
            KeyPackageNewError::LibraryError(e) => e.code(),
            KeyPackageNewError::StorageError => Some(code::STORAGE),
            _ => None,
        }
    }
}

impl<S: ErrorCode> ErrorCode for NewGroupError<S> {
    fn code(&self) -> Option<&'static str> {
        match self {
            NewGroupError::LibraryError(e) => e.code(),
            NewGroupError::StorageError(e) => e.code(),
            NewGroupError::GroupAlreadyExists => Some(code::INVALID_INPUT),
            _ => None,
        }
    }
}

impl<S: ErrorCode> ErrorCode for CreationFromExternalError<S> {
    fn code(&self) -> Option<&'static str> {
        match self {
            CreationFromExternalError::LibraryError(e) => e.code(),
            CreationFromExternalError::WriteToStorageError(e) => e.code(),
            _ => None,
        }
    }
}

impl<S: ErrorCode> ErrorCode for WelcomeError<S> {
    fn code(&self) -> Option<&'static str> {
        match self {
            WelcomeError::LibraryError(e) => e.code(),
            WelcomeError::StorageError(e) => e.code(),
            WelcomeError::PublicGroupError(e) => e.code(),
            WelcomeError::GroupAlreadyExists => Some(code::INVALID_INPUT),
            _ => None,
        }
    }
}

impl<S: ErrorCode> ErrorCode for AddMembersError<S> {
    fn code(&self) -> Option<&'static str> {
        match self {
            AddMembersError::LibraryError(e) => e.code(),
            AddMembersError::EmptyInput(e) => e.code(),
            AddMembersError::CreateCommitError(e) => e.code(),
            AddMembersError::CommitBuilderStageError(e) => e.code(),
            AddMembersError::GroupStateError(e) => e.code(),
            AddMembersError::StorageError(e) => e.code(),
        }
    }
}

impl<S: ErrorCode> ErrorCode for RemoveMembersError<S> {
    fn code(&self) -> Option<&'static str> {
        match self {
            RemoveMembersError::LibraryError(e) => e.code(),
            RemoveMembersError::EmptyInput(e) => e.code(),
            RemoveMembersError::CreateCommitError(e) => e.code(),
            RemoveMembersError::CommitBuilderStageError(e) => e.code(),
            RemoveMembersError::GroupStateError(e) => e.code(),
            RemoveMembersError::UnknownMember => Some(code::INVALID_INPUT),
            RemoveMembersError::StorageError(e) => e.code(),
        }
    }
}

impl<S: ErrorCode> ErrorCode for SelfUpdateError<S> {
    fn code(&self) -> Option<&'static str> {
        match self {
            SelfUpdateError::LibraryError(e) => e.code(),
            SelfUpdateError::CreateCommitError(e) => e.code(),
            SelfUpdateError::CommitBuilderStageError(e) => e.code(),
            SelfUpdateError::GroupStateError(e) => e.code(),
            SelfUpdateError::StorageError(e) => e.code(),
        }
    }
}

impl<S: ErrorCode> ErrorCode for MergePendingCommitError<S> {
    fn code(&self) -> Option<&'static str> {
        match self {
            MergePendingCommitError::MlsGroupStateError(e) => e.code(),
            MergePendingCommitError::MergeCommitError(e) => e.code(),
        }
    }
}

impl ErrorCode for CreateMessageError {
    fn code(&self) -> Option<&'static str> {
        match self {
            CreateMessageError::LibraryError(e) => e.code(),
            CreateMessageError::GroupStateError(e) => e.code(),
        }
    }
}

impl<S: ErrorCode> ErrorCode for ProcessMessageError<S> {
    fn code(&self) -> Option<&'static str> {
        match self {
            ProcessMessageError::LibraryError(e) => e.code(),
            ProcessMessageError::StorageError(e) => e.code(),
            ProcessMessageError::ValidationError(e) => e.code(),
            ProcessMessageError::GroupStateError(e) => e.code(),
            ProcessMessageError::InvalidCommit(e) => e.code(),
            _ => None,
        }
    }
}

impl ErrorCode for ExportSecretError {
    fn code(&self) -> Option<&'static str> {
        match self {
            ExportSecretError::LibraryError(e) => e.code(),
            ExportSecretError::KeyLengthTooLong => Some(code::INVALID_INPUT),
            ExportSecretError::GroupStateError(e) => e.code(),
        }
    }
}

#[cfg(test)]
mod tests {
    use openmls::prelude::{
        AeadType, BasicCredential, CredentialWithKey, HashType, HpkeCiphertext, HpkeConfig, HpkeKeyPair, KeyPackage,
        SignatureScheme,
    };
    use openmls_basic_credential::SignatureKeyPair;
    use openmls_rust_crypto::RustCrypto;
    use openmls_traits::crypto::OpenMlsCrypto;
    use openmls_traits::types::{Ciphersuite, ExporterSecret, KemOutput};
    use tls_codec::SecretVLBytes;

    use super::*;
    use crate::identity::CIPHERSUITE;
    use crate::provider::Provider;

    /// The operation code the tests pass: an error that has no code of its own gets it.
    const OP: &str = "op_failed";

    fn code_of<E: ErrorCode + Debug + Display>(err: E) -> &'static str {
        mls_error(OP, err).code
    }

    fn storage() -> StorageError {
        StorageError("broken entry".into())
    }

    /// RustCrypto whose hash always fails: OpenMLS reports that as a `LibraryError` (the
    /// type has no public constructor).
    struct HashlessCrypto(RustCrypto);

    impl OpenMlsCrypto for HashlessCrypto {
        fn supports(&self, ciphersuite: Ciphersuite) -> std::result::Result<(), CryptoError> {
            self.0.supports(ciphersuite)
        }
        fn supported_ciphersuites(&self) -> Vec<Ciphersuite> {
            self.0.supported_ciphersuites()
        }
        fn hkdf_extract(
            &self,
            h: HashType,
            salt: &[u8],
            ikm: &[u8],
        ) -> std::result::Result<SecretVLBytes, CryptoError> {
            self.0.hkdf_extract(h, salt, ikm)
        }
        fn hmac(&self, h: HashType, key: &[u8], message: &[u8]) -> std::result::Result<SecretVLBytes, CryptoError> {
            self.0.hmac(h, key, message)
        }
        fn hkdf_expand(
            &self,
            h: HashType,
            prk: &[u8],
            info: &[u8],
            okm_len: usize,
        ) -> std::result::Result<SecretVLBytes, CryptoError> {
            self.0.hkdf_expand(h, prk, info, okm_len)
        }
        fn hash(&self, _: HashType, _: &[u8]) -> std::result::Result<Vec<u8>, CryptoError> {
            Err(CryptoError::UnsupportedHashAlgorithm)
        }
        fn aead_encrypt(
            &self,
            alg: AeadType,
            key: &[u8],
            data: &[u8],
            nonce: &[u8],
            aad: &[u8],
        ) -> std::result::Result<Vec<u8>, CryptoError> {
            self.0.aead_encrypt(alg, key, data, nonce, aad)
        }
        fn aead_decrypt(
            &self,
            alg: AeadType,
            key: &[u8],
            ct_tag: &[u8],
            nonce: &[u8],
            aad: &[u8],
        ) -> std::result::Result<Vec<u8>, CryptoError> {
            self.0.aead_decrypt(alg, key, ct_tag, nonce, aad)
        }
        fn signature_key_gen(&self, alg: SignatureScheme) -> std::result::Result<(Vec<u8>, Vec<u8>), CryptoError> {
            self.0.signature_key_gen(alg)
        }
        fn verify_signature(
            &self,
            alg: SignatureScheme,
            data: &[u8],
            pk: &[u8],
            signature: &[u8],
        ) -> std::result::Result<(), CryptoError> {
            self.0.verify_signature(alg, data, pk, signature)
        }
        fn sign(&self, alg: SignatureScheme, data: &[u8], key: &[u8]) -> std::result::Result<Vec<u8>, CryptoError> {
            self.0.sign(alg, data, key)
        }
        fn hpke_seal(
            &self,
            config: HpkeConfig,
            pk_r: &[u8],
            info: &[u8],
            aad: &[u8],
            ptxt: &[u8],
        ) -> std::result::Result<HpkeCiphertext, CryptoError> {
            self.0.hpke_seal(config, pk_r, info, aad, ptxt)
        }
        fn hpke_open(
            &self,
            config: HpkeConfig,
            input: &HpkeCiphertext,
            sk_r: &[u8],
            info: &[u8],
            aad: &[u8],
        ) -> std::result::Result<Vec<u8>, CryptoError> {
            self.0.hpke_open(config, input, sk_r, info, aad)
        }
        fn hpke_setup_sender_and_export(
            &self,
            config: HpkeConfig,
            pk_r: &[u8],
            info: &[u8],
            exporter_context: &[u8],
            exporter_length: usize,
        ) -> std::result::Result<(KemOutput, ExporterSecret), CryptoError> {
            self.0
                .hpke_setup_sender_and_export(config, pk_r, info, exporter_context, exporter_length)
        }
        fn hpke_setup_receiver_and_export(
            &self,
            config: HpkeConfig,
            enc: &[u8],
            sk_r: &[u8],
            info: &[u8],
            exporter_context: &[u8],
            exporter_length: usize,
        ) -> std::result::Result<ExporterSecret, CryptoError> {
            self.0
                .hpke_setup_receiver_and_export(config, enc, sk_r, info, exporter_context, exporter_length)
        }
        fn derive_hpke_keypair(&self, config: HpkeConfig, ikm: &[u8]) -> std::result::Result<HpkeKeyPair, CryptoError> {
            self.0.derive_hpke_keypair(config, ikm)
        }
    }

    /// A real `LibraryError`: a KeyPackage's hash reference computed with a failing hash.
    fn library() -> LibraryError {
        let provider = Provider::default();
        let signer = SignatureKeyPair::new(SignatureScheme::ED25519).unwrap();
        let credential = CredentialWithKey {
            credential: BasicCredential::new(b"alice".to_vec()).into(),
            signature_key: signer.public().into(),
        };
        let bundle = KeyPackage::builder()
            .build(CIPHERSUITE, &provider, &signer, credential)
            .unwrap();
        bundle
            .key_package()
            .hash_ref(&HashlessCrypto(RustCrypto::default()))
            .unwrap_err()
    }

    #[test]
    fn the_message_carries_display_and_debug() {
        let err = mls_error(code::PROCESS, ValidationError::WrongEpoch);
        assert_eq!(err.code, code::WRONG_EPOCH);
        assert_eq!(
            err.message,
            "Message epoch differs from the group's epoch. (WrongEpoch)"
        );
        let err = mls_error(code::PROCESS, ValidationError::InvalidSignature);
        assert_eq!(err.code, code::PROCESS);
    }

    #[test]
    fn leaves() {
        assert_eq!(code_of(library()), code::LIBRARY);
        assert_eq!(code_of(storage()), code::STORAGE);
        assert_eq!(code_of(CryptoError::CryptoLibraryError), OP);
        assert_eq!(code_of(EmptyInputError::AddMembers), code::INVALID_INPUT);
        assert_eq!(code_of(EmptyInputError::RemoveMembers), code::INVALID_INPUT);
    }

    #[test]
    fn group_state() {
        assert_eq!(code_of(MlsGroupStateError::LibraryError(library())), code::LIBRARY);
        assert_eq!(code_of(MlsGroupStateError::UseAfterEviction), code::NOT_MEMBER);
        assert_eq!(code_of(MlsGroupStateError::PendingCommit), code::PENDING_COMMIT);
        assert_eq!(code_of(MlsGroupStateError::NoPendingCommit), code::NO_PENDING_COMMIT);
        assert_eq!(code_of(MlsGroupStateError::PendingProposal), OP);
        assert_eq!(code_of(MlsGroupStateError::PendingProposalNotFound), OP);
    }

    #[test]
    fn validation_and_staging() {
        assert_eq!(code_of(ValidationError::LibraryError(library())), code::LIBRARY);
        assert_eq!(code_of(ValidationError::WrongEpoch), code::WRONG_EPOCH);
        assert_eq!(
            code_of(ValidationError::KeyPackageVerifyError(
                KeyPackageVerifyError::LibraryError(library())
            )),
            code::LIBRARY
        );
        assert_eq!(
            code_of(ValidationError::KeyPackageVerifyError(
                KeyPackageVerifyError::InvalidSignature
            )),
            OP
        );
        assert_eq!(code_of(ValidationError::WrongGroupId), OP);
        assert_eq!(code_of(ValidationError::InvalidSignature), OP);
        assert_eq!(code_of(StageCommitError::LibraryError(library())), code::LIBRARY);
        assert_eq!(code_of(StageCommitError::OwnCommitMismatch), OP);
        assert_eq!(code_of(StageCommitError::EpochMismatch), OP);
        assert_eq!(code_of(CreateCommitError::LibraryError(library())), code::LIBRARY);
        assert_eq!(code_of(CreateCommitError::CannotRemoveSelf), OP);
        assert_eq!(
            code_of(CommitBuilderStageError::<StorageError>::LibraryError(library())),
            code::LIBRARY
        );
        assert_eq!(
            code_of(CommitBuilderStageError::KeyStoreError(storage())),
            code::STORAGE
        );
        assert_eq!(
            code_of(MergeCommitError::<StorageError>::LibraryError(library())),
            code::LIBRARY
        );
        assert_eq!(code_of(MergeCommitError::StorageError(storage())), code::STORAGE);
    }

    #[test]
    fn key_packages() {
        assert_eq!(code_of(KeyPackageVerifyError::LibraryError(library())), code::LIBRARY);
        assert_eq!(code_of(KeyPackageVerifyError::InvalidSignature), OP);
        assert_eq!(code_of(KeyPackageVerifyError::InvalidProtocolVersion), OP);
        assert_eq!(code_of(KeyPackageNewError::LibraryError(library())), code::LIBRARY);
        assert_eq!(code_of(KeyPackageNewError::StorageError), code::STORAGE);
        assert_eq!(code_of(KeyPackageNewError::CiphersuiteSignatureSchemeMismatch), OP);
    }

    #[test]
    fn new_group_and_welcome() {
        assert_eq!(
            code_of(NewGroupError::<StorageError>::LibraryError(library())),
            code::LIBRARY
        );
        assert_eq!(code_of(NewGroupError::StorageError(storage())), code::STORAGE);
        assert_eq!(
            code_of(NewGroupError::<StorageError>::GroupAlreadyExists),
            code::INVALID_INPUT
        );
        assert_eq!(code_of(NewGroupError::<StorageError>::UnsupportedProposalType), OP);
        assert_eq!(
            code_of(CreationFromExternalError::<StorageError>::LibraryError(library())),
            code::LIBRARY
        );
        assert_eq!(
            code_of(CreationFromExternalError::WriteToStorageError(storage())),
            code::STORAGE
        );
        assert_eq!(code_of(CreationFromExternalError::<StorageError>::TreeHashMismatch), OP);
        assert_eq!(
            code_of(WelcomeError::<StorageError>::LibraryError(library())),
            code::LIBRARY
        );
        assert_eq!(code_of(WelcomeError::StorageError(storage())), code::STORAGE);
        assert_eq!(
            code_of(WelcomeError::PublicGroupError(
                CreationFromExternalError::WriteToStorageError(storage())
            )),
            code::STORAGE
        );
        assert_eq!(
            code_of(WelcomeError::<StorageError>::PublicGroupError(
                CreationFromExternalError::TreeHashMismatch
            )),
            OP
        );
        assert_eq!(
            code_of(WelcomeError::<StorageError>::GroupAlreadyExists),
            code::INVALID_INPUT
        );
        assert_eq!(code_of(WelcomeError::<StorageError>::NoMatchingKeyPackage), OP);
        assert_eq!(code_of(WelcomeError::<StorageError>::UnableToDecrypt), OP);
    }

    #[test]
    fn commits() {
        type Add = AddMembersError<StorageError>;
        assert_eq!(code_of(Add::LibraryError(library())), code::LIBRARY);
        assert_eq!(
            code_of(Add::EmptyInput(EmptyInputError::AddMembers)),
            code::INVALID_INPUT
        );
        assert_eq!(
            code_of(Add::CreateCommitError(CreateCommitError::LibraryError(library()))),
            code::LIBRARY
        );
        assert_eq!(code_of(Add::CreateCommitError(CreateCommitError::MissingProposal)), OP);
        assert_eq!(
            code_of(Add::CommitBuilderStageError(CommitBuilderStageError::KeyStoreError(
                storage()
            ))),
            code::STORAGE
        );
        assert_eq!(
            code_of(Add::GroupStateError(MlsGroupStateError::PendingCommit)),
            code::PENDING_COMMIT
        );
        assert_eq!(
            code_of(Add::GroupStateError(MlsGroupStateError::UseAfterEviction)),
            code::NOT_MEMBER
        );
        assert_eq!(code_of(Add::StorageError(storage())), code::STORAGE);

        type Remove = RemoveMembersError<StorageError>;
        assert_eq!(code_of(Remove::LibraryError(library())), code::LIBRARY);
        assert_eq!(
            code_of(Remove::EmptyInput(EmptyInputError::RemoveMembers)),
            code::INVALID_INPUT
        );
        assert_eq!(
            code_of(Remove::CreateCommitError(CreateCommitError::CannotRemoveSelf)),
            OP
        );
        assert_eq!(
            code_of(Remove::CommitBuilderStageError(CommitBuilderStageError::LibraryError(
                library()
            ))),
            code::LIBRARY
        );
        assert_eq!(
            code_of(Remove::GroupStateError(MlsGroupStateError::PendingCommit)),
            code::PENDING_COMMIT
        );
        assert_eq!(
            code_of(Remove::GroupStateError(MlsGroupStateError::UseAfterEviction)),
            code::NOT_MEMBER
        );
        assert_eq!(code_of(Remove::UnknownMember), code::INVALID_INPUT);
        assert_eq!(code_of(Remove::StorageError(storage())), code::STORAGE);

        type Update = SelfUpdateError<StorageError>;
        assert_eq!(code_of(Update::LibraryError(library())), code::LIBRARY);
        assert_eq!(
            code_of(Update::CreateCommitError(CreateCommitError::OwnKeyNotFound)),
            OP
        );
        assert_eq!(
            code_of(Update::CommitBuilderStageError(CommitBuilderStageError::KeyStoreError(
                storage()
            ))),
            code::STORAGE
        );
        assert_eq!(
            code_of(Update::GroupStateError(MlsGroupStateError::PendingCommit)),
            code::PENDING_COMMIT
        );
        assert_eq!(
            code_of(Update::GroupStateError(MlsGroupStateError::UseAfterEviction)),
            code::NOT_MEMBER
        );
        assert_eq!(code_of(Update::StorageError(storage())), code::STORAGE);

        type Merge = MergePendingCommitError<StorageError>;
        assert_eq!(
            code_of(Merge::MlsGroupStateError(MlsGroupStateError::NoPendingCommit)),
            code::NO_PENDING_COMMIT
        );
        assert_eq!(
            code_of(Merge::MlsGroupStateError(MlsGroupStateError::UseAfterEviction)),
            code::NOT_MEMBER
        );
        assert_eq!(
            code_of(Merge::MergeCommitError(MergeCommitError::StorageError(storage()))),
            code::STORAGE
        );
        assert_eq!(
            code_of(Merge::MergeCommitError(MergeCommitError::LibraryError(library()))),
            code::LIBRARY
        );
    }

    #[test]
    fn messages_and_exports() {
        assert_eq!(code_of(CreateMessageError::LibraryError(library())), code::LIBRARY);
        assert_eq!(
            code_of(CreateMessageError::GroupStateError(
                MlsGroupStateError::UseAfterEviction
            )),
            code::NOT_MEMBER
        );
        assert_eq!(
            code_of(CreateMessageError::GroupStateError(MlsGroupStateError::PendingProposal)),
            OP
        );

        type Process = ProcessMessageError<StorageError>;
        assert_eq!(code_of(Process::LibraryError(library())), code::LIBRARY);
        assert_eq!(code_of(Process::StorageError(storage())), code::STORAGE);
        assert_eq!(
            code_of(Process::ValidationError(ValidationError::WrongEpoch)),
            code::WRONG_EPOCH
        );
        assert_eq!(
            code_of(Process::ValidationError(ValidationError::LibraryError(library()))),
            code::LIBRARY
        );
        assert_eq!(code_of(Process::ValidationError(ValidationError::NoPastEpochData)), OP);
        assert_eq!(
            code_of(Process::GroupStateError(MlsGroupStateError::UseAfterEviction)),
            code::NOT_MEMBER
        );
        assert_eq!(
            code_of(Process::GroupStateError(MlsGroupStateError::PendingCommit)),
            code::PENDING_COMMIT
        );
        assert_eq!(
            code_of(Process::InvalidCommit(StageCommitError::LibraryError(library()))),
            code::LIBRARY
        );
        assert_eq!(code_of(Process::InvalidCommit(StageCommitError::OwnCommitMismatch)), OP);
        assert_eq!(code_of(Process::IncompatibleWireFormat), OP);
        assert_eq!(code_of(Process::UnauthorizedExternalApplicationMessage), OP);
        assert_eq!(code_of(Process::UnsupportedProposalType), OP);

        assert_eq!(code_of(ExportSecretError::LibraryError(library())), code::LIBRARY);
        assert_eq!(code_of(ExportSecretError::KeyLengthTooLong), code::INVALID_INPUT);
        assert_eq!(
            code_of(ExportSecretError::GroupStateError(MlsGroupStateError::UseAfterEviction)),
            code::NOT_MEMBER
        );
    }

    #[test]
    fn every_code_is_documented_and_distinct() {
        let all = [
            code::INVALID_INPUT,
            code::MALFORMED_MESSAGE,
            code::WRONG_MESSAGE_TYPE,
            code::NOT_FOUND,
            code::STORAGE,
            code::PENDING_COMMIT,
            code::NO_PENDING_COMMIT,
            code::NOT_MEMBER,
            code::WRONG_EPOCH,
            code::HASH_MISMATCH,
            code::AAD_MISMATCH,
            code::LIBRARY,
            code::KEY_PACKAGE,
            code::CREATE,
            code::JOIN,
            code::COMMIT,
            code::SEND,
            code::PROCESS,
            code::MERGE,
            code::EXPORT,
            code::SIGN,
        ];
        let docs = include_str!("../../docs/wasm-api.md");
        for code in all {
            assert!(docs.contains(&format!("`{code}`")), "{code} is not in docs/wasm-api.md");
        }
        let distinct: std::collections::BTreeSet<_> = all.iter().collect();
        assert_eq!(distinct.len(), all.len());
    }
}
