//! The live log of a run while it executes: a Redis stream per run. Each entry is a *chunk* of
//! consecutive lines — id `{first line}-1`, fields `n` (how many lines) and `l` (the lines
//! joined by `\n`; a line never holds one) — so what a run costs in Redis follows its bytes,
//! not its line count: a million empty lines are a few thousand small entries, not a million.
//! A page of lines is two reads (the chunk holding the first line, then XRANGE up to the last).
//! The executor caps what it writes (the run's `log_max_bytes`); once the run ends `log.txt` in
//! S3 is the record and the stream expires.
//!
//! [`StreamSlots`] counts the live log streams (server-sent events) each user holds open across
//! the fleet, as leases in Redis that expire if an API process dies without giving them back.

use std::collections::HashMap;

use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::streams::XID;
use uuid::Uuid;

use crate::redis::Keys;

/// Lines in one chunk at most.
const CHUNK_LINES: usize = 1024;
/// Bytes in one chunk at most (a longer single line makes a chunk of its own).
const CHUNK_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct LiveLog {
    client: Client,
    keys: Keys,
}

/// One entry: the number of its first line and its lines.
type Chunk = (u64, Vec<String>);

fn parse_chunk(id: &str, mut fields: HashMap<String, String>) -> Option<Chunk> {
    let first: u64 = id.split('-').next()?.parse().ok()?;
    let text = fields.remove("l").unwrap_or_default();
    let count: usize = fields.get("n").and_then(|n| n.parse().ok()).unwrap_or(1);
    let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    lines.resize(count, String::new());
    Some((first, lines))
}

impl LiveLog {
    pub fn new(client: Client, keys: Keys) -> Self {
        Self { client, keys }
    }

    /// Appends `lines`, numbered from `first_line` (1-based), in one round trip.
    pub async fn append(&self, run: Uuid, first_line: u64, lines: &[String]) -> Result<(), Error> {
        if lines.is_empty() {
            return Ok(());
        }
        let key = self.keys.live_log(run);
        let pipeline = self.client.pipeline();
        let mut first = first_line;
        let mut start = 0;
        while start < lines.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < lines.len()
                && end - start < CHUNK_LINES
                && (end == start || bytes + lines[end].len() < CHUNK_BYTES)
            {
                bytes += lines[end].len() + 1;
                end += 1;
            }
            let chunk = &lines[start..end];
            let joined = chunk.join("\n");
            let count = chunk.len().to_string();
            let _: () = pipeline
                .xadd(
                    &key,
                    false,
                    None,
                    XID::Manual(format!("{first}-1").into()),
                    vec![("n", count.as_str()), ("l", joined.as_str())],
                )
                .await?;
            first += chunk.len() as u64;
            start = end;
        }
        let _: Vec<Value> = pipeline.all().await?;
        Ok(())
    }

    /// Lines `from..=to` (1-based, inclusive).
    pub async fn range(&self, run: Uuid, from: u64, to: u64) -> Result<Vec<String>, Error> {
        if to < from {
            return Ok(Vec::new());
        }
        let key = self.keys.live_log(run);
        // The chunk holding `from` starts at or before it.
        let holding: Vec<(String, HashMap<String, String>)> = self
            .client
            .xrevrange_values(&key, format!("{from}-1"), "-", Some(1))
            .await?;
        let start = match holding.first() {
            Some((id, _)) => id.clone(),
            None => "-".to_owned(),
        };
        let entries: Vec<(String, HashMap<String, String>)> = self
            .client
            .xrange_values(&key, start, format!("{to}-1"), None)
            .await?;
        let mut out = Vec::new();
        for (id, fields) in entries {
            let Some((first, lines)) = parse_chunk(&id, fields) else {
                continue;
            };
            for (k, line) in lines.into_iter().enumerate() {
                let number = first + k as u64;
                if (from..=to).contains(&number) {
                    out.push(line);
                }
            }
        }
        Ok(out)
    }

    /// How many lines the live log holds.
    pub async fn len(&self, run: Uuid) -> Result<u64, Error> {
        let last: Vec<(String, HashMap<String, String>)> = self
            .client
            .xrevrange_values(self.keys.live_log(run), "+", "-", Some(1))
            .await?;
        Ok(last
            .into_iter()
            .next()
            .and_then(|(id, fields)| parse_chunk(&id, fields))
            .map(|(first, lines)| first + lines.len() as u64 - 1)
            .unwrap_or(0))
    }

    /// Lets the live log expire `seconds` from now (the run has ended).
    pub async fn expire(&self, run: Uuid, seconds: i64) -> Result<(), Error> {
        self.client
            .expire::<(), _>(self.keys.live_log(run), seconds, None)
            .await
    }
}

/// Takes a slot unless the user holds `max` live ones: a sorted set of slot → expiry (ms,
/// Redis clock); expired slots (an API process died holding them) are dropped first. Taking a
/// slot one holds renews it.
const ACQUIRE: &str = r#"
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
local max = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= max then
  return 0
end
redis.call('ZADD', KEYS[1], now_ms + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
"#;

/// The fleet-wide count of each user's open log streams.
#[derive(Clone)]
pub struct StreamSlots {
    client: Client,
    keys: Keys,
    per_user: u32,
    script: Script,
}

impl StreamSlots {
    /// A slot unrenewed for this long is given back (its holder died).
    pub const TTL_MS: u64 = 60_000;

    pub fn new(client: Client, keys: Keys, per_user: u32) -> Self {
        Self {
            client,
            keys,
            per_user,
            script: Script::from_lua(ACQUIRE),
        }
    }

    /// Takes (or renews) slot `slot` of `user`; `false` when the user holds `per_user` already.
    pub async fn acquire(&self, user: Uuid, slot: &str) -> Result<bool, Error> {
        let granted: i64 = self
            .script
            .evalsha_with_reload(
                &self.client,
                vec![self.keys.log_streams(user)],
                vec![
                    slot.to_owned(),
                    self.per_user.to_string(),
                    Self::TTL_MS.to_string(),
                ],
            )
            .await?;
        Ok(granted == 1)
    }

    /// Gives the slot back.
    pub async fn release(&self, user: Uuid, slot: &str) -> Result<(), Error> {
        self.client
            .zrem::<(), _, _>(self.keys.log_streams(user), slot)
            .await
    }
}
