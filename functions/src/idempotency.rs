//! `Idempotency-Key` on submit and retry, at the HTTP edge: the header's rules and the answer
//! to a replayed request (`202` with `Idempotent-Replayed: true`). Which run a key names, and
//! the refusal of a key reused for a different request (`422`), are the run lifecycle's
//! (`coderun_shared::lifecycle::idempotency`).

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::extract::Json;

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
}
