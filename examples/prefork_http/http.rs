//! A small, strict HTTP/1.1 server loop over a blocking `TcpStream`.
//!
//! Keep-alive and pipelining; a request head of at most 8 KiB; bodies (with
//! `Content-Length` only) read and dropped. Anything malformed gets 400 and
//! the connection is closed; every read has a timeout, so a slow or silent
//! client costs one thread for a bounded time and never hangs a worker.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::time::Duration;

use shmzone::prefork::{Wake, Worker};

const MAX_HEAD: usize = 8192;
const MAX_BODY: usize = 1 << 20;

/// A parsed request (the parts the routes need).
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
}

/// A response about to be written.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub extra: &'static str,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type,
            body: body.into(),
            extra: "",
        }
    }

    pub fn text(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response::new(status, "text/plain; charset=utf-8", body)
    }

    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response::new(status, "application/json", body)
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Timeouts of one connection.
pub struct Limits {
    pub keepalive: Duration,
    pub read_timeout: Duration,
}

/// Serves one connection until the client closes it, it idles past the
/// keep-alive timeout, a request is malformed, or the worker is told to stop
/// (the request in flight is answered first).
pub fn serve<F>(mut stream: TcpStream, worker: &Worker, limits: &Limits, route: F)
where
    F: Fn(&Request<'_>) -> Response,
{
    // Accepted sockets inherit O_NONBLOCK from the listener on some systems.
    if stream.set_nonblocking(false).is_err()
        || stream.set_read_timeout(Some(limits.read_timeout)).is_err()
        || stream.set_write_timeout(Some(limits.read_timeout)).is_err()
    {
        return;
    }
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; MAX_HEAD];
    let (mut start, mut end) = (0usize, 0usize);
    loop {
        // Wait for the next request, unless a pipelined one is buffered.
        if start == end {
            start = 0;
            end = 0;
            match worker.wait_readable(stream.as_fd(), Some(limits.keepalive)) {
                Wake::Ready => {}
                Wake::Stop | Wake::Timeout => return,
            }
        }
        // Read until the head is complete.
        let head_len = loop {
            if let Some(i) = find_head_end(&buf[start..end]) {
                break i;
            }
            if start > 0 {
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
            }
            if end == buf.len() {
                let _ = respond(
                    &mut stream,
                    &Response::text(431, "request head too large\n"),
                    false,
                );
                return;
            }
            match stream.read(&mut buf[end..]) {
                Ok(0) => {
                    if end > start {
                        let _ = respond(
                            &mut stream,
                            &Response::text(400, "incomplete request\n"),
                            false,
                        );
                    }
                    return;
                }
                Ok(n) => end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    let _ = respond(
                        &mut stream,
                        &Response::text(408, "request timeout\n"),
                        false,
                    );
                    return;
                }
                Err(_) => return,
            }
        };
        let head = &buf[start..start + head_len];
        let parsed = parse_head(head);
        let (response, keep_alive, body_len) = match &parsed {
            Err(status) => (
                Response::text(*status, format!("{}\n", reason(*status))),
                false,
                0,
            ),
            Ok(h) => {
                let req = Request {
                    method: h.method,
                    path: h.path,
                    query: h.query,
                };
                let mut r = route(&req);
                if h.method == "HEAD" {
                    r.body.clear();
                }
                (r, h.keep_alive, h.content_length)
            }
        };
        start += head_len;
        // Drop the body, if any: what is buffered, then the rest.
        let mut left = body_len;
        let buffered = left.min(end - start);
        start += buffered;
        left -= buffered;
        while left > 0 {
            let want = left.min(buf.len());
            match stream.read(&mut buf[..want]) {
                Ok(0) | Err(_) => return,
                Ok(n) => left -= n,
            }
            start = 0;
            end = 0;
        }
        let keep = keep_alive && !worker.should_stop();
        if respond(&mut stream, &response, keep).is_err() || !keep {
            return;
        }
    }
}

/// The length of the head (through the blank line), if complete.
fn find_head_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

struct Head<'a> {
    method: &'a str,
    path: &'a str,
    query: &'a str,
    keep_alive: bool,
    content_length: usize,
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

/// Parses a request head; `Err(status)` for a bad one.
fn parse_head(head: &[u8]) -> Result<Head<'_>, u16> {
    let text = std::str::from_utf8(head).map_err(|_| 400u16)?;
    let mut lines = text[..text.len() - 4].split("\r\n");
    let line = lines.next().ok_or(400u16)?;
    let mut parts = line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) => (m, t, v),
        _ => return Err(400),
    };
    if !is_token(method)
        || !target.starts_with('/')
        || target.bytes().any(|c| c <= b' ' || c == 0x7f)
    {
        return Err(400);
    }
    let minor = match version {
        "HTTP/1.1" => 1,
        "HTTP/1.0" => 0,
        v if v.starts_with("HTTP/") && v.len() == 8 && v.as_bytes()[6] == b'.' => return Err(505),
        _ => return Err(400),
    };
    let mut keep_alive = minor == 1;
    let mut content_length: Option<usize> = None;
    let mut host = false;
    for l in lines {
        let (name, value) = l.split_once(':').ok_or(400u16)?;
        if !is_token(name) {
            return Err(400); // also rejects obsolete line folding
        }
        let value = value.trim_matches(|c| c == ' ' || c == '\t');
        if name.eq_ignore_ascii_case("host") {
            if host {
                return Err(400);
            }
            host = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            let n: usize = if !value.is_empty() && value.bytes().all(|c| c.is_ascii_digit()) {
                value.parse().map_err(|_| 413u16)?
            } else {
                return Err(400);
            };
            if content_length.is_some_and(|c| c != n) {
                return Err(400);
            }
            if n > MAX_BODY {
                return Err(413);
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(501);
        } else if name.eq_ignore_ascii_case("connection") {
            for t in value.split(',').map(str::trim) {
                if t.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if t.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    if minor == 1 && !host {
        return Err(400);
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok(Head {
        method,
        path,
        query,
        keep_alive,
        content_length: content_length.unwrap_or(0),
    })
}

/// Writes the whole response in one buffer (one `write` for small ones).
fn respond(stream: &mut TcpStream, r: &Response, keep_alive: bool) -> io::Result<()> {
    let mut out = Vec::with_capacity(160 + r.body.len());
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nServer: shmzone-prefork\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n{}\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len(),
        if keep_alive { "keep-alive" } else { "close" },
        r.extra,
    );
    out.extend_from_slice(&r.body);
    stream.write_all(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        let h = parse_head(b"GET /limit?key=a HTTP/1.1\r\nHost: x\r\n\r\n")
            .ok()
            .unwrap();
        assert_eq!(
            (h.method, h.path, h.query, h.keep_alive),
            ("GET", "/limit", "key=a", true)
        );
        let h = parse_head(b"GET / HTTP/1.0\r\n\r\n").ok().unwrap();
        assert!(!h.keep_alive);
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\n\r\n").err(), Some(400)); // no Host
        assert_eq!(
            parse_head(b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n").err(),
            Some(400)
        );
        assert_eq!(
            parse_head(b"GET / HTTP/2.0\r\nHost: x\r\n\r\n").err(),
            Some(505)
        );
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n").err(),
            Some(400)
        );
        assert_eq!(
            parse_head(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\n").err(),
            Some(400)
        );
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nX"), Some(18));
    }
}
