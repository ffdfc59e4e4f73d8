//! Credentials at rest: XChaCha20-Poly1305 under a master key, a random 192-bit nonce per
//! value, and the tenant, field and key id as associated data, so a ciphertext moved to
//! another tenant or field fails to open. The key id lets the master key rotate: values
//! sealed under a previous key still open until they are re-sealed.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

const KEY_PREFIX: &str = "mlk1.";

#[derive(Debug, Error)]
pub enum SecretError {
    #[error("master key is not valid: expected {KEY_PREFIX} followed by 32 bytes in base64url (make one with `ml-connector keygen`)")]
    BadMasterKey,
    #[error("secret {field} of tenant {tenant} was sealed under master key {key_id}, which is not configured")]
    UnknownKey { tenant: String, field: String, key_id: String },
    #[error("secret {field} of tenant {tenant} does not open: it was tampered with or belongs elsewhere")]
    Tampered { tenant: String, field: String },
}

/// A secret in memory: never printed, wiped on drop.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(s: impl Into<String>) -> Self {
        SecretString(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(***)")
    }
}

/// What the store keeps for one secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

struct MasterKey {
    id: String,
    cipher: XChaCha20Poly1305,
    /// HKDF-SHA-256 over the key: every other key is derived, the AEAD key is used for nothing else.
    derive: hkdf::Hkdf<sha2_011::Sha256>,
}

impl MasterKey {
    fn parse(text: &str) -> Result<Self, SecretError> {
        let b64 = text.trim().strip_prefix(KEY_PREFIX).ok_or(SecretError::BadMasterKey)?;
        let mut bytes = URL_SAFE_NO_PAD.decode(b64).map_err(|_| SecretError::BadMasterKey)?;
        if bytes.len() != 32 {
            bytes.zeroize();
            return Err(SecretError::BadMasterKey);
        }
        let id = hex::encode(&Sha256::new().chain_update(b"ml-connector key id\0").chain_update(&bytes).finalize()[..4]);
        let cipher = XChaCha20Poly1305::new(Key::from_slice(&bytes));
        let derive = hkdf::Hkdf::new(Some(b"ml-connector derived keys v1"), &bytes);
        bytes.zeroize();
        Ok(MasterKey { id, cipher, derive })
    }
}

/// The current master key and any previous ones still needed to open old values.
pub struct Keyring {
    current: MasterKey,
    previous: Vec<MasterKey>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring").field("current", &self.current.id).finish_non_exhaustive()
    }
}

/// A fresh master key in the text form `Keyring::new` takes.
pub fn generate_master_key() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    let text = format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    bytes.zeroize();
    text
}

fn aad(tenant: &str, field: &str, key_id: &str) -> Vec<u8> {
    format!("ml-connector/secret/v1\0{tenant}\0{field}\0{key_id}").into_bytes()
}

impl Keyring {
    pub fn new(current: &str, previous: &[String]) -> Result<Self, SecretError> {
        Ok(Keyring {
            current: MasterKey::parse(current)?,
            previous: previous.iter().map(|p| MasterKey::parse(p)).collect::<Result<_, _>>()?,
        })
    }

    pub fn current_key_id(&self) -> &str {
        &self.current.id
    }

    /// A 256-bit key for `purpose` (e.g. the plugin cache's MAC), derived from the current
    /// master key with HKDF-SHA-256; distinct purposes get unrelated keys.
    pub fn derive_key(&self, purpose: &str) -> Zeroizing<[u8; 32]> {
        let mut key = Zeroizing::new([0u8; 32]);
        self.current
            .derive
            .expand(purpose.as_bytes(), key.as_mut())
            .expect("32 bytes is a valid HKDF-SHA-256 output length");
        key
    }

    pub fn seal(&self, tenant: &str, field: &str, plaintext: &SecretString) -> Sealed {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ad = aad(tenant, field, &self.current.id);
        let ciphertext = self
            .current
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.expose().as_bytes(),
                    aad: &ad,
                },
            )
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory sizes");
        Sealed {
            key_id: self.current.id.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
        }
    }

    pub fn open(&self, tenant: &str, field: &str, sealed: &Sealed) -> Result<SecretString, SecretError> {
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == sealed.key_id)
            .ok_or_else(|| SecretError::UnknownKey {
                tenant: tenant.into(),
                field: field.into(),
                key_id: sealed.key_id.clone(),
            })?;
        let tampered = || SecretError::Tampered {
            tenant: tenant.into(),
            field: field.into(),
        };
        if sealed.nonce.len() != 24 {
            return Err(tampered());
        }
        let ad = aad(tenant, field, &sealed.key_id);
        let mut plain = key
            .cipher
            .decrypt(
                XNonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: &ad,
                },
            )
            .map_err(|_| tampered())?;
        let text = String::from_utf8(plain.clone()).map_err(|_| tampered());
        plain.zeroize();
        text.map(SecretString)
    }

    /// Whether a value must be re-sealed under the current key.
    pub fn is_stale(&self, sealed: &Sealed) -> bool {
        sealed.key_id != self.current.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_open_round_trip_with_a_fresh_nonce_each_time() {
        let k = Keyring::new(&generate_master_key(), &[]).unwrap();
        let s = SecretString::new("hunter2");
        let a = k.seal("t1", "qad.password", &s);
        let b = k.seal("t1", "qad.password", &s);
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
        assert_eq!(k.open("t1", "qad.password", &a).unwrap(), s);
    }

    #[test]
    fn a_ciphertext_moved_to_another_tenant_or_field_does_not_open() {
        let k = Keyring::new(&generate_master_key(), &[]).unwrap();
        let a = k.seal("t1", "qad.password", &SecretString::new("one"));
        assert!(matches!(k.open("t2", "qad.password", &a), Err(SecretError::Tampered { .. })));
        assert!(matches!(k.open("t1", "twilio.auth_token", &a), Err(SecretError::Tampered { .. })));
    }

    #[test]
    fn rotation_keeps_old_values_readable_and_marks_them_stale() {
        let old = generate_master_key();
        let before = Keyring::new(&old, &[]).unwrap();
        let sealed = before.seal("t1", "f", &SecretString::new("v"));
        let after = Keyring::new(&generate_master_key(), &[old]).unwrap();
        assert!(after.is_stale(&sealed));
        assert_eq!(after.open("t1", "f", &sealed).unwrap().expose(), "v");
        let without_old = Keyring::new(&generate_master_key(), &[]).unwrap();
        assert!(matches!(without_old.open("t1", "f", &sealed), Err(SecretError::UnknownKey { .. })));
    }

    #[test]
    fn derived_keys_differ_by_purpose_and_master_key_and_are_not_the_master_key() {
        let text = generate_master_key();
        let k = Keyring::new(&text, &[]).unwrap();
        let a = k.derive_key("plugin cache mac v1");
        assert_eq!(*a, *Keyring::new(&text, &[]).unwrap().derive_key("plugin cache mac v1"));
        assert_ne!(*a, *k.derive_key("another purpose"));
        assert_ne!(
            *a,
            *Keyring::new(&generate_master_key(), &[]).unwrap().derive_key("plugin cache mac v1")
        );
        let raw = URL_SAFE_NO_PAD.decode(text.strip_prefix(KEY_PREFIX).unwrap()).unwrap();
        assert_ne!(a.as_slice(), raw.as_slice());
    }

    #[test]
    fn bad_master_keys_are_refused() {
        for bad in [
            "",
            "mlk1.",
            "mlk1.AAAA",
            "not-a-key",
            &generate_master_key().replace("mlk1.", "mlk2."),
        ] {
            assert!(Keyring::new(bad, &[]).is_err(), "{bad}");
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        assert_eq!(format!("{:?}", SecretString::new("hunter2")), "SecretString(***)");
    }
}
