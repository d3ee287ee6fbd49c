//! The routes on the shared dictionary (zone "kv"): `/kv/KEY`, `/hit`'s
//! counter (key "hits") and `/limit`'s leaky buckets (keys "limit:K").
//!
//! Every call is one dictionary operation, crash-atomic: a worker killed in
//! the middle of one leaves the dictionary as before it. A bucket is read
//! and updated in one [`Dict::update`], so two workers accounting the same
//! key never lose a request.

use hyper::StatusCode;
use shmzone::dict::{Dict, DictError, OwnedValue, Update, Value};
use shmzone::Zone;

/// The dictionary's zone.
pub const KV: &str = "kv";
/// The key of `/hit`'s counter.
pub const HITS: &[u8] = b"hits";
/// The prefix of `/limit`'s bucket keys.
const LIMIT_PREFIX: &str = "limit:";
/// The most a `/limit` key may have (the prefix and it fit a dict key).
pub const MAX_LIMIT_KEY: usize = 64;

/// How long a worker waiting for the dictionary's zone lock spins before
/// it sleeps, in `spin_loop()` hints: nginx's budget (about 22 µs), not
/// the lock's default 65,536 (0.7 ms). The lock is held for well under a
/// microsecond between much longer request work, and 4 workers and the
/// load share 2 CPUs: a long wait means the holder was descheduled, and a
/// waiter spinning then only keeps a CPU from it. Measured (wrk -c64
/// /hit, uprobes on the lock's slow path, 2 s): waits over 1 ms from 3–16
/// to 0–5, waiting in all from 12–50 ms to 2–21 ms; p99 itself moved
/// within the run-to-run noise (README, "Against nginx").
const LOCK_SPIN: u32 = 2048;

/// The dictionary of the zone, its lock's spin set to [`LOCK_SPIN`].
pub fn open<'z>(zone: &Zone<'z>) -> Result<Dict<'z>, DictError> {
    zone.mutex().set_spin_limit(Some(LOCK_SPIN));
    Dict::open(zone)
}

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

fn decode(v: Value<'_>) -> Option<(u64, u64)> {
    let Value::Bytes(b) = v else {
        return None;
    };
    let b: &[u8; 16] = b.try_into().ok()?;
    let excess = u64::from_le_bytes(b[..8].try_into().ok()?);
    let last = u64::from_le_bytes(b[8..].try_into().ok()?);
    Some((excess, last))
}

/// nginx's `limit_req` with `nodelay` for `key`: `rate` in thousandths of
/// a request per second, `burst` in requests, `now` in ms. A request
/// adds one request to its bucket's excess, less what leaked since the
/// last accepted one (never below 0); past the burst it is refused and the
/// bucket is left as it was.
///
/// One [`Dict::update`]: the bucket is read and written in one hold of the
/// zone lock (as nginx's limit_req does under its zone's mutex), so there
/// is no retry loop and two workers never both take the last place. A
/// bucket expires once it would let a request through with excess 0, as a
/// missing one does, so idle keys do not fill the zone.
///
/// # Errors
/// The dictionary's ([`DictError::NoMemory`] when it cannot make the
/// bucket).
pub fn limit(
    d: &Dict<'_>,
    key: &str,
    now: u64,
    rate: u64,
    burst: u64,
) -> Result<Verdict, DictError> {
    let mut k = [0u8; LIMIT_PREFIX.len() + MAX_LIMIT_KEY];
    let n = LIMIT_PREFIX.len() + key.len().min(MAX_LIMIT_KEY);
    k[..LIMIT_PREFIX.len()].copy_from_slice(LIMIT_PREFIX.as_bytes());
    k[LIMIT_PREFIX.len()..n].copy_from_slice(&key.as_bytes()[..n - LIMIT_PREFIX.len()]);
    let burst = burst.saturating_mul(1000);
    let rate = rate.max(1);
    let mut buf = [0u8; 16];
    let b = &mut buf;
    d.update(&k[..n], move |cur| {
        let (excess, last) = match cur.map(|c| c.value) {
            // A new key: an empty bucket (nginx starts a node at excess 0).
            None => (0, now),
            // Not a bucket (someone PUT /kv/limit:K): start afresh.
            Some(v) => decode(v).unwrap_or((0, now)),
        };
        let ms = now.saturating_sub(last);
        let leaked = rate.saturating_mul(ms) / 1000;
        // As nginx: one request more, less what leaked, at least 0.
        let excess = match cur {
            Some(_) => excess.saturating_add(1000).saturating_sub(leaked),
            None => 0,
        };
        if excess > burst {
            return (Update::Keep, Verdict::Refused(excess));
        }
        *b = encode(excess, now.max(last));
        // Once a request's 1000 more have leaked too, the bucket says what
        // a missing one does (excess 0): it may go.
        let moot_in = excess
            .saturating_add(1000)
            .saturating_mul(1000)
            .div_ceil(rate);
        let put = Update::Put {
            value: Value::Bytes(&b[..]),
            ttl_ms: moot_in.saturating_add(1),
            flags: 0,
        };
        (put, Verdict::Allowed(excess))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shmzone::Zones;

    /// The limiter as a user sees it: `burst` + 1 requests pass at once,
    /// the next are refused and leave the bucket as it was (the update
    /// keeps it), and once enough has leaked one passes again.
    #[test]
    fn refusals_leave_the_bucket_and_leaks_let_requests_through() {
        let zones = Zones::builder().dict("kv", 1 << 20).build().unwrap();
        let d = Dict::open(&zones.get("kv").unwrap()).unwrap();
        // 2 requests per second, burst 3.
        let (rate, burst) = (2_000, 3);
        for i in 0..4 {
            match limit(&d, "me", 1000, rate, burst).unwrap() {
                Verdict::Allowed(e) => assert_eq!(e, i * 1000),
                Verdict::Refused(e) => panic!("request {i} refused at excess {e}"),
            }
        }
        let stored = d.get(b"limit:me").unwrap().unwrap().value;
        for _ in 0..3 {
            match limit(&d, "me", 1000, rate, burst).unwrap() {
                Verdict::Refused(e) => assert_eq!(e, 4000),
                Verdict::Allowed(e) => panic!("allowed past the burst at {e}"),
            }
        }
        assert_eq!(d.get(b"limit:me").unwrap().unwrap().value, stored);
        // 500 ms later one request's worth has leaked.
        assert!(matches!(
            limit(&d, "me", 1500, rate, burst).unwrap(),
            Verdict::Allowed(3000)
        ));
        assert!(matches!(
            limit(&d, "me", 1500, rate, burst).unwrap(),
            Verdict::Refused(4000)
        ));
        // Another key has its own bucket.
        assert!(matches!(
            limit(&d, "you", 1500, rate, burst).unwrap(),
            Verdict::Allowed(0)
        ));
    }
}
