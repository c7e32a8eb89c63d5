//! `LeaseSemaphore`: the fleet-wide capacity limit. A permit is a lease keyed by what holds it
//! (a run id, or a worker's reservation before it knows which run it will read), stored in a
//! sorted set with its expiry, plus the name of the worker holding it.
//!
//! Every operation is one Lua script that takes "now" from Redis (`TIME`), drops expired
//! permits first, and is idempotent: acquiring a permit one already holds renews it. A permit
//! whose holder died expires after its TTL — at least the run's wall time plus grace — unless
//! someone still watching the run renews it.

use fred::prelude::*;
use fred::types::scripts::Script;
use uuid::Uuid;

use crate::redis::Keys;

const PRELUDE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  redis.call('HDEL', KEYS[2], unpack(expired))
end
local function capacity(default)
  return tonumber(redis.call('GET', KEYS[3]) or default)
end
local function hold(member, owner, ttl)
  redis.call('ZADD', KEYS[1], now + tonumber(ttl), member)
  redis.call('HSET', KEYS[2], member, owner)
end
local function drop(member)
  redis.call('ZREM', KEYS[1], member)
  redis.call('HDEL', KEYS[2], member)
end
"#;

/// ARGV: member, owner, ttl_ms, default capacity.
const ACQUIRE: &str = r#"
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  local holder = redis.call('HGET', KEYS[2], ARGV[1]) or ''
  if holder ~= ARGV[2] then return 'held:' .. holder end
  hold(ARGV[1], ARGV[2], ARGV[3])
  return 'ok'
end
if redis.call('ZCARD', KEYS[1]) >= capacity(ARGV[4]) then return 'full' end
hold(ARGV[1], ARGV[2], ARGV[3])
return 'ok'
"#;

/// `bind(reservation, run, owner, ttl_ms, default capacity)`: the reservation's seat becomes
/// the run's; when another worker holds the run, the reservation is kept and its holder named.
const BIND_FN: &str = r#"
local function bind(reservation, run, owner, ttl, default)
  if redis.call('ZSCORE', KEYS[1], run) then
    local holder = redis.call('HGET', KEYS[2], run) or ''
    if holder ~= owner then return 'held:' .. holder end
    drop(reservation)
    hold(run, owner, ttl)
    return 'ok'
  end
  if redis.call('ZSCORE', KEYS[1], reservation) then
    drop(reservation)
    hold(run, owner, ttl)
    return 'ok'
  end
  if redis.call('ZCARD', KEYS[1]) >= capacity(default) then return 'full' end
  hold(run, owner, ttl)
  return 'ok'
end
"#;

/// ARGV: reservation, run, owner, ttl_ms, default capacity.
const BIND: &str = r#"
return bind(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
"#;

/// ARGV: owner, default capacity, then (reservation, run, ttl_ms) per run: [`BIND`] for each,
/// in order, in one call. Returns one answer per run.
const BIND_MANY: &str = r#"
local out = {}
for i = 3, #ARGV, 3 do
  table.insert(out, bind(ARGV[i], ARGV[i + 1], ARGV[1], ARGV[i + 2], ARGV[2]))
end
return out
"#;

/// ARGV: token prefix, owner, ttl_ms, wanted, default capacity. Holds up to `wanted` seats —
/// as many as are free — as reservations `<prefix>:<i>`, and returns their names.
const RESERVE_MANY: &str = r#"
local n = math.min(tonumber(ARGV[4]), capacity(ARGV[5]) - redis.call('ZCARD', KEYS[1]))
local out = {}
for i = 1, n do
  local member = ARGV[1] .. ':' .. i
  hold(member, ARGV[2], ARGV[3])
  table.insert(out, member)
end
return out
"#;

/// ARGV: run, expected holder, new owner, ttl_ms, reservation to give up ('' for none).
/// Compare-and-swap: only a permit still held by the expected (dead) holder changes hands.
const TAKEOVER: &str = r#"
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  local holder = redis.call('HGET', KEYS[2], ARGV[1]) or ''
  if holder ~= ARGV[2] then return 'held:' .. holder end
end
if ARGV[5] ~= '' then drop(ARGV[5]) end
hold(ARGV[1], ARGV[3], ARGV[4])
return 'ok'
"#;

/// ARGV: member, owner, ttl_ms. A live execution's permit: extended, or re-created if it
/// lapsed (the execution consumes capacity whether or not its permit survived).
const RENEW: &str = r#"
local holder = redis.call('HGET', KEYS[2], ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) and holder and holder ~= ARGV[2] then
  return 'held:' .. holder
end
hold(ARGV[1], ARGV[2], ARGV[3])
return 'ok'
"#;

/// ARGV: owner, ttl_ms, then members: [`RENEW`] for each, in one call. Returns one answer per
/// member.
const RENEW_MANY: &str = r#"
local out = {}
for i = 3, #ARGV do
  local holder = redis.call('HGET', KEYS[2], ARGV[i])
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) and holder and holder ~= ARGV[1] then
    table.insert(out, 'held:' .. holder)
  else
    hold(ARGV[i], ARGV[1], ARGV[2])
    table.insert(out, 'ok')
  end
end
return out
"#;

/// ARGV: members (any number).
const RELEASE: &str = r#"
for i = 1, #ARGV do drop(ARGV[i]) end
return 'ok'
"#;

/// ARGV: none. Permits in use now.
const COUNT: &str = r#"
return tostring(redis.call('ZCARD', KEYS[1]))
"#;

/// What an acquire-like call found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// The caller holds the permit now.
    Granted,
    /// Every permit is taken.
    Full,
    /// Another worker holds this permit.
    HeldBy(String),
}

/// What a permit is held for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Member {
    /// The permit of a run, keyed by the run's id.
    Run(Uuid),
    /// A worker's reservation: a seat held before it knows which run it will read.
    Reservation(String),
}

impl Member {
    /// The member as the semaphore's sorted set spells it.
    pub fn key(&self) -> String {
        match self {
            Member::Run(run) => run.to_string(),
            Member::Reservation(token) => token.clone(),
        }
    }

    fn parse(key: String) -> Self {
        key.parse().map_or(Member::Reservation(key), Member::Run)
    }
}

/// One permit held now, and the worker holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    pub member: Member,
    pub owner: String,
}

fn grant(reply: String) -> Grant {
    match reply.as_str() {
        "ok" => Grant::Granted,
        "full" => Grant::Full,
        other => Grant::HeldBy(other.strip_prefix("held:").unwrap_or(other).to_owned()),
    }
}

/// The fleet-wide capacity semaphore.
#[derive(Clone)]
pub struct LeaseSemaphore {
    client: Client,
    keys: Keys,
    default_capacity: u32,
    acquire: Script,
    bind: Script,
    bind_many: Script,
    reserve_many: Script,
    takeover: Script,
    renew: Script,
    renew_many: Script,
    release: Script,
    count: Script,
}

impl LeaseSemaphore {
    pub fn new(client: Client, keys: Keys, default_capacity: u32) -> Self {
        let script = |body: &str| Script::from_lua(format!("{PRELUDE}{body}"));
        Self {
            client,
            keys,
            default_capacity,
            acquire: script(ACQUIRE),
            bind: Script::from_lua(format!("{PRELUDE}{BIND_FN}{BIND}")),
            bind_many: Script::from_lua(format!("{PRELUDE}{BIND_FN}{BIND_MANY}")),
            reserve_many: script(RESERVE_MANY),
            takeover: script(TAKEOVER),
            renew: script(RENEW),
            renew_many: script(RENEW_MANY),
            release: script(RELEASE),
            count: script(COUNT),
        }
    }

    fn script_keys(&self) -> Vec<String> {
        vec![
            self.keys.permits(),
            self.keys.permit_owners(),
            self.keys.capacity(),
        ]
    }

    async fn call(&self, script: &Script, args: Vec<String>) -> Result<String, Error> {
        script
            .evalsha_with_reload(&self.client, self.script_keys(), args)
            .await
    }

    /// A reservation token for `owner`: a permit held before reading an entry.
    pub fn reservation(owner: &str) -> String {
        format!("reserve:{owner}:{}", Uuid::new_v4().simple())
    }

    /// Takes (or renews) the permit `member` for `owner` for `ttl_ms`.
    pub async fn acquire(&self, member: &str, owner: &str, ttl_ms: u64) -> Result<Grant, Error> {
        let args = vec![
            member.into(),
            owner.into(),
            ttl_ms.to_string(),
            self.default_capacity.to_string(),
        ];
        Ok(grant(self.call(&self.acquire, args).await?))
    }

    /// Turns `reservation` into the permit of `run` (idempotent).
    pub async fn bind(
        &self,
        reservation: &str,
        run: Uuid,
        owner: &str,
        ttl_ms: u64,
    ) -> Result<Grant, Error> {
        let args = vec![
            reservation.into(),
            run.to_string(),
            owner.into(),
            ttl_ms.to_string(),
            self.default_capacity.to_string(),
        ];
        Ok(grant(self.call(&self.bind, args).await?))
    }

    /// Holds up to `wanted` free seats for `owner` for `ttl_ms` in one call: reservations named
    /// `<prefix>:<i>`; none when every permit is taken.
    pub async fn reserve_many(
        &self,
        prefix: &str,
        owner: &str,
        ttl_ms: u64,
        wanted: u32,
    ) -> Result<Vec<String>, Error> {
        let args = vec![
            prefix.into(),
            owner.into(),
            ttl_ms.to_string(),
            wanted.to_string(),
            self.default_capacity.to_string(),
        ];
        self.reserve_many
            .evalsha_with_reload(&self.client, self.script_keys(), args)
            .await
    }

    /// [`Self::bind`] for each `(reservation, run, ttl_ms)`, in order, in one call.
    pub async fn bind_many(
        &self,
        owner: &str,
        binds: &[(&str, Uuid, u64)],
    ) -> Result<Vec<Grant>, Error> {
        if binds.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = vec![owner.to_owned(), self.default_capacity.to_string()];
        for (reservation, run, ttl) in binds {
            args.extend([(*reservation).to_owned(), run.to_string(), ttl.to_string()]);
        }
        let replies: Vec<String> = self
            .bind_many
            .evalsha_with_reload(&self.client, self.script_keys(), args)
            .await?;
        Ok(replies.into_iter().map(grant).collect())
    }

    /// Takes over `run`'s permit from `dead_holder`, giving up `reservation` if any.
    pub async fn take_over(
        &self,
        run: Uuid,
        dead_holder: &str,
        owner: &str,
        ttl_ms: u64,
        reservation: Option<&str>,
    ) -> Result<Grant, Error> {
        let args = vec![
            run.to_string(),
            dead_holder.into(),
            owner.into(),
            ttl_ms.to_string(),
            reservation.unwrap_or("").into(),
        ];
        Ok(grant(self.call(&self.takeover, args).await?))
    }

    /// Extends (or re-creates) the permit of a live execution.
    pub async fn renew(&self, member: &str, owner: &str, ttl_ms: u64) -> Result<Grant, Error> {
        Ok(grant(
            self.call(
                &self.renew,
                vec![member.into(), owner.into(), ttl_ms.to_string()],
            )
            .await?,
        ))
    }

    /// [`Self::renew`] for each of `members`, in one call.
    pub async fn renew_many(
        &self,
        members: &[String],
        owner: &str,
        ttl_ms: u64,
    ) -> Result<Vec<Grant>, Error> {
        if members.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = vec![owner.to_owned(), ttl_ms.to_string()];
        args.extend(members.iter().cloned());
        let replies: Vec<String> = self
            .renew_many
            .evalsha_with_reload(&self.client, self.script_keys(), args)
            .await?;
        Ok(replies.into_iter().map(grant).collect())
    }

    /// Gives the permit back; releasing a permit nobody holds is a no-op.
    pub async fn release(&self, member: &str) -> Result<(), Error> {
        self.call(&self.release, vec![member.into()])
            .await
            .map(|_| ())
    }

    /// Gives every permit of `members` back in one call (none: no call).
    pub async fn release_many(&self, members: &[String]) -> Result<(), Error> {
        if members.is_empty() {
            return Ok(());
        }
        self.call(&self.release, members.to_vec()).await.map(|_| ())
    }

    /// Permits held now (expired ones excluded).
    pub async fn in_use(&self) -> Result<u32, Error> {
        Ok(self.call(&self.count, vec![]).await?.parse().unwrap_or(0))
    }

    /// The capacity in force: the run-time override, else the configured default.
    pub async fn capacity(&self) -> Result<u32, Error> {
        let value: Option<u32> = self.client.get(self.keys.capacity()).await?;
        Ok(value.unwrap_or(self.default_capacity))
    }

    /// Changes the capacity for the whole fleet at run time.
    pub async fn set_capacity(&self, capacity: u32) -> Result<(), Error> {
        self.client
            .set::<(), _, _>(self.keys.capacity(), capacity, None, None, false)
            .await
    }

    /// Every permit with its holder.
    pub async fn holders(&self) -> Result<Vec<Holding>, Error> {
        let map: std::collections::HashMap<String, String> =
            self.client.hgetall(self.keys.permit_owners()).await?;
        Ok(map
            .into_iter()
            .map(|(member, owner)| Holding {
                member: Member::parse(member),
                owner,
            })
            .collect())
    }
}
