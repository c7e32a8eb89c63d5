//! `Idempotency-Key` on submit and retry: a POST repeated with the same key (a client retrying
//! after a timeout or a 503) answers the run the first one created instead of creating another.
//!
//! The key is stored with the run, unique per owner, beside a fingerprint of the request it
//! came with: the same key on the same request replays the run (`202` with
//! `Idempotent-Replayed: true`), the same key on a different request is refused (`422`).
//! Keys never expire: a run row lives as long as the run.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use coderun_shared::runs::{self, Idempotency, Run};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::extract::Json;
use crate::state::AppState;

pub const HEADER: &str = "idempotency-key";
/// Longest key accepted (a UUID is 36 characters; clients use UUIDs or similar).
pub const MAX_KEY_CHARS: usize = 255;

/// The request's `Idempotency-Key`, if it has one: 1 to 255 visible ASCII characters.
pub fn key_from(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::BadRequest(
            "send one Idempotency-Key header, not several".into(),
        ));
    }
    let key = value.to_str().unwrap_or("");
    if key.is_empty() || key.len() > MAX_KEY_CHARS || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::BadRequest(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_CHARS} visible ASCII characters"
        )));
    }
    Ok(Some(key.to_owned()))
}

/// A fingerprint of the request's meaning: what it acts on and every value that shapes the run.
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
    state: &AppState,
    owner_id: Uuid,
    idempotency: Option<&Idempotency>,
) -> ApiResult<Option<Run>> {
    let Some(idempotency) = idempotency else {
        return Ok(None);
    };
    match runs::find_by_idempotency_key(&state.db, owner_id, &idempotency.key).await? {
        Some((run, fingerprint)) if fingerprint == idempotency.fingerprint => Ok(Some(run)),
        Some(_) => Err(ApiError::Unprocessable(
            "this Idempotency-Key was already used for a different request; use a new key".into(),
        )),
        None => Ok(None),
    }
}

/// The answer to a replayed request: the run as the first request answered it.
pub fn replayed(body: impl serde::Serialize, run_id: Uuid) -> ApiResult<Response> {
    let location = HeaderValue::from_str(&format!("/api/v1/runs/{run_id}"))
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok((
        StatusCode::ACCEPTED,
        [
            (header::LOCATION, location),
            (
                header::HeaderName::from_static("idempotent-replayed"),
                HeaderValue::from_static("true"),
            ),
        ],
        Json(body),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(HEADER, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn a_key_is_one_to_255_visible_ascii_characters() {
        assert_eq!(key_from(&headers(&[])).unwrap(), None);
        assert_eq!(
            key_from(&headers(&["b1f0c0de-1"])).unwrap().as_deref(),
            Some("b1f0c0de-1")
        );
        assert!(key_from(&headers(&[""])).is_err());
        assert!(key_from(&headers(&["has space"])).is_err());
        assert!(key_from(&headers(&[&"k".repeat(256)])).is_err());
        assert!(key_from(&headers(&["a", "b"])).is_err());
    }

    #[test]
    fn fingerprints_differ_when_any_part_differs() {
        assert_eq!(fingerprint(&["a", "b"]), fingerprint(&["a", "b"]));
        assert_ne!(fingerprint(&["a", "b"]), fingerprint(&["a", "c"]));
        // Parts are length-prefixed: moving a boundary changes the fingerprint.
        assert_ne!(fingerprint(&["ab", "c"]), fingerprint(&["a", "bc"]));
    }
}
