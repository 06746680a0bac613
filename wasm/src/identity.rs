//! A device's signing identity: Ed25519 key pair plus the BasicCredential of its user.

use openmls::prelude::{BasicCredential, Ciphersuite, CredentialWithKey, KeyPackage, MlsMessageOut, SignatureScheme};
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::OpenMlsProvider;
use tls_codec::Serialize as _;
use wasm_bindgen::prelude::*;

use crate::error::{code, js_error, mls_error, JsResult};
use crate::provider::Provider;

pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
const SIGNATURE_SCHEME: SignatureScheme = SignatureScheme::ED25519;
const MAX_USER_ID_LEN: usize = 255;

/// Signature key pair (kept in the provider's working set) and credential of one device.
#[wasm_bindgen]
pub struct Identity {
    pub(crate) signer: SignatureKeyPair,
    pub(crate) credential: CredentialWithKey,
}

fn check_user_id(user_id: &[u8]) -> JsResult<()> {
    if user_id.is_empty() || user_id.len() > MAX_USER_ID_LEN {
        return Err(js_error(
            code::INVALID_INPUT,
            format!("user id must be 1..={MAX_USER_ID_LEN} bytes, got {}", user_id.len()),
        ));
    }
    Ok(())
}

impl Identity {
    fn from_parts(signer: SignatureKeyPair, user_id: &[u8]) -> Identity {
        let credential = CredentialWithKey {
            credential: BasicCredential::new(user_id.to_vec()).into(),
            signature_key: signer.public().into(),
        };
        Identity { signer, credential }
    }
}

#[wasm_bindgen]
impl Identity {
    /// Generate a new Ed25519 key pair for `user_id` and store it in the provider.
    pub fn create(provider: &Provider, user_id: &[u8]) -> JsResult<Identity> {
        check_user_id(user_id)?;
        let signer = SignatureKeyPair::new(SIGNATURE_SCHEME).map_err(|e| mls_error(code::CREATE, e))?;
        provider
            .storage()
            .atomically(|| signer.store(provider.storage()))
            .map_err(|e| js_error(code::STORAGE, e))?;
        Ok(Identity::from_parts(signer, user_id))
    }

    /// Load the key pair with `public_key` from the provider.
    pub fn load(provider: &Provider, user_id: &[u8], public_key: &[u8]) -> JsResult<Identity> {
        check_user_id(user_id)?;
        let signer = SignatureKeyPair::read(provider.storage(), public_key, SIGNATURE_SCHEME)
            .ok_or_else(|| js_error(code::NOT_FOUND, "no signature key pair with that public key"))?;
        Ok(Identity::from_parts(signer, user_id))
    }

    /// The Ed25519 public key (also the key to `load` this identity with).
    #[wasm_bindgen(getter, js_name = publicKey)]
    pub fn public_key(&self) -> Vec<u8> {
        self.signer.to_public_vec()
    }

    /// A fresh KeyPackage (TLS-serialized `MlsMessage`); its private part stays in the
    /// provider so a Welcome made from it can be joined.
    #[wasm_bindgen(js_name = keyPackage)]
    pub fn key_package(&self, provider: &Provider) -> JsResult<Vec<u8>> {
        let bundle = provider
            .storage()
            .atomically(|| KeyPackage::builder().build(CIPHERSUITE, provider, &self.signer, self.credential.clone()))
            .map_err(|e| mls_error(code::KEY_PACKAGE, e))?;
        MlsMessageOut::from(bundle.key_package().clone())
            .tls_serialize_detached()
            .map_err(|e| js_error(code::LIBRARY, e))
    }
}
