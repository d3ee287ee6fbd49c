//! The routes on the shared dictionary (zone "kv"): `/kv/KEY`, `/hit`'s
//! counter (key "hits") and `/limit`'s leaky buckets (keys "limit:K").
//!
//! Every call is one dictionary operation, crash-atomic: a worker killed in
//! the middle of one leaves the dictionary as before it. A bucket is
//! updated with `cas` in a bounded retry loop, so two workers accounting
//! the same key never lose a request.

use hyper::StatusCode;
use shmzone::dict::{Dict, DictError, OwnedValue};

/// The dictionary's zone.
pub const KV: &str = "kv";
/// The key of `/hit`'s counter.
pub const HITS: &[u8] = b"hits";
/// The prefix of `/limit`'s bucket keys.
const LIMIT_PREFIX: &str = "limit:";
/// The most a `/limit` key may have (the prefix and it fit a dict key).
pub const MAX_LIMIT_KEY: usize = 64;
/// Tries of a bucket's compare-and-swap before answering 503.
const CAS_TRIES: usize = 64;

/// The status a dictionary error maps to, with its text.
pub fn error_status(e: &DictError) -> StatusCode {
    match e {
        DictError::EmptyKey | DictError::KeyTooLong { .. } => StatusCode::BAD_REQUEST,
        DictError::ValueTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        DictError::NoMemory { .. } | DictError::TooBigForOneSection => {
            StatusCode::INSUFFICIENT_STORAGE
        }
        DictError::WrongType { .. } => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A value as an HTTP body: bytes as they are, numbers and booleans as
/// text.
pub fn body_of(v: OwnedValue) -> Vec<u8> {
    match v {
        OwnedValue::Bytes(b) => b,
        OwnedValue::Int(i) => i.to_string().into_bytes(),
        OwnedValue::Float(f) => f.to_string().into_bytes(),
        OwnedValue::Bool(b) => b.to_string().into_bytes(),
    }
}

/// `PUT /kv/KEY`: whether the key was new (201) or replaced (204).
pub fn put(d: &Dict<'_>, key: &[u8], value: &[u8], ttl_ms: u64) -> Result<bool, DictError> {
    match d.add(key, value, ttl_ms, 0) {
        Ok(_) => Ok(true),
        Err(DictError::Exists) => d.set(key, value, ttl_ms, 0).map(|_| false),
        Err(e) => Err(e),
    }
}

/// `/hit`: one `incr` of "hits" (made at 0), the new total.
pub fn hit(d: &Dict<'_>) -> Result<i64, DictError> {
    d.incr(HITS, 1, Some(0), 0)
}

/// What `/limit` decided; excess in thousandths of a request.
pub enum Verdict {
    Allowed(u64),
    Refused(u64),
}

/// A bucket's value: the excess (thousandths of a request) and the time of
/// its last accepted request (ms since the master's epoch), little endian.
fn encode(excess: u64, last: u64) -> [u8; 16] {
    let mut b = [0; 16];
    b[..8].copy_from_slice(&excess.to_le_bytes());
    b[8..].copy_from_slice(&last.to_le_bytes());
    b
}

fn decode(v: &OwnedValue) -> Option<(u64, u64)> {
    let b: &[u8; 16] = v.as_bytes()?.try_into().ok()?;
    let excess = u64::from_le_bytes(b[..8].try_into().ok()?);
    let last = u64::from_le_bytes(b[8..].try_into().ok()?);
    Some((excess, last))
}

/// nginx's `limit_req` with `nodelay` for `key`: `rate` in thousandths of
/// a request per second, `burst` in requests, `now` in ms. A request is
/// refused when the bucket would overflow past the burst (the bucket is
/// then left as it was); else its excess grows by one request, less what
/// leaked since the last one.
///
/// # Errors
/// The dictionary's ([`DictError::NoMemory`] when it cannot make the
/// bucket), or `None` after [`CAS_TRIES`] lost races.
pub fn limit(
    d: &Dict<'_>,
    key: &str,
    now: u64,
    rate: u64,
    burst: u64,
) -> Result<Option<Verdict>, DictError> {
    let k = format!("{LIMIT_PREFIX}{key}");
    let k = k.as_bytes();
    let burst = burst.saturating_mul(1000);
    for _ in 0..CAS_TRIES {
        let Some(old) = d.get(k)? else {
            // A new key: an empty bucket with this request in it (nginx
            // starts a node at excess 0).
            match d.add(k, &encode(0, now), 0, 0) {
                Ok(_) => return Ok(Some(Verdict::Allowed(0))),
                Err(DictError::Exists) => continue,
                Err(e) => return Err(e),
            }
        };
        let (excess, last) = match decode(&old.value) {
            Some(s) => s,
            // Not a bucket (someone PUT /kv/limit:K): start afresh.
            None => (0, now),
        };
        let ms = now.saturating_sub(last);
        let leaked = rate.saturating_mul(ms) / 1000;
        let excess = excess.saturating_sub(leaked).saturating_add(1000);
        if excess > burst {
            return Ok(Some(Verdict::Refused(excess)));
        }
        let new = encode(excess, now.max(last));
        match d.cas(k, old.value.as_value(), &new) {
            Ok(true) => return Ok(Some(Verdict::Allowed(excess))),
            // Changed (or deleted) meanwhile: read it again.
            Ok(false) | Err(DictError::NotFound) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}
