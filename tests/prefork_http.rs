//! The example server, run for real: `examples/prefork_http.rs` is built
//! with cargo, started on 127.0.0.1 with an ephemeral port, and driven by a
//! std-only HTTP client. Loopback only; every loop is bounded; every read has
//! a timeout.
//!
//! Linux-only checks read `/proc` to find the master's children.

use std::collections::HashSet;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Builds the example once per test run, in its own target directory (so
/// the cargo running these tests never holds its lock), and returns the
/// binary's path.
fn binary() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // .../target/debug/deps/prefork_http-HASH → .../target
        let exe = std::env::current_exe().unwrap();
        let target = exe.ancestors().nth(3).unwrap().join("prefork-http-example");
        let status = Command::new(env!("CARGO"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args([
                "build",
                "--release",
                "--example",
                "prefork_http",
                "--bin",
                "shmzone-stat",
                "--target-dir",
            ])
            .arg(&target)
            .status()
            .expect("run cargo build");
        assert!(
            status.success(),
            "cargo build --example prefork_http failed"
        );
        target.join("release/examples/prefork_http")
    })
}

struct Server {
    child: Option<Child>,
    addr: SocketAddr,
    pid: u32,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(binary())
            .args(["--listen", "127.0.0.1:0", "--log", "warn"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the server");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        let addr = first
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .parse()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut err = BufReader::new(&mut err);
            let mut line = String::new();
            while err.read_line(&mut line).unwrap_or(0) > 0 {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
        });
        let pid = child.id();
        let s = Server {
            child: Some(child),
            addr,
            pid,
            log,
        };
        s.wait_workers(None, "workers to start");
        s
    }

    fn workers(&self) -> Vec<u32> {
        children(self.pid)
    }

    /// Waits until the master has `n` children (None: the number asked on
    /// the command line, 4 unless given).
    fn wait_workers(&self, n: Option<usize>, what: &str) {
        let n = n.unwrap_or(0);
        until(what, || {
            let w = self.workers();
            if n == 0 {
                !w.is_empty()
            } else {
                w.len() == n
            }
        });
    }

    fn signal(&self, sig: i32) {
        // SAFETY: sends a signal to our own child.
        assert_eq!(unsafe { libc::kill(self.pid as libc::pid_t, sig) }, 0);
    }

    /// SIGTERM; the master must exit 0 and leave no process behind.
    fn stop(mut self) {
        let workers = self.workers();
        assert!(!workers.is_empty());
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().unwrap();
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "master did not stop"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(
            status.code(),
            Some(0),
            "master exit status; log:\n{}",
            self.log()
        );
        for w in workers {
            assert!(
                !PathBuf::from(format!("/proc/{w}")).exists(),
                "worker {w} left behind"
            );
        }
        assert!(children(self.pid).is_empty());
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn connect(&self) -> Client {
        Client::connect(self.addr).unwrap()
    }

    /// The value of a top-level integer field of /stats.
    fn stat(&self, path: &[&str]) -> u64 {
        let (code, body) = self.connect().get("/stats").unwrap();
        assert_eq!(code, 200);
        json_u64(&body, path).unwrap_or_else(|| panic!("no {path:?} in {body}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let workers = children(self.pid);
            let _ = c.kill();
            let _ = c.wait();
            for w in workers {
                // SAFETY: kills a leftover worker of our server.
                unsafe { libc::kill(w as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
}

/// The pids whose parent is `pid` (from /proc/*/stat).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ..."; comm may hold spaces and parens.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let state = f.next();
        if f.next().and_then(|x| x.parse::<u32>().ok()) == Some(pid) && state != Some("Z") {
            out.push(p);
        }
    }
    out.sort_unstable();
    out
}

fn until(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A keep-alive HTTP/1.1 client over one connection.
struct Client {
    r: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr) -> io::Result<Client> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_write_timeout(Some(Duration::from_secs(10)))?;
        s.set_nodelay(true)?;
        Ok(Client {
            r: BufReader::new(s),
        })
    }

    fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.r.get_mut().write_all(bytes)
    }

    fn get(&mut self, path: &str) -> io::Result<(u16, String)> {
        self.send_raw(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())?;
        self.read_response()
    }

    fn read_response(&mut self) -> io::Result<(u16, String)> {
        let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
        let mut line = String::new();
        if self.r.read_line(&mut line)? == 0 {
            return Err(bad("closed"));
        }
        let code: u16 = line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("status line"))?;
        let mut len = None;
        loop {
            line.clear();
            if self.r.read_line(&mut line)? == 0 {
                return Err(bad("closed in head"));
            }
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse::<usize>().ok();
                }
            }
        }
        let mut body = vec![0; len.ok_or_else(|| bad("no length"))?];
        self.r.read_exact(&mut body)?;
        Ok((code, String::from_utf8(body).map_err(|_| bad("utf8"))?))
    }

    /// Whether the server closed the connection (EOF within the timeout).
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.r.read(&mut b), Ok(0))
    }
}

/// A u64 at `path` in a flat-enough JSON text (`["hits"]`,
/// `["limiter", "keys"]`): finds each key in turn after the previous one.
fn json_u64(body: &str, path: &[&str]) -> Option<u64> {
    let mut at = 0;
    for k in path {
        at += body[at..].find(&format!("\"{k}\":"))? + k.len() + 3;
    }
    let digits: String = body[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// The counters zone's per-class "fails" of the limits zone, summed.
fn limits_zone_fails(stats: &str) -> u64 {
    let at = stats.find("\"name\":\"limits\"").unwrap();
    let zone = &stats[at..];
    let zone = &zone[..zone.find("]}").unwrap()];
    zone.match_indices("\"fails\":")
        .map(|(i, _)| json_u64(&zone[i..], &["fails"]).unwrap())
        .sum()
}

/// What one load run saw.
#[derive(Default)]
struct Load {
    /// The totals carried by the 200 answers.
    totals: Vec<u64>,
    /// Requests that got no (complete) answer.
    failed: u64,
    /// Answers other than 200.
    other: u64,
}

/// `conns` threads each send `per_conn` GET /hit on keep-alive connections,
/// reconnecting after an error (the failed request is not retried).
fn hit_load(
    addr: SocketAddr,
    conns: usize,
    per_conn: usize,
    answered: &AtomicU64,
    last_pid: &AtomicU64,
) -> Load {
    let results: Vec<Load> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..conns)
            .map(|_| {
                s.spawn(|| {
                    let mut load = Load::default();
                    let mut client: Option<Client> = None;
                    for _ in 0..per_conn {
                        if client.is_none() {
                            client = Client::connect(addr).ok();
                        }
                        let Some(c) = client.as_mut() else {
                            load.failed += 1;
                            std::thread::sleep(Duration::from_millis(5));
                            continue;
                        };
                        match c.get("/hit") {
                            Ok((200, body)) => {
                                load.totals.push(json_u64(&body, &["hits"]).unwrap());
                                last_pid
                                    .store(json_u64(&body, &["pid"]).unwrap(), Ordering::Relaxed);
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(_) => load.other += 1,
                            Err(_) => {
                                load.failed += 1;
                                client = None;
                            }
                        }
                    }
                    load
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all = Load::default();
    for l in results {
        all.totals.extend(l.totals);
        all.failed += l.failed;
        all.other += l.other;
    }
    all
}

#[test]
fn ten_thousand_hits_are_counted_exactly() {
    let server = Server::start(&["--workers", "4"]);
    server.wait_workers(Some(4), "4 workers");
    let (answered, last_pid) = (AtomicU64::new(0), AtomicU64::new(0));
    let load = hit_load(server.addr, 8, 1250, &answered, &last_pid);
    assert_eq!(load.failed, 0);
    assert_eq!(load.other, 0);
    let mut totals = load.totals;
    totals.sort_unstable();
    assert_eq!(
        totals,
        (1..=10_000).collect::<Vec<u64>>(),
        "every total once"
    );
    assert_eq!(server.stat(&["hits"]), 10_000);
    server.stop();
}

#[test]
fn killed_worker_is_respawned_and_the_counter_stays_exact() {
    let server = Server::start(&["--workers", "4"]);
    server.wait_workers(Some(4), "4 workers");
    let before = server.workers();
    let (answered, last_pid) = (AtomicU64::new(0), AtomicU64::new(0));
    let mut victim = 0;
    let load = std::thread::scope(|s| {
        let load = s.spawn(|| hit_load(server.addr, 8, 1250, &answered, &last_pid));
        until("load under way", || {
            answered.load(Ordering::Relaxed) >= 2000
        });
        // A worker that has just answered: it is serving a connection now.
        victim = last_pid.load(Ordering::Relaxed) as u32;
        assert!(before.contains(&victim));
        // SAFETY: kills one worker of our own server.
        let killed = unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) };
        assert_eq!(killed, 0);
        until("respawn", || {
            let now = server.workers();
            now.len() == 4 && !now.contains(&victim)
        });
        load.join().unwrap()
    });
    assert_eq!(load.other, 0);
    let answered = load.totals.len() as u64;
    let final_count = server.stat(&["hits"]);
    // Every answered increment is counted, each total handed out once.
    let distinct: HashSet<u64> = load.totals.iter().copied().collect();
    assert_eq!(distinct.len() as u64, answered, "a total answered twice");
    assert!(load.totals.iter().all(|&t| (1..=final_count).contains(&t)));
    // The counter is bumped before the answer is written, so an increment
    // whose answer was lost with the killed worker may count: it shows as a
    // total no client received. There can be no more of those than
    // requests left unanswered, and without them the counter equals the
    // 200 answers exactly.
    let unanswered_but_counted = final_count - answered;
    assert!(
        unanswered_but_counted <= load.failed,
        "{unanswered_but_counted} counted without an answer, only {} requests failed",
        load.failed
    );
    assert_eq!(answered + load.failed, 10_000);
    println!(
        "kill mid-load: {answered} answered (200), {} failed, counter {final_count}, {unanswered_but_counted} counted but unanswered",
        load.failed
    );
    // /hit keeps working after the respawn, from every worker slot.
    let mut c = server.connect();
    let (code, body) = c.get("/hit").unwrap();
    assert_eq!(code, 200);
    assert_eq!(json_u64(&body, &["hits"]), Some(final_count + 1));
    let log = server.log();
    assert!(
        log.contains(&format!("pid {victim}) was killed by SIGKILL")),
        "{log}"
    );
    server.stop();
}

#[test]
fn limiter_refuses_beyond_the_rate_per_key_across_workers() {
    // One connection per worker at a time: four open connections are served
    // by four different workers.
    let server = Server::start(&[
        "--workers",
        "4",
        "--threads",
        "1",
        "--rate",
        "1r/m",
        "--burst",
        "5",
    ]);
    server.wait_workers(Some(4), "4 workers");
    let mut clients: Vec<Client> = (0..4).map(|_| server.connect()).collect();
    let mut pids = HashSet::new();
    let (mut ok, mut refused) = (0, 0);
    for round in 0..5 {
        for c in clients.iter_mut() {
            let (code, body) = c.get("/limit?key=alice").unwrap();
            pids.insert(json_u64(&body, &["pid"]).unwrap());
            match code {
                200 => ok += 1,
                429 => refused += 1,
                other => panic!("round {round}: {other} {body}"),
            }
        }
    }
    assert_eq!(pids.len(), 4, "served by four workers");
    // nginx's burst=5: the first request plus five above the rate.
    assert_eq!((ok, refused), (6, 14));
    // Another key has its own bucket.
    assert_eq!(clients[2].get("/limit?key=bob").unwrap().0, 200);
    assert_eq!(clients[3].get("/limit").unwrap().0, 400);
    drop(clients);
    server.stop();
}

#[test]
fn limiter_evicts_least_recently_used_keys_when_its_zone_is_full() {
    let server = Server::start(&[
        "--workers",
        "2",
        "--rate",
        "1r/m",
        "--burst",
        "0",
        "--limit-zone",
        "32k",
    ]);
    let mut c = server.connect();
    let n = 1000;
    for i in 0..n {
        let (code, body) = c.get(&format!("/limit?key=key{i}")).unwrap();
        assert_eq!(code, 200, "key{i}: {body}");
    }
    let (_, stats) = c.get("/stats").unwrap();
    let keys = json_u64(&stats, &["limiter", "keys"]).unwrap();
    let evicted = json_u64(&stats, &["limiter", "evicted"]).unwrap();
    assert!(keys < n, "the zone cannot hold {n} keys: {stats}");
    assert_eq!(keys + evicted, n, "{stats}");
    assert!(
        limits_zone_fails(&stats) > 0,
        "the allocator said no first: {stats}"
    );
    assert!(stats.contains("\"consistent\":true"), "{stats}");
    // The newest key is still limited; the oldest was evicted, so it is new.
    assert_eq!(c.get(&format!("/limit?key=key{}", n - 1)).unwrap().0, 429);
    assert_eq!(c.get("/limit?key=key0").unwrap().0, 200);
    drop(c);
    server.stop();
}

#[test]
fn sighup_keeps_the_counter_and_the_limiter() {
    let server = Server::start(&["--workers", "2", "--rate", "1r/m", "--burst", "0"]);
    server.wait_workers(Some(2), "2 workers");
    let mut c = server.connect();
    for _ in 0..100 {
        assert_eq!(c.get("/hit").unwrap().0, 200);
    }
    assert_eq!(c.get("/limit?key=carol").unwrap().0, 200);
    drop(c);
    let old = server.workers();
    server.signal(libc::SIGHUP);
    until("a new generation", || {
        let now = server.workers();
        now.len() == 2 && now.iter().all(|p| !old.contains(p))
    });
    assert_eq!(server.stat(&["hits"]), 100, "the counters zone was reused");
    let mut c = server.connect();
    let (_, body) = c.get("/hit").unwrap();
    assert_eq!(json_u64(&body, &["hits"]), Some(101));
    assert_eq!(
        c.get("/limit?key=carol").unwrap().0,
        429,
        "the limits zone was reused"
    );
    drop(c);
    server.stop();
}

#[test]
fn malformed_and_unknown_requests_never_hurt_a_worker() {
    let server = Server::start(&["--workers", "1", "--read-timeout", "1"]);
    let mut c = server.connect();
    assert_eq!(c.get("/nope").unwrap().0, 404);
    assert_eq!(c.get("/hit").unwrap().0, 200, "keep-alive after a 404");
    c.send_raw(b"POST /hit HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        .unwrap();
    assert_eq!(c.read_response().unwrap().0, 405);
    // Pipelined: two requests in one write, two answers in order.
    c.send_raw(b"GET /hit HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(c.read_response().unwrap().0, 200);
    assert_eq!(c.read_response().unwrap().0, 404);
    for garbage in [
        &b"garbage\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET  /hit HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /hit HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n",
        b"GET /hit HTTP/1.1\r\nno colon\r\n\r\n",
        b"\x00\xff\xfe\r\n\r\n",
    ] {
        let mut g = server.connect();
        g.send_raw(garbage).unwrap();
        assert_eq!(g.read_response().unwrap().0, 400, "{garbage:?}");
        assert!(g.closed(), "closed after a 400");
    }
    let mut big = server.connect();
    big.send_raw(format!("GET /{} HTTP/1.1\r\n", "a".repeat(10_000)).as_bytes())
        .unwrap();
    assert_eq!(big.read_response().unwrap().0, 431);
    // Half a request, then silence: 408 after the read timeout, no hang.
    let mut slow = server.connect();
    slow.send_raw(b"GET /hit HTTP/1.1\r\nHo").unwrap();
    assert_eq!(slow.read_response().unwrap().0, 408);
    // The one worker is still there and serving.
    assert_eq!(c.get("/hit").unwrap().0, 200);
    assert_eq!(server.stat(&["hits"]), 3);
    drop(c);
    server.stop();
}

#[test]
fn sigterm_lets_an_idle_keepalive_connection_go_and_exits_zero() {
    let server = Server::start(&["--workers", "2"]);
    let mut idle = server.connect();
    assert_eq!(idle.get("/hit").unwrap().0, 200);
    let addr = server.addr;
    server.stop();
    assert!(idle.closed(), "the idle connection was closed");
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err());
}

/// `--named`: the region is a POSIX shm object that the inspector, an
/// unrelated process, reads while the server serves; a graceful stop
/// removes the name.
#[test]
fn the_inspector_reads_a_named_region_while_the_server_serves() {
    let name = format!("/shmzone-test-http-{}", std::process::id());
    let id = format!("posix:{name}");
    let server = Server::start(&["--workers", "2", "--named", &id, "--replace"]);
    let mut c = Client::connect(server.addr).unwrap();
    for _ in 0..25 {
        assert_eq!(c.get("/hit").unwrap().0, 200);
    }
    assert_eq!(c.get("/limit?key=k").unwrap().0, 200);
    let shm = PathBuf::from(format!("/dev/shm{name}"));
    assert!(shm.exists());
    let inspector = binary()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("shmzone-stat");
    let out = Command::new(&inspector).arg(&id).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for zone in ["counters", "limits"] {
        let row = table
            .lines()
            .find(|l| l.starts_with(zone))
            .unwrap_or_else(|| panic!("no row for {zone} in\n{table}"));
        assert!(row.ends_with("ok"), "{row}");
    }
    let out = Command::new(&inspector)
        .args(["--json", &id])
        .output()
        .unwrap();
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && json.contains("\"counters\""),
        "{json}"
    );
    drop(c);
    server.stop();
    assert!(!shm.exists(), "a graceful stop removes the name");
}

#[test]
fn help_lists_the_options() {
    let out = Command::new(binary()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for opt in [
        "--workers",
        "--listen",
        "--rate",
        "--burst",
        "--limit-zone",
        "--backend",
    ] {
        assert!(text.contains(opt), "{opt} missing from --help");
    }
    let bad = Command::new(binary()).arg("--workers=0").output().unwrap();
    assert!(!bad.status.success());
}
