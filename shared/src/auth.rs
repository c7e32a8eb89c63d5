//! Password hashing (Argon2id) and bearer tokens (HS256 JWT), and the [`HashGate`] that bounds
//! what hashing may cost one process: a fixed number of hashes at once, each computed in a
//! block buffer reused from a pool, so resident memory stays at `permits × argon2 memory`
//! however many logins arrive (freed 19 MiB blocks are otherwise kept by the allocator's
//! per-thread arenas and resident memory only grows).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{Output, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
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
    /// Every hash slot stayed busy for the whole wait.
    #[error("too many logins are being checked at once")]
    Busy,
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

    /// A PHC string (`$argon2id$…`) for `password`, computed in `memory`. CPU-heavy: call it
    /// off the async runtime (through [`HashGate::run`]).
    pub fn hash_password(&self, password: &str, memory: &mut Vec<Block>) -> Result<String, Error> {
        let salt = SaltString::generate(&mut OsRng);
        let mut salt_bytes = [0u8; 64];
        let salt_bytes = salt
            .decode_b64(&mut salt_bytes)
            .map_err(|e| Error::Hash(e.to_string()))?;
        let mut out = vec![
            0u8;
            self.params
                .output_len()
                .unwrap_or(Params::DEFAULT_OUTPUT_LEN)
        ];
        compute(
            &self.params,
            password.as_bytes(),
            salt_bytes,
            &mut out,
            memory,
        )?;
        let output = Output::new(&out).map_err(|e| Error::Hash(e.to_string()))?;
        Ok(phc(&self.params, salt.as_str(), &output))
    }

    /// A hash with the current parameters that no password matches: verifying a password of
    /// an unknown user against it costs exactly what a known user's check costs.
    pub fn dummy_hash(&self) -> String {
        let mut random = [0u8; 32];
        OsRng.fill_bytes(&mut random);
        let salt = SaltString::generate(&mut OsRng);
        let output = Output::new(&random).expect("32 bytes is a valid Argon2 output length");
        phc(&self.params, salt.as_str(), &output)
    }

    /// True when `password` matches `hash`; the cost is read from the hash itself, and the
    /// hash is computed in `memory` (grown when the hash asks for more blocks than it holds).
    pub fn verify_password(&self, password: &str, hash: &str, memory: &mut Vec<Block>) -> bool {
        let Ok(parsed) = PasswordHash::new(hash) else {
            return false;
        };
        let (Ok(algorithm), Ok(params), Some(expected), Some(salt)) = (
            Algorithm::try_from(parsed.algorithm),
            Params::try_from(&parsed),
            parsed.hash,
            parsed.salt,
        ) else {
            return false;
        };
        let mut salt_bytes = [0u8; 64];
        let Ok(salt_bytes) = salt.decode_b64(&mut salt_bytes) else {
            return false;
        };
        let version = parsed
            .version
            .and_then(|v| Version::try_from(v).ok())
            .unwrap_or_default();
        let mut out = vec![0u8; expected.len()];
        let argon2 = Argon2::new(algorithm, version, params.clone());
        grow(memory, params.block_count());
        if argon2
            .hash_password_into_with_memory(
                password.as_bytes(),
                salt_bytes,
                &mut out,
                &mut memory[..params.block_count()],
            )
            .is_err()
        {
            return false;
        }
        // `Output`'s equality is constant-time.
        Output::new(&out).is_ok_and(|computed| computed == expected)
    }
}

fn grow(memory: &mut Vec<Block>, blocks: usize) {
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
}

fn compute(
    params: &Params,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
    memory: &mut Vec<Block>,
) -> Result<(), Error> {
    grow(memory, params.block_count());
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into_with_memory(password, salt, out, &mut memory[..params.block_count()])
        .map_err(|e| Error::Hash(e.to_string()))
}

fn phc(params: &Params, salt: &str, output: &Output) -> String {
    format!(
        "$argon2id$v=19$m={},t={},p={}${salt}${output}",
        params.m_cost(),
        params.t_cost(),
        params.p_cost()
    )
}

/// At most `permits` password hashes at once in this process, each in a block buffer taken
/// from a pool and given back afterwards, so hashing never holds more than
/// `permits × argon2 memory` however many logins arrive.
pub struct HashGate {
    permits: Arc<tokio::sync::Semaphore>,
    capacity: usize,
    wait: Duration,
    buffers: Mutex<Vec<Vec<Block>>>,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    computed: AtomicU64,
}

impl HashGate {
    /// A gate of `permits` slots (at least one); a caller waits at most `wait` for a slot.
    pub fn new(permits: usize, wait: Duration) -> Self {
        let permits = permits.max(1);
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(permits)),
            capacity: permits,
            wait,
            buffers: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            computed: AtomicU64::new(0),
        }
    }

    /// Runs `hash` on the blocking pool with a pooled block buffer once a slot is free, or
    /// answers [`Error::Busy`] after the wait. The slot is held until `hash` returns, even when
    /// the caller stops waiting for it.
    pub async fn run<T, F>(self: &Arc<Self>, hash: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    {
        let permit = tokio::time::timeout(self.wait, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| Error::Busy)?
            .map_err(|_| Error::Busy)?;
        let gate = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let now = gate.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            gate.peak.fetch_max(now, Ordering::SeqCst);
            let mut memory = gate
                .buffers
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .pop()
                .unwrap_or_default();
            let result = hash(&mut memory);
            gate.buffers
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(memory);
            gate.computed.fetch_add(1, Ordering::SeqCst);
            gate.in_flight.fetch_sub(1, Ordering::SeqCst);
            result
        })
        .await
        .map_err(|e| Error::Hash(format!("the hashing task failed: {e}")))
    }

    /// How many hashes may run at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Hashes running now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// The most hashes that ever ran at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// Hashes computed (verifications included) since the gate was built.
    pub fn computed(&self) -> u64 {
        self.computed.load(Ordering::SeqCst)
    }
}

/// How many hashes of `memory_kib` fit in `percent` of this process's memory limit (the
/// cgroup's, Lambda's configured size, or the machine's), at least one and at most one per cpu
/// (more at once would only queue for the cpus while holding their memory).
pub fn hash_permits_for_memory(memory_kib: u32, percent: u32) -> usize {
    let limit = memory_limit_bytes().unwrap_or(512 * 1024 * 1024);
    let budget = limit / 100 * u64::from(percent);
    let per_hash = u64::from(memory_kib.max(1)) * 1024;
    let by_memory = usize::try_from(budget / per_hash).unwrap_or(usize::MAX);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    by_memory.clamp(1, cpus)
}

/// The memory this process may use: its cgroup's limit (v2, then v1), Lambda's configured
/// size, or the machine's memory.
fn memory_limit_bytes() -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let cgroup = read("/sys/fs/cgroup/memory.max")
        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        // v1 reports "no limit" as a huge number.
        .filter(|&v| v < 1 << 50);
    let lambda = std::env::var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        .ok()
        .and_then(|mib| mib.parse::<u64>().ok())
        .map(|mib| mib * 1024 * 1024);
    let machine = read("/proc/meminfo").and_then(|info| {
        info.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
    });
    cgroup.or(lambda).or(machine)
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
        let mut memory = Vec::new();
        let hash = auth.hash_password("correct horse", &mut memory).unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"));
        assert!(auth.verify_password("correct horse", &hash, &mut memory));
        assert!(!auth.verify_password("wrong horse", &hash, &mut memory));
        assert!(!auth.verify_password("correct horse", "garbage", &mut memory));
        assert_eq!(
            memory.len(),
            1024,
            "one buffer of the hash's blocks, reused"
        );
    }

    #[test]
    fn hashes_agree_with_the_argon2_crate_both_ways() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let auth = authenticator(60);
        let mut memory = Vec::new();
        // Ours verifies with the crate's own verifier …
        let ours = auth.hash_password("pa55word", &mut memory).unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"pa55word", &parsed)
                .is_ok()
        );
        // … and a hash the crate made (other costs, as stored by an older release) verifies
        // with ours, growing the buffer to its size.
        let params = Params::new(2048, 2, 1, None).unwrap();
        let salt = SaltString::generate(&mut OsRng);
        let theirs = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(b"pa55word", &salt)
            .unwrap()
            .to_string();
        assert!(auth.verify_password("pa55word", &theirs, &mut memory));
        assert!(!auth.verify_password("pa55words", &theirs, &mut memory));
        assert_eq!(memory.len(), 2048);
    }

    #[test]
    fn the_dummy_hash_has_the_current_cost_and_matches_nothing() {
        let auth = authenticator(60);
        let dummy = auth.dummy_hash();
        assert!(
            dummy.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"),
            "{dummy}"
        );
        let mut memory = Vec::new();
        for guess in ["", "admin", "demo", "password"] {
            assert!(!auth.verify_password(guess, &dummy, &mut memory));
        }
        assert_eq!(memory.len(), 1024, "the dummy costs a full hash");
    }

    #[tokio::test]
    async fn the_gate_never_runs_more_hashes_than_its_permits() {
        let gate = Arc::new(HashGate::new(2, Duration::from_secs(30)));
        let mut handles = Vec::new();
        for _ in 0..12 {
            let gate = gate.clone();
            handles.push(tokio::spawn(async move {
                gate.run(|memory| {
                    memory.resize(8, Block::default());
                    std::thread::sleep(Duration::from_millis(30));
                })
                .await
            }));
        }
        for handle in handles {
            handle.await.unwrap().unwrap();
        }
        assert_eq!(gate.computed(), 12);
        assert_eq!(gate.peak(), 2, "two at once, never more");
        assert_eq!(gate.in_flight(), 0);
        let pooled = gate.buffers.lock().unwrap();
        assert!(
            pooled.len() <= 2,
            "at most one buffer per permit is ever made"
        );
        assert!(pooled.iter().all(|b| b.len() == 8), "buffers are reused");
    }

    #[tokio::test]
    async fn a_caller_that_finds_every_slot_busy_is_told_so() {
        let gate = Arc::new(HashGate::new(1, Duration::from_millis(50)));
        let busy = {
            let gate = gate.clone();
            tokio::spawn(async move {
                gate.run(|_| std::thread::sleep(Duration::from_millis(500)))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(matches!(gate.run(|_| ()).await, Err(Error::Busy)));
        busy.await.unwrap().unwrap();
        assert!(gate.run(|_| ()).await.is_ok(), "free again afterwards");
    }

    #[test]
    fn hash_permits_are_sized_from_memory_and_capped_by_cpus() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let permits = hash_permits_for_memory(19 * 1024, 25);
        assert!((1..=cpus).contains(&permits), "{permits}");
        // A hash larger than the whole memory still gets one slot.
        assert_eq!(hash_permits_for_memory(u32::MAX, 1), 1);
    }
}
