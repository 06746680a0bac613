//! The crypto of ciphersuite 0x0001 (`MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519`) and
//! nothing else: X25519, AES-128-GCM, SHA-256 (HKDF, HMAC) and Ed25519, from the same
//! RustCrypto crates `openmls_rust_crypto` uses, with HPKE (RFC 9180) from `hpke-rs` as there.
//!
//! `openmls_rust_crypto` supports every ciphersuite, so its code for P-256, P-384, K-256,
//! ChaCha20-Poly1305 and ML-DSA/ML-KEM was all reachable and all shipped, although this module
//! never uses it. Asked for anything else, this provider fails with the error OpenMLS expects
//! for an unsupported algorithm.

use std::sync::Mutex;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::Aes128Gcm;
use ed25519_dalek::Signer as _;
use hkdf::Hkdf;
use hmac::Mac;
use hpke_rs::{Hpke, Mode};
use hpke_rs_crypto::error::Error as HpkeError;
use hpke_rs_crypto::types::{AeadAlgorithm, KdfAlgorithm, KemAlgorithm};
use hpke_rs_crypto::{HpkeCrypto, HpkeTestRng};
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::random::OpenMlsRand;
use openmls_traits::types::{
    AeadType, Ciphersuite, CryptoError, ExporterSecret, HashType, HpkeAeadType, HpkeCiphertext, HpkeConfig,
    HpkeKdfType, HpkeKemType, HpkeKeyPair, SignatureScheme,
};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore as _, SeedableRng as _};
use sha2::{Digest as _, Sha256};
use tls_codec::SecretVLBytes;
use zeroize::Zeroize;

/// The one ciphersuite this module speaks.
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

const KEY_LEN: usize = 32;

/// Crypto and randomness for ciphersuite 0x0001: a ChaCha20 generator seeded from the
/// platform (`crypto.getRandomValues` in wasm), as `openmls_rust_crypto` has.
pub struct Crypto {
    rng: Mutex<ChaCha20Rng>,
}

impl Default for Crypto {
    fn default() -> Self {
        Crypto {
            rng: Mutex::new(ChaCha20Rng::from_entropy()),
        }
    }
}

impl Crypto {
    fn fill(&self, out: &mut [u8]) -> Result<(), RandError> {
        self.rng.lock().map_err(|_| RandError)?.fill_bytes(out);
        Ok(())
    }
}

/// Our HPKE configuration only: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM.
fn hpke(config: HpkeConfig) -> Result<Hpke<Hpke25519>, CryptoError> {
    match config {
        HpkeConfig(HpkeKemType::DhKem25519, HpkeKdfType::HkdfSha256, HpkeAeadType::AesGcm128) => Ok(Hpke::new(
            Mode::Base,
            KemAlgorithm::DhKem25519,
            KdfAlgorithm::HkdfSha256,
            AeadAlgorithm::Aes128Gcm,
        )),
        _ => Err(CryptoError::UnsupportedCiphersuite),
    }
}

fn sha256(hash_type: HashType) -> Result<(), CryptoError> {
    match hash_type {
        HashType::Sha2_256 => Ok(()),
        _ => Err(CryptoError::UnsupportedHashAlgorithm),
    }
}

fn aes128gcm(alg: AeadType) -> Result<(), CryptoError> {
    match alg {
        AeadType::Aes128Gcm => Ok(()),
        _ => Err(CryptoError::UnsupportedAeadAlgorithm),
    }
}

fn ed25519(alg: SignatureScheme) -> Result<(), CryptoError> {
    match alg {
        SignatureScheme::ED25519 => Ok(()),
        _ => Err(CryptoError::UnsupportedSignatureScheme),
    }
}

impl OpenMlsCrypto for Crypto {
    fn supports(&self, ciphersuite: Ciphersuite) -> Result<(), CryptoError> {
        if ciphersuite == CIPHERSUITE {
            Ok(())
        } else {
            Err(CryptoError::UnsupportedCiphersuite)
        }
    }

    fn supported_ciphersuites(&self) -> Vec<Ciphersuite> {
        vec![CIPHERSUITE]
    }

    fn hkdf_extract(&self, hash_type: HashType, salt: &[u8], ikm: &[u8]) -> Result<SecretVLBytes, CryptoError> {
        sha256(hash_type)?;
        Ok(Hkdf::<Sha256>::extract(Some(salt), ikm).0.as_slice().into())
    }

    fn hkdf_expand(
        &self,
        hash_type: HashType,
        prk: &[u8],
        info: &[u8],
        okm_len: usize,
    ) -> Result<SecretVLBytes, CryptoError> {
        sha256(hash_type)?;
        let hkdf = Hkdf::<Sha256>::from_prk(prk).map_err(|_| CryptoError::HkdfOutputLengthInvalid)?;
        let mut okm = vec![0u8; okm_len];
        hkdf.expand(info, &mut okm)
            .map_err(|_| CryptoError::HkdfOutputLengthInvalid)?;
        Ok(okm.into())
    }

    fn hmac(&self, hash_type: HashType, key: &[u8], message: &[u8]) -> Result<SecretVLBytes, CryptoError> {
        sha256(hash_type)?;
        let mut mac =
            <hmac::Hmac<Sha256> as hmac::KeyInit>::new_from_slice(key).map_err(|_| CryptoError::InvalidLength)?;
        mac.update(message);
        Ok(SecretVLBytes::new(mac.finalize().into_bytes().to_vec()))
    }

    fn hash(&self, hash_type: HashType, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        sha256(hash_type)?;
        Ok(Sha256::digest(data).to_vec())
    }

    fn aead_encrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        data: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        aes128gcm(alg)?;
        if nonce.len() != 12 {
            return Err(CryptoError::InvalidLength);
        }
        let cipher = Aes128Gcm::new_from_slice(key).map_err(|_| CryptoError::CryptoLibraryError)?;
        cipher
            .encrypt(nonce.into(), Payload { msg: data, aad })
            .map_err(|_| CryptoError::CryptoLibraryError)
    }

    fn aead_decrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        ct_tag: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        aes128gcm(alg)?;
        if nonce.len() != 12 {
            return Err(CryptoError::InvalidLength);
        }
        let cipher = Aes128Gcm::new_from_slice(key).map_err(|_| CryptoError::CryptoLibraryError)?;
        cipher
            .decrypt(nonce.into(), Payload { msg: ct_tag, aad })
            .map_err(|_| CryptoError::AeadDecryptionError)
    }

    fn signature_key_gen(&self, alg: SignatureScheme) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
        ed25519(alg)?;
        let mut rng = self.rng.lock().map_err(|_| CryptoError::InsufficientRandomness)?;
        let key = ed25519_dalek::SigningKey::generate(&mut *rng);
        Ok((key.to_bytes().to_vec(), key.verifying_key().to_bytes().to_vec()))
    }

    fn verify_signature(
        &self,
        alg: SignatureScheme,
        data: &[u8],
        pk: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        ed25519(alg)?;
        let key = ed25519_dalek::VerifyingKey::try_from(pk).map_err(|_| CryptoError::CryptoLibraryError)?;
        let signature: [u8; ed25519_dalek::SIGNATURE_LENGTH] =
            signature.try_into().map_err(|_| CryptoError::CryptoLibraryError)?;
        key.verify_strict(data, &ed25519_dalek::Signature::from(signature))
            .map_err(|_| CryptoError::InvalidSignature)
    }

    fn sign(&self, alg: SignatureScheme, data: &[u8], key: &[u8]) -> Result<Vec<u8>, CryptoError> {
        ed25519(alg)?;
        let key = ed25519_dalek::SigningKey::try_from(key).map_err(|_| CryptoError::CryptoLibraryError)?;
        Ok(key.sign(data).to_bytes().to_vec())
    }

    fn hpke_seal(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        aad: &[u8],
        ptxt: &[u8],
    ) -> Result<HpkeCiphertext, CryptoError> {
        let (kem_output, ciphertext) = hpke(config)?
            .seal(&pk_r.into(), info, aad, ptxt, None, None, None)
            .map_err(|e| match e {
                hpke_rs::HpkeError::InvalidInput => CryptoError::InvalidLength,
                _ => CryptoError::CryptoLibraryError,
            })?;
        Ok(HpkeCiphertext {
            kem_output: kem_output.into(),
            ciphertext: ciphertext.into(),
        })
    }

    fn hpke_open(
        &self,
        config: HpkeConfig,
        input: &HpkeCiphertext,
        sk_r: &[u8],
        info: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        hpke(config)?
            .open(
                input.kem_output.as_slice(),
                &sk_r.into(),
                info,
                aad,
                input.ciphertext.as_slice(),
                None,
                None,
                None,
            )
            .map_err(|_| CryptoError::HpkeDecryptionError)
    }

    fn hpke_setup_sender_and_export(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        exporter_context: &[u8],
        exporter_length: usize,
    ) -> Result<(Vec<u8>, ExporterSecret), CryptoError> {
        let (kem_output, context) = hpke(config)?
            .setup_sender(&pk_r.into(), info, None, None, None)
            .map_err(|_| CryptoError::SenderSetupError)?;
        let secret = context
            .export(exporter_context, exporter_length)
            .map_err(|_| CryptoError::ExporterError)?;
        Ok((kem_output, secret.into()))
    }

    fn hpke_setup_receiver_and_export(
        &self,
        config: HpkeConfig,
        enc: &[u8],
        sk_r: &[u8],
        info: &[u8],
        exporter_context: &[u8],
        exporter_length: usize,
    ) -> Result<ExporterSecret, CryptoError> {
        let context = hpke(config)?
            .setup_receiver(enc, &sk_r.into(), info, None, None, None)
            .map_err(|_| CryptoError::ReceiverSetupError)?;
        let secret = context
            .export(exporter_context, exporter_length)
            .map_err(|_| CryptoError::ExporterError)?;
        Ok(secret.into())
    }

    fn derive_hpke_keypair(&self, config: HpkeConfig, ikm: &[u8]) -> Result<HpkeKeyPair, CryptoError> {
        let (private, public) = hpke(config)?
            .derive_key_pair(ikm)
            .map_err(|e| match e {
                hpke_rs::HpkeError::InvalidInput => CryptoError::InvalidLength,
                _ => CryptoError::CryptoLibraryError,
            })?
            .into_keys();
        Ok(HpkeKeyPair {
            private: private.as_slice().into(),
            public: public.as_slice().into(),
        })
    }
}

/// Why randomness failed (it cannot, once seeded; the type is what OpenMLS asks for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandError;

impl std::fmt::Display for RandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no randomness")
    }
}

impl std::error::Error for RandError {}

impl OpenMlsRand for Crypto {
    type Error = RandError;

    fn random_array<const N: usize>(&self) -> Result<[u8; N], Self::Error> {
        let mut out = [0u8; N];
        self.fill(&mut out)?;
        Ok(out)
    }

    fn random_vec(&self, len: usize) -> Result<Vec<u8>, Self::Error> {
        let mut out = vec![0u8; len];
        self.fill(&mut out)?;
        Ok(out)
    }
}

// -- the primitives hpke-rs needs, for our configuration only ---------------------------------

/// `hpke-rs`'s crypto backend for DHKEM(X25519), HKDF-SHA256 and AES-128-GCM.
#[derive(Debug)]
pub struct Hpke25519;

/// The generator `hpke-rs` draws ephemeral keys from: ChaCha20, seeded from the platform.
pub struct HpkePrng(rand_chacha_010::ChaCha20Rng);

impl Zeroize for HpkePrng {
    fn zeroize(&mut self) {}
}

impl rand_core_010::TryRng for HpkePrng {
    type Error = core::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(rand_core_010::Rng::next_u32(&mut self.0))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(rand_core_010::Rng::next_u64(&mut self.0))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        rand_core_010::Rng::fill_bytes(&mut self.0, dst);
        Ok(())
    }
}

impl rand_core_010::TryCryptoRng for HpkePrng {}

impl HpkeTestRng for HpkePrng {
    type Error = RandError;

    fn try_fill_test_bytes(&mut self, dest: &mut [u8]) -> Result<(), Self::Error> {
        rand_core_010::Rng::fill_bytes(&mut self.0, dest);
        Ok(())
    }

    fn seed(&mut self, _: &[u8]) {}
}

fn x25519_key(bytes: &[u8], error: HpkeError) -> Result<[u8; KEY_LEN], HpkeError> {
    bytes.try_into().map_err(|_| error)
}

impl HpkeCrypto for Hpke25519 {
    type HpkePrng = HpkePrng;

    fn name() -> String {
        "ping-web X25519/SHA-256/AES-128-GCM".into()
    }

    fn supports_kdf(alg: KdfAlgorithm) -> Result<(), HpkeError> {
        match alg {
            KdfAlgorithm::HkdfSha256 => Ok(()),
            _ => Err(HpkeError::UnknownKdfAlgorithm),
        }
    }

    fn supports_kem(alg: KemAlgorithm) -> Result<(), HpkeError> {
        match alg {
            KemAlgorithm::DhKem25519 => Ok(()),
            _ => Err(HpkeError::UnknownKemAlgorithm),
        }
    }

    fn supports_aead(alg: AeadAlgorithm) -> Result<(), HpkeError> {
        match alg {
            AeadAlgorithm::Aes128Gcm | AeadAlgorithm::HpkeExport => Ok(()),
            _ => Err(HpkeError::UnknownAeadAlgorithm),
        }
    }

    fn prng() -> HpkePrng {
        let mut seed = [0u8; 32];
        // The platform's generator (crypto.getRandomValues in wasm), as for `Crypto`.
        rand_core::OsRng.fill_bytes(&mut seed);
        let rng = <rand_chacha_010::ChaCha20Rng as rand_core_010::SeedableRng>::from_seed(seed);
        seed.zeroize();
        HpkePrng(rng)
    }

    fn kdf_extract(alg: KdfAlgorithm, salt: &[u8], ikm: &[u8]) -> Result<Vec<u8>, HpkeError> {
        Self::supports_kdf(alg)?;
        Ok(Hkdf::<Sha256>::extract(Some(salt), ikm).0.to_vec())
    }

    fn kdf_expand(alg: KdfAlgorithm, prk: &[u8], info: &[u8], output_size: usize) -> Result<Vec<u8>, HpkeError> {
        Self::supports_kdf(alg)?;
        let hkdf = Hkdf::<Sha256>::from_prk(prk).map_err(|_| HpkeError::HpkeInvalidOutputLength)?;
        let mut okm = vec![0u8; output_size];
        hkdf.expand(info, &mut okm)
            .map_err(|_| HpkeError::HpkeInvalidOutputLength)?;
        Ok(okm)
    }

    fn dh(alg: KemAlgorithm, pk: &[u8], sk: &[u8]) -> Result<Vec<u8>, HpkeError> {
        use subtle::ConstantTimeEq;
        Self::supports_kem(alg)?;
        let sk = x25519_dalek::StaticSecret::from(x25519_key(sk, HpkeError::KemInvalidSecretKey)?);
        let pk = x25519_dalek::PublicKey::from(x25519_key(pk, HpkeError::KemInvalidPublicKey)?);
        let shared = sk.diffie_hellman(&pk).as_bytes().to_vec();
        if shared.ct_eq(&[0u8; KEY_LEN]).into() {
            return Err(HpkeError::KemInvalidPublicKey);
        }
        Ok(shared)
    }

    fn secret_to_public(alg: KemAlgorithm, sk: &[u8]) -> Result<Vec<u8>, HpkeError> {
        Self::supports_kem(alg)?;
        let sk = x25519_dalek::StaticSecret::from(x25519_key(sk, HpkeError::KemInvalidSecretKey)?);
        Ok(x25519_dalek::PublicKey::from(&sk).as_bytes().to_vec())
    }

    fn kem_key_gen(alg: KemAlgorithm, prng: &mut HpkePrng) -> Result<(Vec<u8>, Vec<u8>), HpkeError> {
        Self::supports_kem(alg)?;
        let mut bytes = [0u8; KEY_LEN];
        rand_core_010::Rng::fill_bytes(&mut prng.0, &mut bytes);
        let sk = x25519_dalek::StaticSecret::from(bytes);
        bytes.zeroize();
        let pk = x25519_dalek::PublicKey::from(&sk).as_bytes().to_vec();
        Ok((pk, sk.to_bytes().to_vec()))
    }

    fn kem_key_gen_derand(_alg: KemAlgorithm, _seed: &[u8]) -> Result<(Vec<u8>, Vec<u8>), HpkeError> {
        Err(HpkeError::UnsupportedKemOperation)
    }

    fn kem_encaps(_alg: KemAlgorithm, _pk_r: &[u8], _prng: &mut HpkePrng) -> Result<(Vec<u8>, Vec<u8>), HpkeError> {
        Err(HpkeError::UnsupportedKemOperation)
    }

    fn kem_decaps(_alg: KemAlgorithm, _ct: &[u8], _sk_r: &[u8]) -> Result<Vec<u8>, HpkeError> {
        Err(HpkeError::UnsupportedKemOperation)
    }

    fn dh_validate_sk(_alg: KemAlgorithm, _sk: &[u8]) -> Result<Vec<u8>, HpkeError> {
        // Only the NIST curves' secret keys need validating (as in hpke-rs-rust-crypto).
        Err(HpkeError::UnknownKemAlgorithm)
    }

    fn aead_seal(alg: AeadAlgorithm, key: &[u8], nonce: &[u8], aad: &[u8], msg: &[u8]) -> Result<Vec<u8>, HpkeError> {
        if alg != AeadAlgorithm::Aes128Gcm {
            return Err(HpkeError::UnknownAeadAlgorithm);
        }
        if nonce.len() != 12 {
            return Err(HpkeError::AeadInvalidNonce);
        }
        let cipher = Aes128Gcm::new_from_slice(key).map_err(|_| HpkeError::CryptoLibraryError("AEAD key".into()))?;
        cipher
            .encrypt(nonce.into(), Payload { msg, aad })
            .map_err(|_| HpkeError::CryptoLibraryError("AEAD seal".into()))
    }

    fn aead_open(alg: AeadAlgorithm, key: &[u8], nonce: &[u8], aad: &[u8], msg: &[u8]) -> Result<Vec<u8>, HpkeError> {
        if alg != AeadAlgorithm::Aes128Gcm {
            return Err(HpkeError::UnknownAeadAlgorithm);
        }
        if nonce.len() != 12 {
            return Err(HpkeError::AeadInvalidNonce);
        }
        if msg.len() < 16 {
            return Err(HpkeError::AeadInvalidCiphertext);
        }
        let cipher = Aes128Gcm::new_from_slice(key).map_err(|_| HpkeError::CryptoLibraryError("AEAD key".into()))?;
        cipher
            .decrypt(nonce.into(), Payload { msg, aad })
            .map_err(|_| HpkeError::AeadOpenError)
    }
}

#[cfg(test)]
mod tests {
    //! Checked against `openmls_rust_crypto`, the provider this one replaces: the same outputs
    //! where they are deterministic, and each opens what the other seals.

    use openmls_rust_crypto::RustCrypto;
    use openmls_traits::crypto::OpenMlsCrypto;
    use openmls_traits::types::{
        AeadType, CryptoError, HashType, HpkeAeadType, HpkeConfig, HpkeKdfType, HpkeKemType, SignatureScheme,
    };

    use super::Crypto;

    fn bytes(secret: &[u8]) -> Vec<u8> {
        secret.to_vec()
    }

    const CONFIG: HpkeConfig = HpkeConfig(
        HpkeKemType::DhKem25519,
        HpkeKdfType::HkdfSha256,
        HpkeAeadType::AesGcm128,
    );

    #[test]
    fn deterministic_functions_agree_with_rust_crypto() {
        let (ours, theirs) = (Crypto::default(), RustCrypto::default());
        let sha = HashType::Sha2_256;
        assert_eq!(
            ours.hkdf_extract(sha, b"salt", b"ikm").unwrap(),
            theirs.hkdf_extract(sha, b"salt", b"ikm").unwrap()
        );
        let prk = ours.hkdf_extract(sha, b"", &[7; 32]).unwrap();
        for len in [1, 16, 32, 100] {
            assert_eq!(
                ours.hkdf_expand(sha, prk.as_slice(), b"info", len).unwrap(),
                theirs.hkdf_expand(sha, prk.as_slice(), b"info", len).unwrap()
            );
        }
        assert_eq!(
            ours.hmac(sha, b"k", b"m").unwrap(),
            theirs.hmac(sha, b"k", b"m").unwrap()
        );
        assert_eq!(ours.hash(sha, b"data").unwrap(), theirs.hash(sha, b"data").unwrap());
        let (key, nonce) = ([3u8; 16], [4u8; 12]);
        let sealed = ours
            .aead_encrypt(AeadType::Aes128Gcm, &key, b"plain", &nonce, b"aad")
            .unwrap();
        assert_eq!(
            sealed,
            theirs
                .aead_encrypt(AeadType::Aes128Gcm, &key, b"plain", &nonce, b"aad")
                .unwrap()
        );
        assert_eq!(
            ours.aead_decrypt(AeadType::Aes128Gcm, &key, &sealed, &nonce, b"aad")
                .unwrap(),
            b"plain"
        );
        assert_eq!(
            ours.aead_decrypt(AeadType::Aes128Gcm, &key, &sealed, &nonce, b"other"),
            Err(CryptoError::AeadDecryptionError)
        );
        let pair = ours.derive_hpke_keypair(CONFIG, &[9; 32]).unwrap();
        let reference = theirs.derive_hpke_keypair(CONFIG, &[9; 32]).unwrap();
        assert_eq!(
            (bytes(&pair.private), pair.public.clone()),
            (bytes(&reference.private), reference.public.clone())
        );
    }

    #[test]
    fn signatures_agree_with_rust_crypto() {
        let (ours, theirs) = (Crypto::default(), RustCrypto::default());
        let ed = SignatureScheme::ED25519;
        let (private, public) = ours.signature_key_gen(ed).unwrap();
        let signature = ours.sign(ed, b"payload", &private).unwrap();
        assert_eq!(signature, theirs.sign(ed, b"payload", &private).unwrap()); // Ed25519 is deterministic
        theirs.verify_signature(ed, b"payload", &public, &signature).unwrap();
        ours.verify_signature(ed, b"payload", &public, &signature).unwrap();
        assert_eq!(
            ours.verify_signature(ed, b"other", &public, &signature),
            Err(CryptoError::InvalidSignature)
        );
        let (private, public) = theirs.signature_key_gen(ed).unwrap();
        ours.verify_signature(ed, b"x", &public, &theirs.sign(ed, b"x", &private).unwrap())
            .unwrap();
    }

    #[test]
    fn each_opens_what_the_other_seals() {
        let (ours, theirs) = (Crypto::default(), RustCrypto::default());
        let pair = ours.derive_hpke_keypair(CONFIG, &[1; 32]).unwrap();
        let (sk, pk) = (bytes(&pair.private), pair.public.clone());
        let (sk, pk) = (sk.as_slice(), pk.as_slice());
        let sealed = ours.hpke_seal(CONFIG, pk, b"info", b"aad", b"welcome").unwrap();
        assert_eq!(
            theirs.hpke_open(CONFIG, &sealed, sk, b"info", b"aad").unwrap(),
            b"welcome"
        );
        let sealed = theirs.hpke_seal(CONFIG, pk, b"info", b"aad", b"secret").unwrap();
        assert_eq!(ours.hpke_open(CONFIG, &sealed, sk, b"info", b"aad").unwrap(), b"secret");
        assert!(ours.hpke_open(CONFIG, &sealed, sk, b"info", b"other").is_err());

        let (enc, secret) = ours.hpke_setup_sender_and_export(CONFIG, pk, b"i", b"ctx", 32).unwrap();
        let theirs_secret = theirs
            .hpke_setup_receiver_and_export(CONFIG, &enc, sk, b"i", b"ctx", 32)
            .unwrap();
        assert_eq!(bytes(&secret), bytes(&theirs_secret));
        let (enc, secret) = theirs
            .hpke_setup_sender_and_export(CONFIG, pk, b"i", b"ctx", 16)
            .unwrap();
        let ours_secret = ours
            .hpke_setup_receiver_and_export(CONFIG, &enc, sk, b"i", b"ctx", 16)
            .unwrap();
        assert_eq!(bytes(&secret), bytes(&ours_secret));
    }

    #[test]
    fn other_algorithms_are_unsupported() {
        use openmls_traits::types::Ciphersuite;
        let ours = Crypto::default();
        assert!(ours.supports(super::CIPHERSUITE).is_ok());
        assert_eq!(ours.supported_ciphersuites(), vec![super::CIPHERSUITE]);
        assert_eq!(
            ours.supports(Ciphersuite::MLS_128_DHKEMP256_AES128GCM_SHA256_P256),
            Err(CryptoError::UnsupportedCiphersuite)
        );
        assert_eq!(
            ours.hash(HashType::Sha2_384, b""),
            Err(CryptoError::UnsupportedHashAlgorithm)
        );
        assert_eq!(
            ours.aead_encrypt(AeadType::ChaCha20Poly1305, &[0; 32], b"", &[0; 12], b""),
            Err(CryptoError::UnsupportedAeadAlgorithm)
        );
        assert_eq!(
            ours.signature_key_gen(SignatureScheme::ECDSA_SECP256R1_SHA256),
            Err(CryptoError::UnsupportedSignatureScheme)
        );
        let p256 = HpkeConfig(HpkeKemType::DhKemP256, HpkeKdfType::HkdfSha256, HpkeAeadType::AesGcm128);
        assert_eq!(
            ours.derive_hpke_keypair(p256, &[0; 32]).map(|_| ()),
            Err(CryptoError::UnsupportedCiphersuite)
        );
    }
}
