//! Login throttling, fleet-wide: the counters live in Redis, so every API process (pods,
//! Lambda instances) sees the same ones.
//!
//! Two things are counted. Per account: failed logins; from the `lockout_after_failures`-th on,
//! each failure locks the account for `lockout_base_seconds`, doubled by every further failure
//! up to `lockout_max_seconds`; a success forgets them. Per client address, in fixed windows:
//! attempts and failures. A login is checked *before* its password is hashed, so a refused
//! login costs one Redis round trip and no Argon2 work. Accounts are counted whether they exist
//! or not, so the throttle says nothing about which names exist.

use fred::prelude::*;
use fred::types::scripts::Script;
use sha2::{Digest, Sha256};

use crate::config::LoginSettings;
use crate::redis::Keys;

/// Why a login is refused before its password is checked, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The account is locked after failed logins.
    AccountLocked { retry_after: u64 },
    /// Too many failed logins from this address.
    AddressFailures { retry_after: u64 },
    /// Too many logins from this address.
    AddressAttempts { retry_after: u64 },
}

impl Refusal {
    pub fn retry_after(&self) -> u64 {
        match *self {
            Refusal::AccountLocked { retry_after }
            | Refusal::AddressFailures { retry_after }
            | Refusal::AddressAttempts { retry_after } => retry_after,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let why = match self {
            Refusal::AccountLocked { .. } => {
                "this account is locked for a while after failed logins"
            }
            Refusal::AddressFailures { .. } => "too many failed logins from this address",
            Refusal::AddressAttempts { .. } => "too many logins from this address",
        };
        write!(f, "{why}; try again in {} s", self.retry_after())
    }
}

/// Checks the lock and the address limits, and counts the attempt.
/// KEYS: account lock, address attempts, address failures.
/// ARGV: address window (ms), max attempts, max failures.
/// Returns {kind, milliseconds}: 0 allowed, 1 account locked, 2 address failures, 3 attempts.
const CHECK: &str = r#"
local lock = redis.call('PTTL', KEYS[1])
if lock > 0 then return {1, lock} end
local failures = tonumber(redis.call('GET', KEYS[3]) or '0')
if failures >= tonumber(ARGV[3]) then
  local ttl = redis.call('PTTL', KEYS[3])
  if ttl < 0 then redis.call('PEXPIRE', KEYS[3], ARGV[1]); ttl = tonumber(ARGV[1]) end
  return {2, ttl}
end
local attempts = redis.call('INCR', KEYS[2])
local ttl = redis.call('PTTL', KEYS[2])
if ttl < 0 then redis.call('PEXPIRE', KEYS[2], ARGV[1]); ttl = tonumber(ARGV[1]) end
if attempts > tonumber(ARGV[2]) then return {3, ttl} end
return {0, 0}
"#;

/// Counts a failure against the account and the address, and locks the account once it has
/// failed often enough. KEYS: account failures, account lock, address failures.
/// ARGV: lockout after, base (ms), max (ms), failure memory (ms), address window (ms).
/// Returns the lockout set, in ms (0: none).
const FAILED: &str = r#"
local n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local a = redis.call('INCR', KEYS[3])
if redis.call('PTTL', KEYS[3]) < 0 then redis.call('PEXPIRE', KEYS[3], ARGV[5]) end
local after = tonumber(ARGV[1])
if n < after then return 0 end
local ms = tonumber(ARGV[2]) * (2 ^ math.min(n - after, 40))
ms = math.min(ms, tonumber(ARGV[3]))
redis.call('SET', KEYS[2], '1', 'PX', math.floor(ms))
return math.floor(ms)
"#;

/// The login throttle of one installation.
#[derive(Clone)]
pub struct LoginThrottle {
    client: Client,
    keys: Keys,
    settings: LoginSettings,
    check: Script,
    failed: Script,
}

/// A name for the account in Redis keys: a digest, so any string a client sends (up to the
/// body limit) makes a key of the same small size.
fn account_key(username: &str) -> String {
    hex::encode(&Sha256::digest(username.as_bytes())[..16])
}

fn ms(seconds: u64) -> String {
    seconds.saturating_mul(1000).to_string()
}

/// Whole seconds to wait, rounded up, at least one.
fn seconds(ms: i64) -> u64 {
    (ms.max(1) as u64).div_ceil(1000)
}

impl LoginThrottle {
    pub fn new(client: Client, keys: Keys, settings: LoginSettings) -> Self {
        Self {
            client,
            keys,
            settings,
            check: Script::from_lua(CHECK),
            failed: Script::from_lua(FAILED),
        }
    }

    /// Whether a login of `username` from `address` may be checked now; counts the attempt.
    pub async fn check(&self, username: &str, address: &str) -> Result<Option<Refusal>, Error> {
        let account = account_key(username);
        let keys = vec![
            self.keys.login_account_lock(&account),
            self.keys.login_address_attempts(address),
            self.keys.login_address_failures(address),
        ];
        let args = vec![
            ms(self.settings.address_window_seconds),
            self.settings.address_max_attempts.to_string(),
            self.settings.address_max_failures.to_string(),
        ];
        let verdict: Vec<i64> = self
            .check
            .evalsha_with_reload(&self.client, keys, args)
            .await?;
        let (kind, wait) = (verdict.first().copied(), verdict.get(1).copied());
        let retry_after = seconds(wait.unwrap_or(1000));
        Ok(match kind {
            Some(1) => Some(Refusal::AccountLocked { retry_after }),
            Some(2) => Some(Refusal::AddressFailures { retry_after }),
            Some(3) => Some(Refusal::AddressAttempts { retry_after }),
            _ => None,
        })
    }

    /// Records a failed login; returns the lockout it set, in seconds (0: none).
    pub async fn failed(&self, username: &str, address: &str) -> Result<u64, Error> {
        let account = account_key(username);
        let keys = vec![
            self.keys.login_account_failures(&account),
            self.keys.login_account_lock(&account),
            self.keys.login_address_failures(address),
        ];
        let args = vec![
            self.settings.lockout_after_failures.to_string(),
            ms(self.settings.lockout_base_seconds),
            ms(self.settings.lockout_max_seconds),
            ms(self.settings.failure_memory_seconds),
            ms(self.settings.address_window_seconds),
        ];
        let lock_ms: i64 = self
            .failed
            .evalsha_with_reload(&self.client, keys, args)
            .await?;
        Ok(if lock_ms > 0 { seconds(lock_ms) } else { 0 })
    }

    /// Records a successful login: the account's failures are forgotten.
    pub async fn succeeded(&self, username: &str) -> Result<(), Error> {
        let account = account_key(username);
        let _: i64 = self
            .client
            .del(self.keys.login_account_failures(&account))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_keys_are_short_digests() {
        let key = account_key(&"x".repeat(100_000));
        assert_eq!(key.len(), 32);
        assert_ne!(account_key("demo"), account_key("Demo"));
    }

    #[test]
    fn waits_round_up_to_whole_seconds() {
        assert_eq!(seconds(1), 1);
        assert_eq!(seconds(1000), 1);
        assert_eq!(seconds(1001), 2);
        assert_eq!(seconds(-2), 1);
    }
}
