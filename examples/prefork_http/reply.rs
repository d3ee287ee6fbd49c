//! Building answers: the reply type, its header map recycled from the
//! request (`SPARE_HEADERS`), and the JSON of the hot routes written
//! directly.

use std::cell::{Cell, RefCell};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderMap, HeaderValue, CONNECTION, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde::Serialize;

/// The answer type of every route.
pub type Reply = Response<Full<Bytes>>;

thread_local! {
    /// A request's header map, emptied, for the answer's headers: hyper
    /// keeps an answer's map to parse the connection's next request into,
    /// so passing each request's map on to its answer leaves one map per
    /// connection going round, where a new one per answer cost two
    /// allocations and their frees ([`reply`], [`recycle_headers`]).
    static SPARE_HEADERS: Cell<Option<HeaderMap>> = const { Cell::new(None) };
    /// Where /hit and /limit write their JSON, copied out at its exact
    /// size (one allocation, which `Bytes` takes as it is).
    static JSON_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// An answer whose JSON body `write` makes.
pub fn json_with(status: StatusCode, write: impl FnOnce(&mut Vec<u8>)) -> Reply {
    let body = JSON_BUF.with_borrow_mut(|b| {
        b.clear();
        write(b);
        Bytes::copy_from_slice(b)
    });
    reply(status, "application/json", body)
}

/// An answer with a body of `content_type`, in the spare header map if
/// there is one.
pub fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut headers = SPARE_HEADERS.take().unwrap_or_default();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

/// Appends `n` in decimal.
pub fn push_u64(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// Appends `milli` / 1000 as a JSON number with at least one decimal
/// ("5.0", "0.25"), as serde_json writes that f64 (exact below 2^53).
pub fn push_milli(buf: &mut Vec<u8>, milli: u64) {
    push_u64(buf, milli / 1000);
    buf.push(b'.');
    let frac = milli % 1000;
    let d = [frac / 100, frac / 10 % 10, frac % 10];
    let keep = match d {
        [_, 0, 0] => 1,
        [_, _, 0] => 2,
        _ => 3,
    };
    buf.extend(d[..keep].iter().map(|&x| b'0' + x as u8));
}

pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    reply(status, "text/plain; charset=utf-8", body)
}

pub fn json(status: StatusCode, v: &impl Serialize) -> Reply {
    let mut body = serde_json::to_vec(v).unwrap_or_default();
    body.push(b'\n');
    reply(status, "application/json", body)
}

/// An error answer after which the connection is closed.
pub fn closing(status: StatusCode, body: &'static str) -> Reply {
    let mut r = text(status, body);
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Keeps a request's header map, emptied, for the next answer's headers.
pub fn recycle_headers(mut h: HeaderMap) {
    h.clear();
    SPARE_HEADERS.set(Some(h));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_as_serde_json_writes_them() {
        for n in [0, 1, 9, 10, 99, 100, 12_345, u64::from(u32::MAX), u64::MAX] {
            let mut b = Vec::new();
            push_u64(&mut b, n);
            assert_eq!(b, serde_json::to_vec(&n).unwrap());
        }
        let milli = (0..20_000).chain((0..2_000).map(|i| i * 1_000_003));
        for m in milli {
            let mut b = Vec::new();
            push_milli(&mut b, m);
            let want = serde_json::to_string(&(m as f64 / 1000.0)).unwrap();
            assert_eq!(String::from_utf8(b).unwrap(), want, "{m}");
        }
    }
}
