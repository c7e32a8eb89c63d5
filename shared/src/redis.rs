//! The Redis connection and the names of every key coderun keeps there.

use fred::prelude::*;
use secrecy::ExposeSecret;

use crate::config::RedisSettings;

/// Connects a client (with automatic reconnection) and checks the server answers.
pub async fn connect(settings: &RedisSettings) -> anyhow::Result<Client> {
    let config = Config::from_url(settings.url.expose_secret())
        .map_err(|e| anyhow::anyhow!("redis.url is not a valid Redis URL: {e}"))?;
    let client = Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = std::time::Duration::from_secs(5);
        })
        // While Redis is down commands would otherwise wait for the reconnection however long
        // it takes; with a timeout they fail, and callers retry or answer 503.
        .with_performance_config(|c| {
            c.default_command_timeout =
                std::time::Duration::from_millis(settings.command_timeout_ms.max(1));
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
        .build()
        .map_err(|e| anyhow::anyhow!("cannot build the Redis client: {e}"))?;
    client
        .init()
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to Redis (redis.url): {e}"))?;
    Ok(client)
}

/// Every Redis key, derived from one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The runs stream: one entry `{run_id}` per queued run.
    pub fn stream(&self) -> String {
        format!("{}:runs", self.prefix)
    }

    /// The status callbacks stream: one entry `{delivery_id}` per delivery attempt due.
    pub fn webhooks(&self) -> String {
        format!("{}:webhooks", self.prefix)
    }

    /// Entries delivered too often, with the reason.
    pub fn dead_letters(&self) -> String {
        format!("{}:runs:dead", self.prefix)
    }

    /// The capacity semaphore: a sorted set of permit → expiry (ms, Redis clock).
    pub fn permits(&self) -> String {
        format!("{}:permits", self.prefix)
    }

    /// Who holds each permit: permit → worker name.
    pub fn permit_owners(&self) -> String {
        format!("{}:permit-owners", self.prefix)
    }

    /// The run-time capacity override.
    pub fn capacity(&self) -> String {
        format!("{}:capacity", self.prefix)
    }

    /// The live log streams a user holds open: a sorted set of stream → expiry (ms).
    pub fn log_streams(&self, user_id: uuid::Uuid) -> String {
        format!("{}:log-streams:{user_id}", self.prefix)
    }

    /// A run's live log: a stream of chunks of lines, each with id `{first line}-1`.
    pub fn live_log(&self, run_id: uuid::Uuid) -> String {
        format!("{}:log:{run_id}", self.prefix)
    }

    /// A worker's heartbeat; it expires when the worker stops beating.
    pub fn heartbeat(&self, worker: &str) -> String {
        format!("{}:worker:{worker}", self.prefix)
    }

    /// Pub/sub channel on which stop requests are announced to every worker.
    pub fn stops(&self) -> String {
        format!("{}:stops", self.prefix)
    }

    /// Failed logins of an account (by digest of its name).
    pub fn login_account_failures(&self, account: &str) -> String {
        format!("{}:login:account:{account}:failures", self.prefix)
    }

    /// An account's lockout: present while it lasts.
    pub fn login_account_lock(&self, account: &str) -> String {
        format!("{}:login:account:{account}:lock", self.prefix)
    }

    /// Login attempts from a client address in the current window.
    pub fn login_address_attempts(&self, address: &str) -> String {
        format!("{}:login:address:{address}:attempts", self.prefix)
    }

    /// Failed logins from a client address in the current window.
    pub fn login_address_failures(&self, address: &str) -> String {
        format!("{}:login:address:{address}:failures", self.prefix)
    }
}
