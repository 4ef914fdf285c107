//! Encryption at rest for shared stores: AES-256-GCM.
//!
//! A value is `nonce (12 bytes) || ciphertext+tag`, with the credential id as
//! associated data, so a value copied to another credential's key does not
//! decrypt. Several keys may be configured: the first encrypts, any
//! decrypts, so a key is rotated by putting the new one first and removing
//! the old one once every value has been rewritten (each refresh rewrites).

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use std::fmt;

/// The configured keys.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<Aes256Gcm>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// Why a key or a value was refused. Never contains key material.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// A configured key is not base64 of 32 bytes.
    #[error("encryption key {index} is not valid base64 of 32 bytes ({problem})")]
    BadKey {
        /// Position in `encryption_keys`.
        index: usize,
        /// What is wrong.
        problem: String,
    },
    /// No keys configured.
    #[error("no encryption key configured")]
    NoKeys,
    /// No configured key decrypts the value.
    #[error("no configured encryption key decrypts it (wrong or rotated-out key?)")]
    Undecryptable,
    /// Encryption failed (should not happen).
    #[error("encryption failed")]
    Encrypt,
}

impl Keyring {
    /// Keys from their base64 text, first one encrypting.
    pub fn from_base64<'a>(keys: impl IntoIterator<Item = &'a str>) -> Result<Self, CryptoError> {
        let mut out = Vec::new();
        for (index, k) in keys.into_iter().enumerate() {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(k.trim())
                // Not the decoder's message: it quotes a character of the
                // key and where it sits.
                .map_err(|_| CryptoError::BadKey {
                    index,
                    problem: "not standard base64: A-Z, a-z, 0-9, + and /, padded with =".into(),
                })?;
            if raw.len() != 32 {
                return Err(CryptoError::BadKey {
                    index,
                    problem: format!("{} bytes", raw.len()),
                });
            }
            out.push(Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&raw)));
        }
        if out.is_empty() {
            return Err(CryptoError::NoKeys);
        }
        Ok(Self { keys: out })
    }

    /// Encrypts `plain` for credential `id` with the first key.
    pub fn seal(&self, id: &str, plain: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let key = self.keys.first().ok_or(CryptoError::NoKeys)?;
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ct = key
            .encrypt(
                &nonce,
                Payload {
                    msg: plain,
                    aad: id.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Encrypt)?;
        let mut out = Vec::with_capacity(nonce.len() + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Decrypts a value of credential `id` with whichever key fits.
    pub fn open(&self, id: &str, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < 12 + 16 {
            return Err(CryptoError::Undecryptable);
        }
        let (nonce, ct) = sealed.split_at(12);
        let nonce = Nonce::from_slice(nonce);
        self.keys
            .iter()
            .find_map(|k| {
                k.decrypt(
                    nonce,
                    Payload {
                        msg: ct,
                        aad: id.as_bytes(),
                    },
                )
                .ok()
            })
            .ok_or(CryptoError::Undecryptable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // "0123456789abcdef" x2
    const K2: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

    #[test]
    fn round_trip_rotation_and_binding() {
        let old = Keyring::from_base64([K1]).unwrap();
        let sealed = old.seal("crm", b"secret-state").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        // Rotation: the new key first, the old one still decrypts.
        let rotated = Keyring::from_base64([K2, K1]).unwrap();
        assert_eq!(rotated.open("crm", &sealed).unwrap(), b"secret-state");
        assert_ne!(
            rotated.seal("crm", b"x").unwrap(),
            old.seal("crm", b"x").unwrap()
        );
        // Wrong key, or a value moved to another credential: refused.
        let other = Keyring::from_base64([K2]).unwrap();
        assert_eq!(other.open("crm", &sealed), Err(CryptoError::Undecryptable));
        assert_eq!(
            old.open("billing", &sealed),
            Err(CryptoError::Undecryptable)
        );
    }

    #[test]
    fn bad_keys_are_named_without_their_value() {
        let e = Keyring::from_base64([K1, "c2hvcnQ="]).unwrap_err();
        assert_eq!(
            e,
            CryptoError::BadKey {
                index: 1,
                problem: "5 bytes".into()
            }
        );
        // A key with a bad character (here one URL-safe base64 character
        // in a real key): neither the character nor its place is told.
        let url_safe = format!("{}-{}", &K1[..4], &K1[5..]);
        let e = Keyring::from_base64([url_safe.as_str()])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "encryption key 0 is not valid base64 of 32 bytes (not standard base64: A-Z, a-z, 0-9, + and /, padded with =)"
        );
        assert!(Keyring::from_base64(["!!!"]).is_err());
        assert_eq!(Keyring::from_base64([]).unwrap_err(), CryptoError::NoKeys);
    }
}
