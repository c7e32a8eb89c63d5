//! Password hashing (Argon2id) and bearer tokens (HS256 JWT).

use argon2::password_hash::{
    PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng,
};
use argon2::{Algorithm, Argon2, Params, Version};
use chrono::{DateTime, Utc};
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::AuthSettings;
use crate::domain::Role;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the token is invalid or expired")]
    InvalidToken,
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// What a token says about its bearer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user's id.
    pub sub: Uuid,
    pub role: Role,
    pub iat: i64,
    pub exp: i64,
}

/// Issues and verifies tokens and hashes passwords; built once from [`AuthSettings`].
#[derive(Clone)]
pub struct Authenticator {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: chrono::Duration,
    params: Params,
}

impl Authenticator {
    pub fn new(settings: &AuthSettings) -> anyhow::Result<Self> {
        let secret = settings.jwt_secret.expose_secret().as_bytes();
        let mut validation = Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let params = Params::new(
            settings.argon2_memory_kib,
            settings.argon2_iterations,
            1,
            None,
        )
        .map_err(|e| anyhow::anyhow!("invalid argon2 parameters in auth settings: {e}"))?;
        Ok(Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl: chrono::Duration::seconds(settings.token_ttl_seconds as i64),
            params,
        })
    }

    /// A token for `user`, and when it expires.
    pub fn issue(&self, user: Uuid, role: Role) -> Result<(String, DateTime<Utc>), Error> {
        let now = Utc::now();
        let expires_at = now + self.ttl;
        let claims = Claims {
            sub: user,
            role,
            iat: now.timestamp(),
            exp: expires_at.timestamp(),
        };
        let token = jsonwebtoken::encode(&Header::default(), &claims, &self.encoding)
            .map_err(|_| Error::InvalidToken)?;
        Ok((token, expires_at))
    }

    /// The claims of a valid, unexpired token signed with our secret.
    pub fn verify(&self, token: &str) -> Result<Claims, Error> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|_| Error::InvalidToken)
    }

    /// A PHC string (`$argon2id$…`) for `password`. CPU-heavy: call it off the async runtime.
    pub fn hash_password(&self, password: &str) -> Result<String, Error> {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|e| Error::Hash(e.to_string()))
    }

    /// True when `password` matches `hash`; the cost is read from the hash itself.
    pub fn verify_password(&self, password: &str, hash: &str) -> bool {
        PasswordHash::new(hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn authenticator(ttl: i64) -> Authenticator {
        let settings = Settings::with_overrides([
            ("local_stack", "true".to_string()),
            ("auth.token_ttl_seconds", ttl.to_string()),
            ("auth.argon2_memory_kib", "1024".to_string()),
            ("auth.argon2_iterations", "1".to_string()),
        ])
        .unwrap();
        Authenticator::new(&settings.auth).unwrap()
    }

    #[test]
    fn a_token_round_trips() {
        let auth = authenticator(60);
        let id = Uuid::new_v4();
        let (token, _) = auth.issue(id, Role::Teacher).unwrap();
        let claims = auth.verify(&token).unwrap();
        assert_eq!(claims.sub, id);
        assert_eq!(claims.role, Role::Teacher);
    }

    #[test]
    fn tampered_and_foreign_tokens_are_refused() {
        let auth = authenticator(60);
        let (token, _) = auth.issue(Uuid::new_v4(), Role::Student).unwrap();
        let mut tampered = token.clone();
        tampered.pop();
        assert!(auth.verify(&tampered).is_err());
        assert!(auth.verify("not.a.token").is_err());
        let other = Settings::with_overrides([
            ("local_stack", "true".to_string()),
            (
                "auth.jwt_secret",
                "another-secret-that-is-long-enough-to-pass".to_string(),
            ),
        ])
        .unwrap();
        let (foreign, _) = Authenticator::new(&other.auth)
            .unwrap()
            .issue(Uuid::new_v4(), Role::Admin)
            .unwrap();
        assert!(auth.verify(&foreign).is_err());
    }

    #[test]
    fn an_expired_token_is_refused() {
        let auth = authenticator(60);
        let past = Utc::now().timestamp() - 60;
        let claims = Claims {
            sub: Uuid::new_v4(),
            role: Role::Student,
            iat: past - 60,
            exp: past,
        };
        let token = jsonwebtoken::encode(&Header::default(), &claims, &auth.encoding).unwrap();
        assert!(auth.verify(&token).is_err());
        let fresh = Claims {
            exp: Utc::now().timestamp() + 60,
            ..claims
        };
        let token = jsonwebtoken::encode(&Header::default(), &fresh, &auth.encoding).unwrap();
        assert!(
            auth.verify(&token).is_ok(),
            "the same token unexpired passes"
        );
    }

    #[test]
    fn passwords_verify_only_when_equal() {
        let auth = authenticator(60);
        let hash = auth.hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(auth.verify_password("correct horse", &hash));
        assert!(!auth.verify_password("wrong horse", &hash));
        assert!(!auth.verify_password("correct horse", "garbage"));
    }
}
