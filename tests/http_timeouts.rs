//! Slow clients must not deny service: many connections dripping a request
//! head a byte at a time (slowloris), dripping a body, or sitting idle,
//! while probe requests on fresh connections keep getting answers. Then the
//! server must have closed every slow connection itself (header timeout,
//! body timeout, idle keep-alive timeout), and counted them in /metrics.
//!
//! No tight timing assertions (a busy 2-core machine): probes must all
//! succeed, each within a generous bound.

mod http_server;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use http_server::{Client, Server};

/// How a slow connection behaves.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// Sends a request head one byte per tick, never finishing it.
    DripHead,
    /// Sends a complete head announcing a body, then the body a byte per
    /// tick.
    DripBody,
    /// Sends one request, reads the answer, then sits idle.
    Idle,
}

struct Slow {
    kind: Kind,
    s: TcpStream,
    /// When the server closed it (seen as EOF, reset or a failed write).
    closed_after: Option<Duration>,
    opened: Instant,
}

const HEAD: &[u8] = b"GET /hit HTTP/1.1\r\nHost: slow\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn open(server: &Server, kind: Kind) -> Slow {
    let mut s = TcpStream::connect_timeout(&server.addr, Duration::from_secs(10)).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    match kind {
        Kind::DripHead => s.write_all(&HEAD[..1]).unwrap(),
        Kind::DripBody => s
            .write_all(b"POST /hit HTTP/1.1\r\nHost: slow\r\nContent-Length: 100000\r\n\r\nx")
            .unwrap(),
        Kind::Idle => {
            s.write_all(b"GET /hit HTTP/1.1\r\nHost: idle\r\n\r\n")
                .unwrap();
            // Read the answer (small: one read gets it).
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = [0u8; 1024];
            assert!(s.read(&mut buf).unwrap() > 0);
        }
    }
    // Ticks only look: a read that would block is "still open".
    s.set_nonblocking(true).unwrap();
    Slow {
        kind,
        s,
        closed_after: None,
        opened: Instant::now(),
    }
}

/// One tick of a slow client: drip a byte (unless idle), and see whether
/// the server closed the connection.
fn tick(c: &mut Slow, n: usize, since: Instant) {
    if c.closed_after.is_some() {
        return;
    }
    let byte = match c.kind {
        Kind::DripHead => Some(HEAD[1 + n % (HEAD.len() - 1)]),
        Kind::DripBody => Some(b'x'),
        Kind::Idle => None,
    };
    let mut gone = false;
    if let Some(b) = byte {
        gone |= c.s.write_all(&[b]).is_err();
    }
    let mut buf = [0u8; 4096];
    loop {
        match c.s.read(&mut buf) {
            Ok(0) => {
                gone = true;
                break;
            }
            Ok(_) => {} // an error answer (408): keep reading to the EOF
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(_) => {
                gone = true;
                break;
            }
        }
    }
    if gone {
        let _ = since;
        c.closed_after = Some(c.opened.elapsed());
    }
}

#[test]
fn slow_and_idle_connections_do_not_deny_service() {
    let server = Server::start(&[
        "--workers",
        "2",
        "--header-timeout",
        "3",
        "--body-timeout",
        "3",
        "--keepalive",
        "2",
    ]);
    server.wait_workers(Some(2), "2 workers");
    let start = Instant::now();
    let mut slow: Vec<Slow> = Vec::new();
    for _ in 0..40 {
        slow.push(open(&server, Kind::DripHead));
        slow.push(open(&server, Kind::DripBody));
        slow.push(open(&server, Kind::Idle));
    }
    // 120 slow connections (80 dripping) for 6 s, each replaced by a new
    // one as soon as the server closes it (an attacker reconnects); a probe
    // on a new connection every other tick of 250 ms.
    let mut probes = Vec::new();
    let mut closed: Vec<Slow> = Vec::new();
    for n in 0..24 {
        for c in slow.iter_mut() {
            tick(c, n, start);
        }
        for i in (0..slow.len()).rev() {
            if slow[i].closed_after.is_some() {
                let kind = slow[i].kind;
                closed.push(slow.swap_remove(i));
                slow.push(open(&server, kind));
            }
        }
        if n % 2 == 0 {
            let t = Instant::now();
            let mut p = Client::connect(server.addr).expect("probe connect");
            let (code, _) = p.get("/hit").expect("probe answered");
            assert_eq!(code, 200);
            probes.push(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    // Then the attack stops: every connection left must be closed by the
    // server within its timeouts (bounded wait).
    let mut n = 24;
    while slow.iter().any(|c| c.closed_after.is_none()) && start.elapsed() < Duration::from_secs(30)
    {
        for c in slow.iter_mut() {
            tick(c, n, start);
        }
        n += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    let replaced = closed.len();
    for kind in [Kind::DripHead, Kind::DripBody, Kind::Idle] {
        let lived: Vec<Duration> = closed
            .iter()
            .filter(|c| c.kind == kind)
            .filter_map(|c| c.closed_after)
            .collect();
        println!(
            "{kind:?}: {} closed by the server during the attack, after {:?}..{:?}",
            lived.len(),
            lived.iter().min(),
            lived.iter().max()
        );
    }
    slow.extend(closed);
    let worst = probes.iter().max().unwrap();
    println!(
        "{} probes, slowest {worst:?}; {} slow connections, {replaced} closed by the server during the attack",
        probes.len(),
        slow.len()
    );
    assert!(
        *worst < Duration::from_secs(3),
        "a probe waited {worst:?} behind slow clients"
    );
    // Every slow connection was closed by the server, none kept forever.
    for (i, c) in slow.iter().enumerate() {
        assert!(
            c.closed_after.is_some(),
            "slow connection {i} ({:?}) still open after {:?}",
            c.kind,
            start.elapsed()
        );
    }
    // /metrics counted why.
    let mut m = server.connect();
    let (code, text) = m.get("/metrics").unwrap();
    assert_eq!(code, 200);
    let event = |name: &str| -> u64 {
        let key = format!("shmzone_http_connection_events_total{{event=\"{name}\"}} ");
        let line = text
            .lines()
            .find(|l| l.starts_with(&key))
            .unwrap_or_else(|| panic!("no {key} in\n{text}"));
        line[key.len()..].parse().unwrap()
    };
    assert!(
        replaced >= 80,
        "the server closed only {replaced} during the attack"
    );
    assert!(event("header_timeout") >= 40, "{text}");
    assert!(event("body_timeout") >= 40, "{text}");
    assert!(event("idle_closed") >= 40, "{text}");
    drop(m);
    server.stop();
}
