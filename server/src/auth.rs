//! Identity: signed session tokens, resume tokens and dev-mode guests.
//!
//! A token is `BASE64URL(payload) "." BASE64URL(HMAC-SHA256(secret, first part))`
//! with a JSON payload (see PROTOCOL.md). Tokens are checked in the handshake
//! only; nothing afterwards trusts the client's word about who it is.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use protocol::msg::Hello;
use protocol::ErrorCode;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use thiserror::Error;

use crate::config::{AuthConfig, AuthMode};

type HmacSha256 = Hmac<Sha256>;

/// Longest display name kept; longer names are cut.
const MAX_NAME_CHARS: usize = 24;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub player_id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default)]
    pub name: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Set in resume tokens only: the session the token was issued to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("this server requires a token")]
    Required,
    #[error("token is malformed or its signature is wrong")]
    Invalid,
    #[error("token expired")]
    Expired,
}

impl AuthError {
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::Required => ErrorCode::AuthRequired,
            AuthError::Invalid => ErrorCode::AuthInvalid,
            AuthError::Expired => ErrorCode::AuthExpired,
        }
    }
}

pub struct Auth {
    mode: AuthMode,
    key: Vec<u8>,
    resume_ttl_s: u64,
}

impl Auth {
    pub fn new(config: &AuthConfig) -> Auth {
        let key = if config.secret.is_empty() {
            // Dev mode without a secret: tokens only need to verify within
            // this process.
            rand::random::<[u8; 32]>().to_vec()
        } else {
            config.secret.as_bytes().to_vec()
        };
        Auth {
            mode: config.mode,
            key,
            resume_ttl_s: config.resume_ttl_s,
        }
    }

    /// The shard's `Auth`: [`Auth::new`] over `auth`, except that a dev-mode
    /// shard of a cluster without `auth.secret` signs with a key derived
    /// from `cluster.secret` instead of a random one, so that the resume
    /// tokens of its guests work on every shard of the cluster.
    pub fn for_shard(config: &crate::config::Config) -> Auth {
        let mut auth = Auth::new(&config.auth);
        if config.auth.secret.is_empty() && config.cluster.enabled() {
            let mut mac = HmacSha256::new_from_slice(config.cluster.secret.as_bytes())
                .expect("HMAC takes any key length");
            mac.update(b"tessera dev-mode token key");
            auth.key = mac.finalize().into_bytes().to_vec();
        }
        auth
    }

    /// Who the hello speaks for, at time `now` (Unix seconds), and for a
    /// resume, the session its token was issued to (checked against the
    /// seat table by the caller: a resume token works once).
    pub fn authenticate(
        &self,
        hello: &Hello,
        now: u64,
    ) -> Result<(Identity, Option<String>), AuthError> {
        if let Some(resume) = &hello.resume {
            let claims = self.verify(resume, now)?;
            let Some(sid) = claims.sid else {
                return Err(AuthError::Invalid);
            };
            let identity = Identity {
                player_id: claims.sub,
                name: claims.name,
            };
            return Ok((identity, Some(sid)));
        }
        self.authenticate_fresh(hello, now)
            .map(|identity| (identity, None))
    }

    fn authenticate_fresh(&self, hello: &Hello, now: u64) -> Result<Identity, AuthError> {
        match (&hello.token, self.mode) {
            (Some(token), _) => {
                let claims = self.verify(token, now)?;
                if claims.sid.is_some() {
                    // A resume token is not a session token.
                    return Err(AuthError::Invalid);
                }
                let name = sanitize_name(&claims.name).unwrap_or_else(|| claims.sub.clone());
                Ok(Identity {
                    player_id: claims.sub,
                    name,
                })
            }
            (None, AuthMode::Production) => Err(AuthError::Required),
            (None, AuthMode::Dev) => {
                let suffix = format!("{:08x}", rand::random::<u32>());
                let name = hello
                    .name
                    .as_deref()
                    .and_then(sanitize_name)
                    .unwrap_or_else(|| format!("guest-{}", &suffix[..4]));
                Ok(Identity {
                    player_id: format!("g-{suffix}{:08x}", rand::random::<u32>()),
                    name,
                })
            }
        }
    }

    /// A resume token for `identity`'s session `sid`.
    pub fn resume_token(&self, identity: &Identity, sid: &str, now: u64) -> String {
        self.mint(&Claims {
            sub: identity.player_id.clone(),
            name: identity.name.clone(),
            exp: now + self.resume_ttl_s,
            sid: Some(sid.to_string()),
        })
    }

    pub fn mint(&self, claims: &Claims) -> String {
        mint_with_key(&self.key, claims)
    }

    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, AuthError> {
        let (payload, signature) = token.split_once('.').ok_or(AuthError::Invalid)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| AuthError::Invalid)?;
        let mut mac = HmacSha256::new_from_slice(&self.key).map_err(|_| AuthError::Invalid)?;
        mac.update(payload.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| AuthError::Invalid)?;
        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| AuthError::Invalid)?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| AuthError::Invalid)?;
        if claims.sub.is_empty() || claims.sub.len() > 128 {
            return Err(AuthError::Invalid);
        }
        if claims.exp <= now {
            return Err(AuthError::Expired);
        }
        Ok(claims)
    }
}

/// Sign `claims` with `secret`: what `tessera-server token` prints.
pub fn mint_with_key(key: &[u8], claims: &Claims) -> String {
    // Claims is plain data; JSON encoding cannot fail.
    let json = serde_json::to_vec(claims).expect("claims serialize to JSON");
    let payload = URL_SAFE_NO_PAD.encode(json);
    // HMAC accepts keys of any length.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(payload.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{payload}.{signature}")
}

/// Trim, drop control characters and cut to [`MAX_NAME_CHARS`]; `None` when
/// nothing is left.
pub fn sanitize_name(name: &str) -> Option<String> {
    let clean: String = name
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME_CHARS)
        .collect();
    let clean = clean.trim().to_string();
    (!clean.is_empty()).then_some(clean)
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::PROTOCOL_VERSION;

    #[test]
    fn dev_shards_of_one_cluster_verify_each_others_tokens() {
        let shard = |cluster_secret: &str| {
            let mut config = crate::config::Config::default();
            config.cluster.redis = "redis://127.0.0.1:1/0".into();
            config.cluster.secret = cluster_secret.into();
            Auth::for_shard(&config)
        };
        let claims = Claims {
            sub: "g-1".into(),
            name: "gus".into(),
            exp: 100,
            sid: Some("s-1".into()),
        };
        let secret = "c".repeat(32);
        let token = shard(&secret).mint(&claims);
        assert_eq!(shard(&secret).verify(&token, 50).unwrap(), claims);
        assert!(shard(&"d".repeat(32)).verify(&token, 50).is_err());
        // Not the cluster secret itself: a tunnel secret mints no tokens.
        assert!(Auth {
            mode: AuthMode::Dev,
            key: secret.into_bytes(),
            resume_ttl_s: 60
        }
        .verify(&token, 50)
        .is_err());
    }

    fn auth(mode: AuthMode) -> Auth {
        Auth::new(&AuthConfig {
            mode,
            secret: "0123456789abcdef0123".into(),
            resume_ttl_s: 60,
        })
    }

    fn hello(token: Option<String>, resume: Option<String>) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            token,
            resume,
            name: Some("  ada\u{7}  ".into()),
        }
    }

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "p1".into(),
            name: "Ada".into(),
            exp,
            sid: None,
        }
    }

    #[test]
    fn dev_mode_hands_out_guests() {
        let (id, resumed) = auth(AuthMode::Dev)
            .authenticate(&hello(None, None), 100)
            .unwrap();
        assert_eq!(resumed, None);
        assert!(id.player_id.starts_with("g-"));
        assert_eq!(id.name, "ada");
    }

    #[test]
    fn production_requires_a_valid_unexpired_token() {
        let a = auth(AuthMode::Production);
        assert_eq!(
            a.authenticate(&hello(None, None), 100),
            Err(AuthError::Required)
        );
        let good = a.mint(&claims(200));
        let (id, _) = a
            .authenticate(&hello(Some(good.clone()), None), 100)
            .unwrap();
        assert_eq!(id.player_id, "p1");
        assert_eq!(id.name, "Ada");
        assert_eq!(
            a.authenticate(&hello(Some(good.clone()), None), 200),
            Err(AuthError::Expired)
        );
        let mut forged = good.clone();
        forged.insert(3, 'x');
        assert_eq!(
            a.authenticate(&hello(Some(forged), None), 100),
            Err(AuthError::Invalid)
        );
        let other_key = mint_with_key(b"another-secret-of-16", &claims(200));
        assert_eq!(
            a.authenticate(&hello(Some(other_key), None), 100),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            a.authenticate(&hello(Some("garbage".into()), None), 100),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn resume_tokens_are_not_session_tokens_and_vice_versa() {
        let a = auth(AuthMode::Production);
        let id = Identity {
            player_id: "p1".into(),
            name: "Ada".into(),
        };
        let resume = a.resume_token(&id, "s1", 100);
        assert_eq!(
            a.authenticate(&hello(None, Some(resume.clone())), 120),
            Ok((id, Some("s1".to_string())))
        );
        assert_eq!(
            a.authenticate(&hello(Some(resume), None), 120),
            Err(AuthError::Invalid)
        );
        let session = a.mint(&claims(200));
        assert_eq!(
            a.authenticate(&hello(None, Some(session)), 120),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize_name("  \u{0}\t "), None);
        assert_eq!(
            sanitize_name(&"x".repeat(100)).unwrap().len(),
            MAX_NAME_CHARS
        );
    }
}
