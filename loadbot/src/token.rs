//! Session tokens for a shard in production mode (PROTOCOL.md, "Tokens").
//!
//! `BASE64URL(payload) "." BASE64URL(HMAC-SHA256(secret, BASE64URL(payload)))`,
//! unpadded, with payload the JSON `{"sub", "name", "exp"}`. Tokens are minted
//! when a bot connects rather than stored per bot: a few microseconds per
//! connect buys back a hundred bytes per idle bot.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

#[derive(serde::Serialize)]
struct Payload<'a> {
    sub: &'a str,
    name: &'a str,
    exp: u64,
}

/// A token for player `sub` named `name`, valid until `exp` (Unix seconds).
pub fn mint(secret: &[u8], sub: &str, name: &str, exp: u64) -> String {
    let payload = serde_json::to_vec(&Payload { sub, name, exp })
        .expect("a struct of two strings and a number always serialises");
    let payload = URL_SAFE_NO_PAD.encode(payload);
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(payload.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{payload}.{signature}")
}

/// Unix seconds `ttl` from now.
pub fn expiry_in(ttl: Duration) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (now + ttl).as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computed independently with Python's `hmac` and `base64` modules.
    #[test]
    fn matches_an_independent_implementation() {
        assert_eq!(
            mint(b"sekrit", "bot-7", "bot-7", 2_000_000_000),
            "eyJzdWIiOiJib3QtNyIsIm5hbWUiOiJib3QtNyIsImV4cCI6MjAwMDAwMDAwMH0\
             .F1I14kzG7EJc1Zre0yT9Szot2AAQf-dtsuF5jRYrgVw"
        );
    }

    #[test]
    fn payload_decodes_to_the_claims() {
        let token = mint(b"k", "bot-1", "Bot One", 42);
        let (payload, signature) = token.split_once('.').expect("two parts");
        assert!(!token.contains('='), "unpadded");
        let json = URL_SAFE_NO_PAD.decode(payload).expect("base64url");
        let value: serde_json::Value = serde_json::from_slice(&json).expect("json");
        assert_eq!(value["sub"], "bot-1");
        assert_eq!(value["name"], "Bot One");
        assert_eq!(value["exp"], 42);
        assert_eq!(URL_SAFE_NO_PAD.decode(signature).expect("b64").len(), 32);
    }

    #[test]
    fn expiry_is_in_the_future() {
        let now = expiry_in(Duration::ZERO);
        let later = expiry_in(Duration::from_secs(3600));
        assert!((now + 3600..=now + 3601).contains(&later));
    }
}
