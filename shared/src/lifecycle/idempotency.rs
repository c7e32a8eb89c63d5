//! `Idempotency-Key` on submit and retry: a request repeated with the same key (a client
//! retrying after a timeout or a 503) gets the run the first one created instead of another.
//!
//! The key is stored with the run, unique per owner, beside a fingerprint of the request it
//! came with: the same key on the same request replays the run, the same key on a different
//! request is refused. Two requests racing with one key meet the unique index at commit, and
//! the loser is told to repeat (then it replays). Keys never expire: a run row lives as long
//! as the run.

use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use super::Error;
use crate::runs::{self, Idempotency, Run};

/// A fingerprint of the request's meaning: what it acts on and every value that shapes the
/// run. Parts are length-prefixed, so moving a boundary between two parts changes it.
pub fn fingerprint(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    hex::encode(hash.finalize())
}

/// The key and fingerprint to store with a new run.
pub fn with_fingerprint(key: Option<String>, parts: &[&str]) -> Option<Idempotency> {
    key.map(|key| Idempotency {
        key,
        fingerprint: fingerprint(parts),
    })
}

/// The run `owner_id` already created with this key, if any; a different request under the
/// same key is refused.
pub async fn earlier_run(
    db: &PgPool,
    owner_id: Uuid,
    idempotency: Option<&Idempotency>,
) -> Result<Option<Run>, Error> {
    let Some(idempotency) = idempotency else {
        return Ok(None);
    };
    match runs::find_by_idempotency_key(db, owner_id, &idempotency.key).await? {
        Some((run, fingerprint)) if fingerprint == idempotency.fingerprint => Ok(Some(run)),
        Some(_) => Err(Error::IdempotencyKeyReused),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_differ_when_any_part_differs() {
        assert_eq!(fingerprint(&["a", "b"]), fingerprint(&["a", "b"]));
        assert_ne!(fingerprint(&["a", "b"]), fingerprint(&["a", "c"]));
        // Parts are length-prefixed: moving a boundary changes the fingerprint.
        assert_ne!(fingerprint(&["ab", "c"]), fingerprint(&["a", "bc"]));
    }
}
