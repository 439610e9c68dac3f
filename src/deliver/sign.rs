//! Standard Webhooks signing (<https://www.standardwebhooks.com>): a secret is `whsec_` followed by
//! the base64 of its key; a request carries `webhook-id`, `webhook-timestamp` (unix seconds) and
//! `webhook-signature: v1,BASE64(HMAC-SHA256(key, id + "." + timestamp + "." + body))`, so that
//! the standard's own libraries verify it unchanged.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The prefix of a secret.
const PREFIX: &str = "whsec_";

/// Key lengths a secret may have, in bytes.
pub const KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// Standard base64 that takes the key with or without its padding.
const SECRET_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A subscription's signing key, decoded from its secret.
#[derive(Clone)]
pub struct Secret {
    key: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Why a secret was refused (never echoing it).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("a secret starts with whsec_")]
    Prefix,
    #[error("the secret after whsec_ is not base64")]
    Base64,
    #[error("the secret's key has {0} bytes, not 24 to 64")]
    Length(usize),
}

impl Secret {
    /// Decodes `whsec_` + base64 of 24 to 64 bytes.
    pub fn parse(text: &str) -> Result<Secret, SecretError> {
        let encoded = text.strip_prefix(PREFIX).ok_or(SecretError::Prefix)?;
        let key = SECRET_BASE64.decode(encoded).map_err(|_| SecretError::Base64)?;
        if !KEY_BYTES.contains(&key.len()) {
            return Err(SecretError::Length(key.len()));
        }
        Ok(Secret { key })
    }

    /// The `webhook-signature` header's value for one request.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks libraries' own tests.
    #[test]
    fn signs_as_the_standard_does() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn refuses_malformed_secrets() {
        assert_eq!(Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err(), SecretError::Prefix);
        assert_eq!(Secret::parse("whsec_not base64!").unwrap_err(), SecretError::Base64);
        assert_eq!(Secret::parse("whsec_c2hvcnQ=").unwrap_err(), SecretError::Length(5));
        let long = base64::engine::general_purpose::STANDARD.encode([7_u8; 65]);
        assert_eq!(Secret::parse(&format!("whsec_{long}")).unwrap_err(), SecretError::Length(65));
        let padded = base64::engine::general_purpose::STANDARD.encode([7_u8; 25]);
        assert!(padded.ends_with('='));
        assert!(Secret::parse(&format!("whsec_{padded}")).is_ok());
        assert!(Secret::parse(&format!("whsec_{}", padded.trim_end_matches('='))).is_ok());
    }
}
