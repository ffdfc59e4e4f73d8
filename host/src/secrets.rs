//! Credentials at rest: XChaCha20-Poly1305 under a master key, a random 192-bit nonce per
//! value, and the tenant, field, key id and origin as associated data, so a ciphertext moved
//! to another tenant or field fails to open. The key id lets the master key rotate: values
//! sealed under a previous key still open until they are re-sealed.
//!
//! A credential is bound to the [`Origin`] (scheme, host, port) it was set for: the store
//! hands it out only for a request to that origin, so moving a tenant's base URL elsewhere
//! leaves its credentials unset until they are set again. The origin is sealed into the
//! associated data, so editing the stored origin makes the value fail to open. Values sealed
//! by the release before origins (`origin` NULL, associated data `v1`) still open, and are
//! re-sealed with their tenant's current origin when `serve` starts.

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

/// Why a URL is no origin a credential may be sent to.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OriginError {
    #[error("{0:?} is not a URL")]
    NotUrl(String),
    #[error("{0:?} is not an http(s) URL with a host")]
    NotHttp(String),
    #[error(
        "{0} is plain http:// off loopback: credentials would cross the network in clear (use https://, or set the tenant's allow_plain_http)"
    )]
    PlainHttp(Origin),
}

/// Where a credential may be sent: the scheme, host and port of a URL, the port always
/// written (`https://qad.example.com:443`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    text: String,
    plain_http: bool,
    loopback: bool,
}

impl Origin {
    /// The origin of an `http` or `https` URL.
    pub fn of(raw: &str) -> Result<Origin, OriginError> {
        let u = url::Url::parse(raw.trim()).map_err(|_| OriginError::NotUrl(clip(raw)))?;
        let (Some(host), Some(port)) = (u.host(), u.port_or_known_default()) else {
            return Err(OriginError::NotHttp(clip(raw)));
        };
        let plain_http = match u.scheme() {
            "http" => true,
            "https" => false,
            _ => return Err(OriginError::NotHttp(clip(raw))),
        };
        let loopback = match &host {
            url::Host::Ipv4(ip) => ip.is_loopback(),
            url::Host::Ipv6(ip) => ip.is_loopback(),
            url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        };
        Ok(Origin {
            text: format!("{}://{host}:{port}", u.scheme()),
            plain_http,
            loopback,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Credentials travel in clear to this origin only if it is loopback or the tenant allows
    /// plain `http://` explicitly.
    pub fn check_transport(&self, allow_plain_http: bool) -> Result<(), OriginError> {
        if self.plain_http && !self.loopback && !allow_plain_http {
            return Err(OriginError::PlainHttp(self.clone()));
        }
        Ok(())
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A refused URL quoted in an error, at most 100 characters of it.
fn clip(raw: &str) -> String {
    raw.chars().take(100).collect()
}

/// Which of a tenant's base URLs a credential is sent to, by its field's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// `qad.*`: the QAD base URL.
    Qad,
    /// `twilio.*`: the Twilio base URL.
    Twilio,
}

impl Service {
    pub fn of_field(field: &str) -> Option<Service> {
        match field.split_once('.') {
            Some(("qad", _)) => Some(Service::Qad),
            Some(("twilio", _)) => Some(Service::Twilio),
            _ => None,
        }
    }
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
    /// The origin it was set for, sealed into the associated data; `None` for a value the
    /// previous release sealed (associated data without an origin).
    pub origin: Option<String>,
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

fn aad(tenant: &str, field: &str, key_id: &str, origin: Option<&str>) -> Vec<u8> {
    match origin {
        Some(origin) => format!("ml-connector/secret/v2\0{tenant}\0{field}\0{key_id}\0{origin}").into_bytes(),
        // The previous release's values: opened, never sealed so again.
        None => format!("ml-connector/secret/v1\0{tenant}\0{field}\0{key_id}").into_bytes(),
    }
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

    /// Seal a value for one origin: it opens only with that origin in its associated data.
    pub fn seal(&self, tenant: &str, field: &str, origin: &str, plaintext: &SecretString) -> Sealed {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ad = aad(tenant, field, &self.current.id, Some(origin));
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
            origin: Some(origin.to_string()),
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
        let ad = aad(tenant, field, &sealed.key_id, sealed.origin.as_deref());
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

    /// Whether a value must be re-sealed: under a previous key, or without an origin.
    pub fn is_stale(&self, sealed: &Sealed) -> bool {
        sealed.key_id != self.current.id || sealed.origin.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: &str = "https://qad.example.com:443";

    /// The origin is in the associated data: a stored origin changed to where a moved base
    /// URL points does not open, so the store's origin check cannot be edited around.
    #[test]
    fn a_value_sealed_for_one_origin_does_not_open_as_another() {
        let k = Keyring::new(&generate_master_key(), &[]).unwrap();
        let mut a = k.seal("t1", "qad.password", Q, &SecretString::new("one"));
        assert_eq!(a.origin.as_deref(), Some(Q));
        a.origin = Some("https://evil.example:443".into());
        assert!(matches!(k.open("t1", "qad.password", &a), Err(SecretError::Tampered { .. })));
        a.origin = None;
        assert!(matches!(k.open("t1", "qad.password", &a), Err(SecretError::Tampered { .. })));
    }

    /// A value the previous release sealed (associated data v1, no origin) still opens, and
    /// is stale until re-sealed with an origin.
    #[test]
    fn values_of_the_previous_release_open_and_are_stale() {
        let text = generate_master_key();
        let k = Keyring::new(&text, &[]).unwrap();
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let v1 = format!("ml-connector/secret/v1\0t1\0qad.password\0{}", k.current_key_id());
        let ciphertext = k
            .current
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: b"old",
                    aad: v1.as_bytes(),
                },
            )
            .unwrap();
        let legacy = Sealed {
            key_id: k.current_key_id().into(),
            nonce: nonce.to_vec(),
            ciphertext,
            origin: None,
        };
        assert_eq!(k.open("t1", "qad.password", &legacy).unwrap().expose(), "old");
        assert!(k.is_stale(&legacy));
        assert!(!k.is_stale(&k.seal("t1", "qad.password", Q, &SecretString::new("new"))));
    }

    #[test]
    fn origins_are_scheme_host_and_port_and_plain_http_is_for_loopback() {
        let o = |u: &str| Origin::of(u).unwrap();
        assert_eq!(o("https://QAD.example.com/clouderp?x=1").as_str(), Q);
        assert_eq!(o("http://127.0.0.1:8080/a").as_str(), "http://127.0.0.1:8080");
        assert_eq!(o("http://[::1]/").as_str(), "http://[::1]:80");
        assert_ne!(o("https://qad.example.com:8443"), o(Q));
        assert_ne!(o("http://qad.example.com:443"), o(Q));
        for ok in [
            "https://qad.example.com",
            "http://127.0.0.1:1",
            "http://[::1]:2",
            "http://localhost:3",
        ] {
            assert_eq!(o(ok).check_transport(false), Ok(()), "{ok}");
        }
        let plain = o("http://qad.example.com");
        assert!(matches!(plain.check_transport(false), Err(OriginError::PlainHttp(_))));
        assert_eq!(plain.check_transport(true), Ok(()));
        for bad in ["", "qad.example.com", "ftp://x.example", "file:///etc/passwd", "unix:/tmp/s"] {
            assert!(Origin::of(bad).is_err(), "{bad}");
        }
        assert_eq!(Service::of_field("qad.password"), Some(Service::Qad));
        assert_eq!(Service::of_field("twilio.auth_token"), Some(Service::Twilio));
        assert_eq!(Service::of_field("password"), None);
    }

    #[test]
    fn seal_and_open_round_trip_with_a_fresh_nonce_each_time() {
        let k = Keyring::new(&generate_master_key(), &[]).unwrap();
        let s = SecretString::new("hunter2");
        let a = k.seal("t1", "qad.password", Q, &s);
        let b = k.seal("t1", "qad.password", Q, &s);
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
        assert_eq!(k.open("t1", "qad.password", &a).unwrap(), s);
    }

    #[test]
    fn a_ciphertext_moved_to_another_tenant_or_field_does_not_open() {
        let k = Keyring::new(&generate_master_key(), &[]).unwrap();
        let a = k.seal("t1", "qad.password", Q, &SecretString::new("one"));
        assert!(matches!(k.open("t2", "qad.password", &a), Err(SecretError::Tampered { .. })));
        assert!(matches!(k.open("t1", "twilio.auth_token", &a), Err(SecretError::Tampered { .. })));
    }

    #[test]
    fn rotation_keeps_old_values_readable_and_marks_them_stale() {
        let old = generate_master_key();
        let before = Keyring::new(&old, &[]).unwrap();
        let sealed = before.seal("t1", "f", Q, &SecretString::new("v"));
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
