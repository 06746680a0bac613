//! A device's Ed25519 signature key pair: what `openmls_basic_credential::SignatureKeyPair`
//! is for ciphersuite 0x0001, stored the same way (same entry key, same fields), without its
//! code for the other signature schemes.

use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::signatures::{Signer, SignerError};
use openmls_traits::storage::{self, StorageProvider, CURRENT_VERSION};
use openmls_traits::types::{CryptoError, SignatureScheme};
use serde::{Deserialize, Serialize};
use tls_codec::SecretVLBytes;
use zeroize::Zeroize;

use crate::crypto::Crypto;

/// The key pair, as stored (JSON) under `SignatureKeyPair` and the id of its public key.
#[derive(Serialize, Deserialize)]
pub struct SignatureKeyPair {
    #[serde(with = "secret_bytes_as_vec")]
    private: SecretVLBytes,
    public: Vec<u8>,
    signature_scheme: SignatureScheme,
}

mod secret_bytes_as_vec {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use tls_codec::SecretVLBytes;
    use zeroize::Zeroize;

    pub fn serialize<S: Serializer>(value: &SecretVLBytes, s: S) -> Result<S::Ok, S::Error> {
        Serialize::serialize(value.as_slice(), s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SecretVLBytes, D::Error> {
        let mut bytes: Vec<u8> = Deserialize::deserialize(d)?;
        let secret: SecretVLBytes = bytes.as_slice().into();
        bytes.zeroize();
        Ok(secret)
    }
}

/// The entry key of a key pair: what `openmls_basic_credential` names it by.
#[derive(Debug, Serialize, Deserialize)]
pub struct StorageId {
    value: Vec<u8>,
}

impl storage::Key<CURRENT_VERSION> for StorageId {}
impl storage::traits::SignaturePublicKey<CURRENT_VERSION> for StorageId {}
impl storage::Entity<CURRENT_VERSION> for SignatureKeyPair {}
impl storage::traits::SignatureKeyPair<CURRENT_VERSION> for SignatureKeyPair {}

fn id(public_key: &[u8], signature_scheme: SignatureScheme) -> StorageId {
    let mut value = public_key.to_vec();
    value.extend_from_slice(b"RustCryptoSignatureKey");
    value.extend_from_slice(&(signature_scheme as u16).to_be_bytes());
    StorageId { value }
}

impl SignatureKeyPair {
    /// A new Ed25519 key pair.
    pub fn new(crypto: &Crypto) -> Result<Self, CryptoError> {
        let (mut private, public) = crypto.signature_key_gen(SignatureScheme::ED25519)?;
        let pair = SignatureKeyPair {
            private: private.as_slice().into(),
            public,
            signature_scheme: SignatureScheme::ED25519,
        };
        private.zeroize();
        Ok(pair)
    }

    pub fn store<T: StorageProvider<CURRENT_VERSION>>(&self, store: &T) -> Result<(), T::Error> {
        store.write_signature_key_pair(&id(&self.public, self.signature_scheme), self)
    }

    /// The stored Ed25519 key pair with this public key, if any.
    pub fn read(store: &impl StorageProvider<CURRENT_VERSION>, public_key: &[u8]) -> Option<Self> {
        store
            .signature_key_pair(&id(public_key, SignatureScheme::ED25519))
            .ok()
            .flatten()
            .filter(|pair: &Self| pair.signature_scheme == SignatureScheme::ED25519)
    }

    pub fn public(&self) -> &[u8] {
        &self.public
    }

    pub fn to_public_vec(&self) -> Vec<u8> {
        self.public.clone()
    }
}

impl Signer for SignatureKeyPair {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, SignerError> {
        use ed25519_dalek::Signer as _;
        let key =
            ed25519_dalek::SigningKey::try_from(self.private.as_slice()).map_err(|_| SignerError::SigningError)?;
        Ok(key.sign(payload).to_bytes().to_vec())
    }

    fn signature_scheme(&self) -> SignatureScheme {
        self.signature_scheme
    }
}

#[cfg(test)]
mod tests {
    use openmls_traits::signatures::Signer;
    use openmls_traits::types::SignatureScheme;

    use super::SignatureKeyPair;
    use crate::crypto::Crypto;
    use crate::storage::WorkingSet;

    #[test]
    fn stored_as_openmls_basic_credential_stores_it() {
        // A key pair stored by openmls_basic_credential (what devices made before) reads
        // here and signs alike; one stored here reads there.
        let store = WorkingSet::default();
        let theirs = openmls_basic_credential::SignatureKeyPair::new(SignatureScheme::ED25519).unwrap();
        theirs.store(&store).unwrap();
        let ours = SignatureKeyPair::read(&store, theirs.public()).expect("read back");
        assert_eq!(ours.sign(b"m").unwrap(), theirs.sign(b"m").unwrap());
        assert_eq!(ours.signature_scheme(), SignatureScheme::ED25519);

        let ours = SignatureKeyPair::new(&Crypto::default()).unwrap();
        ours.store(&store).unwrap();
        let theirs =
            openmls_basic_credential::SignatureKeyPair::read(&store, ours.public(), SignatureScheme::ED25519).unwrap();
        assert_eq!(theirs.sign(b"m").unwrap(), ours.sign(b"m").unwrap());
        assert!(SignatureKeyPair::read(&store, &[0; 32]).is_none());
    }
}
