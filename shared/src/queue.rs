//! The runs stream: the API adds an entry per queued run (after the run row is committed);
//! workers read it through one consumer group, acknowledge an entry only once its run's
//! hand-off is durable, claim entries idle on dead consumers, and dead-letter entries
//! delivered too often.

use std::collections::HashMap;

use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::streams::{XCap, XCapKind, XCapTrim, XID};
use uuid::Uuid;

use crate::config::QueueSettings;
use crate::redis::Keys;

/// One stream entry. `run_id` is `None` for an entry that names no run (a poison entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub run_id: Option<Uuid>,
}

impl Entry {
    fn from_fields(id: String, fields: HashMap<String, String>) -> Self {
        let run_id = fields.get("run_id").and_then(|v| v.parse().ok());
        Self { id, run_id }
    }
}

/// ARGV: group. Returns {all delivered ("1"/"0"), run ids of pending entries…}.
const BACKLOG: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {'1'} end
local function field(flat, name)
  for i = 1, #flat, 2 do if flat[i] == name then return flat[i + 1] end end
end
local delivered = nil
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  if field(group, 'name') == ARGV[1] then delivered = field(group, 'last-delivered-id') end
end
if delivered == nil then return {'0'} end
-- Entries after the group's last delivered id are unread (deleted ones are simply absent).
local unread = redis.call('XRANGE', KEYS[1], '(' .. delivered, '+', 'COUNT', 1)
local out = {(#unread == 0) and '1' or '0'}
for _, p in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1000)) do
  local e = redis.call('XRANGE', KEYS[1], p[1], p[1])
  if e[1] then
    local run = field(e[1][2], 'run_id')
    if run then table.insert(out, run) end
  end
end
return out
"#;

/// What the stream still holds for the workers.
#[derive(Debug, Clone, Default)]
pub struct Backlog {
    /// Every entry has been delivered to some consumer (nothing waits unread).
    pub all_delivered: bool,
    /// Runs named by entries delivered but not yet acknowledged.
    pub pending_runs: std::collections::HashSet<Uuid>,
}

/// The runs stream and its consumer group.
#[derive(Clone)]
pub struct RunQueue {
    client: Client,
    keys: Keys,
    settings: QueueSettings,
}

impl RunQueue {
    pub fn new(client: Client, keys: Keys, settings: QueueSettings) -> Self {
        Self {
            client,
            keys,
            settings,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn settings(&self) -> &QueueSettings {
        &self.settings
    }

    /// Adds the run's entry, trimming entries older than `trim_after_hours` (approximately;
    /// far beyond any reclaim window, so only long-finished entries go).
    pub async fn enqueue(&self, run_id: Uuid) -> Result<String, Error> {
        let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
        let horizon = now_ms.saturating_sub(self.settings.trim_after_hours * 3_600_000);
        let cap = XCap::try_from((
            XCapKind::MinID,
            XCapTrim::AlmostExact,
            format!("{horizon}-0"),
        ))?;
        self.client
            .xadd(
                self.keys.stream(),
                false,
                cap,
                XID::Auto,
                vec![("run_id", run_id.to_string())],
            )
            .await
    }

    /// [`enqueue`](Self::enqueue) of each run, sent together (the client pipelines them on its
    /// connection); the runs whose entry could not be added, with why.
    pub async fn enqueue_each(&self, runs: &[Uuid]) -> Vec<(Uuid, Error)> {
        let added = futures::future::join_all(runs.iter().map(|run| self.enqueue(*run))).await;
        runs.iter()
            .zip(added)
            .filter_map(|(run, added)| added.err().map(|e| (*run, e)))
            .collect()
    }

    /// Creates the consumer group (and the stream) if missing. It starts at the stream's
    /// beginning, so entries added before any worker existed are delivered too.
    pub async fn ensure_group(&self) -> Result<(), Error> {
        let created: Result<(), Error> = self
            .client
            .xgroup_create(self.keys.stream(), &self.settings.group, "0", true)
            .await;
        match created {
            Err(e) if !e.details().contains("BUSYGROUP") => Err(e),
            _ => Ok(()),
        }
    }

    /// Reads up to `count` new entries for `consumer` — if `block`, waiting up to `block_ms` for
    /// the first (an empty answer: none arrived). Call it on a client of its own: a blocking
    /// read stalls every other command on its connection. Entries come in stream order, each
    /// delivered for the first time.
    pub async fn read_new(
        &self,
        reader: &Client,
        consumer: &str,
        count: u64,
        block: bool,
    ) -> Result<Vec<Entry>, Error> {
        let reply: Value = reader
            .xreadgroup(
                &self.settings.group,
                consumer,
                Some(count.max(1)),
                block.then_some(self.settings.block_ms),
                false,
                self.keys.stream(),
                ">",
            )
            .await?;
        // A read that times out answers nil.
        if reply.is_null() {
            return Ok(Vec::new());
        }
        let response: HashMap<String, Vec<(String, HashMap<String, String>)>> =
            reply.into_xread_response()?;
        Ok(response
            .into_values()
            .flatten()
            .map(|(id, fields)| Entry::from_fields(id, fields))
            .collect())
    }

    /// The entries delivered to `consumer` and not yet acknowledged: what a restarted
    /// consumer must finish first.
    pub async fn read_own_pending(&self, consumer: &str) -> Result<Vec<Entry>, Error> {
        let response: HashMap<String, Vec<(String, HashMap<String, String>)>> = self
            .client
            .xreadgroup_map(
                &self.settings.group,
                consumer,
                Some(1000),
                None,
                false,
                self.keys.stream(),
                "0",
            )
            .await?;
        Ok(response
            .into_values()
            .flatten()
            .map(|(id, fields)| Entry::from_fields(id, fields))
            .collect())
    }

    pub async fn ack(&self, id: &str) -> Result<(), Error> {
        self.client
            .xack::<(), _, _, _>(self.keys.stream(), &self.settings.group, id)
            .await
    }

    /// Acknowledges every entry of `ids` in one XACK (none: no call).
    pub async fn ack_all(&self, ids: &[String]) -> Result<(), Error> {
        if ids.is_empty() {
            return Ok(());
        }
        self.client
            .xack::<(), _, _, _>(self.keys.stream(), &self.settings.group, ids.to_vec())
            .await
    }

    /// Claims for `consumer` up to `count` entries idle longer than `claim_idle_ms` on any
    /// consumer. Each claim raises the entry's delivery count.
    pub async fn claim_idle(&self, consumer: &str, count: u64) -> Result<Vec<Entry>, Error> {
        let (_, entries): (String, Vec<(String, HashMap<String, String>)>) = self
            .client
            .xautoclaim_values(
                self.keys.stream(),
                &self.settings.group,
                consumer,
                self.settings.claim_idle_ms,
                "0-0",
                Some(count),
                false,
            )
            .await?;
        Ok(entries
            .into_iter()
            .map(|(id, fields)| Entry::from_fields(id, fields))
            .collect())
    }

    /// How often the entry has been delivered (0 when it is not pending).
    pub async fn deliveries(&self, id: &str) -> Result<u64, Error> {
        let rows: Vec<(String, String, u64, u64)> = self
            .client
            .xpending(self.keys.stream(), &self.settings.group, (id, id, 1))
            .await?;
        Ok(rows.first().map(|row| row.3).unwrap_or(0))
    }

    /// Moves the entry to the dead-letter stream with `reason`, then acknowledges it.
    pub async fn dead_letter(&self, entry: &Entry, reason: &str) -> Result<(), Error> {
        let run_id = entry.run_id.map(|id| id.to_string()).unwrap_or_default();
        let _: String = self
            .client
            .xadd(
                self.keys.dead_letters(),
                false,
                None,
                XID::Auto,
                vec![
                    ("entry", entry.id.as_str()),
                    ("run_id", run_id.as_str()),
                    ("reason", reason),
                ],
            )
            .await?;
        self.ack(&entry.id).await
    }

    /// Entries delivered but not yet acknowledged, across the group.
    pub async fn pending_count(&self) -> Result<u64, Error> {
        let summary: (
            u64,
            Option<String>,
            Option<String>,
            Option<Vec<(String, String)>>,
        ) = self
            .client
            .xpending(self.keys.stream(), &self.settings.group, ())
            .await?;
        Ok(summary.0)
    }

    /// Whether unread entries remain and which runs pending entries name: what the reconciler
    /// needs to tell a lost entry from one that is merely waiting.
    pub async fn backlog(&self) -> Result<Backlog, Error> {
        let reply: Vec<String> = Script::from_lua(BACKLOG)
            .evalsha_with_reload(
                &self.client,
                vec![self.keys.stream()],
                vec![self.settings.group.clone()],
            )
            .await?;
        let mut reply = reply.into_iter();
        Ok(Backlog {
            all_delivered: reply.next().as_deref() == Some("1"),
            pending_runs: reply.filter_map(|r| r.parse().ok()).collect(),
        })
    }

    /// The stream's length (entries not yet trimmed, acknowledged or not).
    pub async fn len(&self) -> Result<u64, Error> {
        self.client.xlen(self.keys.stream()).await
    }
}
