//! A device's signing identity: Ed25519 key pair plus the BasicCredential of its user.

use openmls::prelude::{BasicCredential, CredentialWithKey, KeyPackage, MlsMessageOut};
use openmls_traits::signatures::Signer as _;
use openmls_traits::OpenMlsProvider;
use tls_codec::Serialize as _;
use wasm_bindgen::prelude::*;

pub use crate::crypto::CIPHERSUITE;
use crate::error::{code, mls_error, Error, Result};
use crate::provider::Provider;
use crate::signer::SignatureKeyPair;

const MAX_USER_ID_LEN: usize = 255;

/// Prefix of everything `signWithLabel` signs (see [`Identity::sign_with_label`]).
const SIGN_PREFIX: &[u8] = b"ping-web/";
const MAX_SIGN_LABEL_LEN: usize = 64;

/// Signature key pair (kept in the provider's working set) and credential of one device.
#[wasm_bindgen]
pub struct Identity {
    pub(crate) signer: SignatureKeyPair,
    pub(crate) credential: CredentialWithKey,
}

fn check_user_id(user_id: &[u8]) -> Result<()> {
    if user_id.is_empty() || user_id.len() > MAX_USER_ID_LEN {
        return Err(Error::new(
            code::INVALID_INPUT,
            format!("user id must be 1..={MAX_USER_ID_LEN} bytes, got {}", user_id.len()),
        ));
    }
    Ok(())
}

/// The bytes `signWithLabel` signs: `"ping-web/" || label || 0x00 || content`.
///
/// The label is 1..=64 printable ASCII bytes (0x20..=0x7E, so never NUL), so the NUL after it
/// ends it unambiguously. These bytes can never be taken for something MLS signs: MLS signs a
/// `SignContent` (RFC 9420, SignWithLabel) that starts with the variable-length integer
/// length of its label, followed by the label, which begins with `"MLS 1.0 "`. The first byte
/// of a variable-length integer says how long it is; here that byte is `'p'` (0x70), which
/// means 2 bytes, so the label would begin at byte 2 with `'M'`, where these bytes always
/// have `'n'`, whatever the label and content.
pub(crate) fn labeled_content(label: &str, content: &[u8]) -> Result<Vec<u8>> {
    let bytes = label.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_SIGN_LABEL_LEN || !bytes.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return Err(Error::new(
            code::INVALID_INPUT,
            format!("a signing label must be 1..={MAX_SIGN_LABEL_LEN} printable ASCII characters"),
        ));
    }
    let mut out = Vec::with_capacity(SIGN_PREFIX.len() + bytes.len() + 1 + content.len());
    out.extend_from_slice(SIGN_PREFIX);
    out.extend_from_slice(bytes);
    out.push(0x00);
    out.extend_from_slice(content);
    Ok(out)
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
    pub fn create(provider: &Provider, user_id: &[u8]) -> Result<Identity> {
        check_user_id(user_id)?;
        let signer = SignatureKeyPair::new(provider.crypto()).map_err(|e| mls_error(code::CREATE, e))?;
        provider
            .storage()
            .atomically(|| signer.store(provider.storage()))
            .map_err(|e| Error::new(code::STORAGE, e))?;
        Ok(Identity::from_parts(signer, user_id))
    }

    /// Load the key pair with `public_key` from the provider.
    pub fn load(provider: &Provider, user_id: &[u8], public_key: &[u8]) -> Result<Identity> {
        check_user_id(user_id)?;
        let signer = SignatureKeyPair::read(provider.storage(), public_key)
            .ok_or_else(|| Error::new(code::NOT_FOUND, "no signature key pair with that public key"))?;
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
    pub fn key_package(&self, provider: &Provider) -> Result<Vec<u8>> {
        let bundle = provider
            .storage()
            .atomically(|| KeyPackage::builder().build(CIPHERSUITE, provider, &self.signer, self.credential.clone()))
            .map_err(|e| mls_error(code::KEY_PACKAGE, e))?;
        MlsMessageOut::from(bundle.key_package().clone())
            .tls_serialize_detached()
            .map_err(|e| Error::new(code::LIBRARY, e))
    }

    /// An Ed25519 signature, with this identity's signature key (the one `publicKey`
    /// returns), over the bytes `"ping-web/" || label || 0x00 || content`: proof of holding
    /// the device's MLS key, e.g. for a relay's login challenge. Never valid as an MLS
    /// signature (see `labeled_content` in `wasm/src/identity.rs`).
    ///
    /// `label` is 1..=64 printable ASCII characters, else `invalid_input`. The provider is
    /// taken like in the other calls on an identity; the key is the identity's own.
    #[wasm_bindgen(js_name = signWithLabel)]
    pub fn sign_with_label(&self, provider: &Provider, label: &str, content: &[u8]) -> Result<Vec<u8>> {
        let _ = provider;
        let message = labeled_content(label, content)?;
        self.signer
            .sign(&message)
            .map_err(|e| Error::new(code::SIGN, format!("signing failed: {e:?}")))
    }
}

/// Whether `signature` is `public_key`'s Ed25519 signature over
/// `"ping-web/" || label || 0x00 || content`, what `signWithLabel` makes: how clients check
/// the device-log entries other devices sign. Strict (ed25519-dalek's `verify_strict`):
/// small-order keys, non-canonical keys and non-canonical signatures never verify. A key or
/// signature of the wrong length is `false`; a bad label is `invalid_input`.
#[wasm_bindgen(js_name = verifyWithLabel)]
pub fn verify_with_label(public_key: &[u8], label: &str, content: &[u8], signature: &[u8]) -> Result<bool> {
    let message = labeled_content(label, content)?;
    let (Ok(key), Ok(signature)) = (
        <&[u8; 32]>::try_from(public_key),
        ed25519_dalek::Signature::from_slice(signature),
    ) else {
        return Ok(false);
    };
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(key) else {
        return Ok(false);
    };
    Ok(key.verify_strict(&message, &signature).is_ok())
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signature, VerifyingKey};
    use openmls::prelude::{OpenMlsCrypto, SignatureScheme};
    use openmls_traits::OpenMlsProvider;

    use super::*;

    /// The construction `docs/wasm-api.md` gives verifiers, written out independently.
    fn signed_bytes(label: &str, content: &[u8]) -> Vec<u8> {
        [b"ping-web/".as_slice(), label.as_bytes(), b"\x00", content].concat()
    }

    fn verify(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
        let key = VerifyingKey::from_bytes(public_key.try_into().unwrap()).unwrap();
        let signature = Signature::from_slice(signature).unwrap();
        key.verify_strict(message, &signature).is_ok()
    }

    #[test]
    fn sign_with_label_is_ed25519_over_the_documented_bytes() {
        let provider = Provider::default();
        let identity = Identity::create(&provider, b"alice").unwrap();
        let public_key = identity.public_key();
        assert_eq!(public_key.len(), 32);
        let challenge = b"\x00\x01server challenge\xff";

        let signature = identity
            .sign_with_label(&provider, "relay-login v1", challenge)
            .unwrap();
        assert_eq!(signature.len(), 64);
        assert!(verify(
            &public_key,
            &signed_bytes("relay-login v1", challenge),
            &signature
        ));
        // The RustCrypto provider agrees.
        provider
            .crypto()
            .verify_signature(
                SignatureScheme::ED25519,
                &signed_bytes("relay-login v1", challenge),
                &public_key,
                &signature,
            )
            .unwrap();
        // Bound to label, content and key.
        assert!(!verify(
            &public_key,
            &signed_bytes("relay-login v2", challenge),
            &signature
        ));
        assert!(!verify(
            &public_key,
            &signed_bytes("relay-login v1", b"other"),
            &signature
        ));
        assert!(!verify(&public_key, challenge, &signature));
        let other = Identity::create(&provider, b"alice").unwrap();
        assert!(!verify(
            &other.public_key(),
            &signed_bytes("relay-login v1", challenge),
            &signature
        ));

        // Empty content, and the longest label, are fine; Ed25519 is deterministic.
        let label = "x".repeat(64);
        let signature = identity.sign_with_label(&provider, &label, b"").unwrap();
        assert!(verify(&public_key, &signed_bytes(&label, b""), &signature));
        assert_eq!(signature, identity.sign_with_label(&provider, &label, b"").unwrap());
    }

    #[test]
    fn verify_with_label_accepts_exactly_what_sign_with_label_made() {
        let provider = Provider::default();
        let identity = Identity::create(&provider, b"ann").unwrap();
        let key = identity.public_key();
        let signature = identity.sign_with_label(&provider, "devlog-entry", b"tbs").unwrap();
        assert!(verify_with_label(&key, "devlog-entry", b"tbs", &signature).unwrap());
        assert!(!verify_with_label(&key, "devlog-consent", b"tbs", &signature).unwrap());
        assert!(!verify_with_label(&key, "devlog-entry", b"tbx", &signature).unwrap());
        let other = Identity::create(&provider, b"ann").unwrap().public_key();
        assert!(!verify_with_label(&other, "devlog-entry", b"tbs", &signature).unwrap());
        assert!(!verify_with_label(&key[..31], "devlog-entry", b"tbs", &signature).unwrap());
        assert!(!verify_with_label(&key, "devlog-entry", b"tbs", &signature[..63]).unwrap());
        assert_eq!(
            verify_with_label(&key, "", b"tbs", &signature).unwrap_err().code,
            code::INVALID_INPUT
        );
        // The identity point as key with the signature (R = identity, S = 0) verifies under
        // a lax check for every message; never here.
        let mut identity_point = [0u8; 32];
        identity_point[0] = 1;
        let mut forged = [0u8; 64];
        forged[0] = 1;
        assert!(!verify_with_label(&identity_point, "devlog-entry", b"tbs", &forged).unwrap());
    }

    #[test]
    fn a_loaded_identity_signs_with_the_same_key() {
        let provider = Provider::default();
        let created = Identity::create(&provider, b"bob").unwrap();
        let loaded = Identity::load(&provider, b"bob", &created.public_key()).unwrap();
        let signature = loaded.sign_with_label(&provider, "l", b"c").unwrap();
        assert!(verify(&created.public_key(), &signed_bytes("l", b"c"), &signature));
    }

    #[test]
    fn sign_with_label_refuses_bad_labels() {
        let provider = Provider::default();
        let identity = Identity::create(&provider, b"alice").unwrap();
        let too_long = "x".repeat(65);
        for label in [
            "",
            too_long.as_str(),
            "a\0b",
            "tab\there",
            "new\nline",
            "del\x7f",
            "caf\u{e9}",
            "\u{1F511}",
        ] {
            let err = identity.sign_with_label(&provider, label, b"content").unwrap_err();
            assert_eq!(err.code, code::INVALID_INPUT, "{label:?}");
        }
        for label in [" ", "~", "ping-web/relay login: v1 (2026)"] {
            assert!(
                identity.sign_with_label(&provider, label, b"content").is_ok(),
                "{label:?}"
            );
        }
    }

    #[test]
    fn signed_bytes_never_parse_as_an_mls_sign_content() {
        // RFC 9420 variable-length integer: the top two bits of the first byte give its size.
        let bytes = labeled_content("any label", b"any content").unwrap();
        let size = 1 << (bytes[0] >> 6);
        assert_eq!(size, 2);
        assert_ne!(&bytes[size..size + 8], b"MLS 1.0 ");
        assert_eq!(&bytes[..size + 1], b"pin");
    }

    #[test]
    fn user_ids_are_checked() {
        let provider = Provider::default();
        assert_eq!(
            Identity::create(&provider, b"").err().unwrap().code,
            code::INVALID_INPUT
        );
        assert_eq!(
            Identity::create(&provider, &[1; 256]).err().unwrap().code,
            code::INVALID_INPUT
        );
        assert_eq!(
            Identity::load(&provider, b"a", &[0; 32]).err().unwrap().code,
            code::NOT_FOUND
        );
    }
}
