//! The example server, run for real (see `tests/http_server/mod.rs` for the
//! harness): 10,000 `/hit` over 8 connections counted exactly, a worker
//! SIGKILLed mid-load, the limiter across workers and under eviction,
//! /kv with TTLs and a worker killed while storing, SIGHUP, SIGTERM with
//! `/proc` checked, malformed requests, the access log read by
//! shmzone-tail and the inspector on a named region.

mod http_server;

use std::collections::HashSet;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_server::{binary, json_u64, until, Client, Server};

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
        "--connections",
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
fn limiter_buckets_are_evicted_when_the_dictionary_is_full() {
    let server = Server::start(&[
        "--workers",
        "2",
        "--rate",
        "1r/m",
        "--burst",
        "0",
        "--kv-zone",
        "256k",
    ]);
    let mut c = server.connect();
    let n = 6000;
    for i in 0..n {
        let (code, body) = c.get(&format!("/limit?key=key{i}")).unwrap();
        assert_eq!(code, 200, "key{i}: {body}");
    }
    let (_, stats) = c.get("/stats").unwrap();
    let entries = json_u64(&stats, &["kv", "entries"]).unwrap();
    let evictions = json_u64(&stats, &["kv", "evictions"]).unwrap();
    assert!(entries < n, "the zone cannot hold {n} buckets: {stats}");
    assert!(evictions > 0, "{stats}");
    // The newest key is still limited; some keys were evicted, so they are
    // new again (which ones is the eviction's choice: look at every 10th).
    assert_eq!(c.get(&format!("/limit?key=key{}", n - 1)).unwrap().0, 429);
    let again = (0..n)
        .step_by(10)
        .filter(|i| c.get(&format!("/limit?key=key{i}")).unwrap().0 == 200)
        .count();
    assert!(again > 0, "no bucket was evicted");
    drop(c);
    let log = server.log();
    assert!(!server_log_has_dict_errors(&log), "{log}");
    server.stop();
}

/// Whether the master logged a dictionary check failure.
fn server_log_has_dict_errors(log: &str) -> bool {
    log.contains("dictionary \"kv\" after")
}

#[test]
fn kv_put_get_delete_and_ttl() {
    let server = Server::start(&["--workers", "2", "--kv-zone", "256k"]);
    let mut c = server.connect();
    assert_eq!(c.get("/kv/k1").unwrap().0, 404);
    assert_eq!(c.request("PUT", "/kv/k1", b"hello").unwrap().0, 201);
    assert_eq!(c.get("/kv/k1").unwrap(), (200, "hello".to_string()));
    assert_eq!(c.request("PUT", "/kv/k1", b"world").unwrap().0, 204);
    // Another connection (maybe another worker) sees the same value.
    let mut d = server.connect();
    assert_eq!(d.get("/kv/k1").unwrap(), (200, "world".to_string()));
    assert_eq!(d.request("DELETE", "/kv/k1", b"").unwrap().0, 204);
    assert_eq!(c.get("/kv/k1").unwrap().0, 404);
    assert_eq!(c.request("DELETE", "/kv/k1", b"").unwrap().0, 404);
    // An empty value is a value.
    assert_eq!(c.request("PUT", "/kv/empty", b"").unwrap().0, 201);
    assert_eq!(c.get("/kv/empty").unwrap(), (200, String::new()));
    // A TTL: there, then gone within a bounded wait.
    assert_eq!(c.request("PUT", "/kv/t?ttl=300", b"brief").unwrap().0, 201);
    assert_eq!(c.request("PUT", "/kv/keep", b"long").unwrap().0, 201);
    assert_eq!(c.get("/kv/t").unwrap(), (200, "brief".to_string()));
    let start = std::time::Instant::now();
    // Polled for at most 10 s.
    let gone = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        c.get("/kv/t").unwrap().0 == 404
    });
    assert!(gone, "the ttl expired within 10 s");
    assert!(start.elapsed() >= Duration::from_millis(250));
    assert_eq!(c.get("/kv/keep").unwrap(), (200, "long".to_string()));
    // Bad requests.
    assert_eq!(c.get("/kv/").unwrap().0, 400);
    assert_eq!(c.request("PUT", "/kv/x?ttl=soon", b"v").unwrap().0, 400);
    let (code, _) = c.request("POST", "/kv/x", b"v").unwrap();
    assert_eq!(code, 405);
    // Larger than the zone can ever hold: 413 or 507, with the dict's text.
    let big = vec![b'x'; 512 << 10];
    let (code, body) = c.request("PUT", "/kv/big", &big).unwrap();
    assert!(code == 413 || code == 507, "{code} {body}");
    assert!(!body.is_empty());
    assert_eq!(c.get("/kv/keep").unwrap(), (200, "long".to_string()));
    // /hit's counter is the key "hits".
    let (_, hit) = c.get("/hit").unwrap();
    assert_eq!(json_u64(&hit, &["hits"]), Some(1));
    assert_eq!(c.get("/kv/hits").unwrap(), (200, "1".to_string()));
    drop((c, d));
    server.stop();
}

/// Stores while a worker is SIGKILLed: every stored value reads back
/// exactly, /hit stays exact, and the master's dictionary check passes.
#[test]
fn killed_worker_leaves_kv_and_hits_consistent() {
    let server = Server::start(&["--workers", "3"]);
    server.wait_workers(Some(3), "3 workers");
    let stored = std::sync::Mutex::new(Vec::<(String, String)>::new());
    let hits_ok = AtomicU64::new(0);
    let last_pid = AtomicU64::new(0);
    let victim = std::thread::scope(|s| {
        for t in 0..4 {
            let (stored, hits_ok, last_pid) = (&stored, &hits_ok, &last_pid);
            let addr = server.addr;
            s.spawn(move || {
                let mut client: Option<Client> = None;
                for i in 0..400 {
                    if client.is_none() {
                        client = Client::connect(addr).ok();
                    }
                    let Some(c) = client.as_mut() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    let (key, value) = (format!("t{t}-{i}"), format!("value {t} {i}"));
                    match c.request("PUT", &format!("/kv/{key}"), value.as_bytes()) {
                        Ok((201, _)) => stored.lock().unwrap().push((key, value)),
                        Ok((code, body)) => panic!("PUT {key}: {code} {body}"),
                        Err(_) => {
                            client = None;
                            continue;
                        }
                    }
                    match c.get("/hit") {
                        Ok((200, body)) => {
                            hits_ok.fetch_add(1, Ordering::Relaxed);
                            last_pid.store(json_u64(&body, &["pid"]).unwrap(), Ordering::Relaxed);
                        }
                        Ok((code, body)) => panic!("/hit: {code} {body}"),
                        Err(_) => client = None,
                    }
                }
            });
        }
        until("load under way", || hits_ok.load(Ordering::Relaxed) >= 300);
        let victim = last_pid.load(Ordering::Relaxed) as u32;
        // SAFETY: kills one worker of our own server.
        let killed = unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) };
        assert_eq!(killed, 0);
        victim
    });
    until("respawn", || {
        let now = server.workers();
        now.len() == 3 && !now.contains(&victim)
    });
    let stored = stored.into_inner().unwrap();
    assert!(stored.len() > 300);
    let mut c = server.connect();
    for (key, value) in &stored {
        assert_eq!(
            c.get(&format!("/kv/{key}")).unwrap(),
            (200, value.clone()),
            "{key}"
        );
    }
    // Every answered /hit was counted; at most the requests cut by the kill
    // were counted without an answer.
    let hits = server.stat(&["hits"]);
    let answered = hits_ok.load(Ordering::Relaxed);
    assert!(
        hits >= answered && hits <= answered + 4,
        "{hits} vs {answered}"
    );
    drop(c);
    let log = server.log();
    assert!(!server_log_has_dict_errors(&log), "{log}");
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
        "the kv zone (and its buckets) was reused"
    );
    drop(c);
    server.stop();
}

#[test]
fn malformed_and_unknown_requests_never_hurt_a_worker() {
    let server = Server::start(&["--workers", "1", "--header-timeout", "1"]);
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
    // Half a request, then silence: closed after the header timeout, no
    // hang (hyper closes without an answer).
    let mut slow = server.connect();
    slow.send_raw(b"GET /hit HTTP/1.1\r\nHo").unwrap();
    let start = std::time::Instant::now();
    assert!(slow.closed(), "closed after the header timeout");
    assert!(start.elapsed() < Duration::from_secs(8));
    // The one worker is still there and serving (on a new connection: the
    // header timeout also bounds how long `c` may sit idle).
    assert!(c.closed(), "idle past the header timeout");
    let mut c = server.connect();
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
    for zone in ["counters", "kv", "access_log"] {
        let row = table
            .lines()
            .find(|l| l.starts_with(zone))
            .unwrap_or_else(|| panic!("no row for {zone} in\n{table}"));
        assert!(row.ends_with("ok"), "{row}");
    }
    // The dictionary (2 entries: "hits" and the bucket "limit:k") and the
    // ring (a record per request so far).
    assert!(table.contains("    dict: 2 entries"), "{table}");
    let ring = table
        .lines()
        .find(|l| l.starts_with("    ring: "))
        .unwrap_or_else(|| panic!("no ring line in\n{table}"));
    assert!(ring.contains(" 26 records written"), "{ring}");
    let out = Command::new(&inspector)
        .args(["--json", &id])
        .output()
        .unwrap();
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && json.contains("\"counters\""),
        "{json}"
    );
    assert!(
        json.contains("\"dict\": {\"check\": \"ok\", \"entries\": 2"),
        "{json}"
    );
    assert!(json.contains("\"written\": 26,"), "{json}");
    let out = Command::new(&inspector)
        .args(["--prometheus", &id])
        .output()
        .unwrap();
    let prom = String::from_utf8_lossy(&out.stdout);
    assert!(
        prom.contains("shmzone_dict_entries{zone=\"kv\"} 2\n"),
        "{prom}"
    );
    assert!(
        prom.contains("shmzone_ring_written_total{zone=\"access_log\"} "),
        "{prom}"
    );
    // The access log: shmzone-tail prints a record per request.
    assert_eq!(c.request("PUT", "/kv/logged", b"v").unwrap().0, 201);
    let out = Command::new(env!("CARGO_BIN_EXE_shmzone-tail"))
        .args(["--from-start", "--no-follow", &id])
        .output()
        .unwrap();
    let tail = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{tail}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(tail.matches(" GET /hit 200 ").count(), 25, "{tail}");
    assert_eq!(tail.matches(" GET /limit?key=k 200 ").count(), 1, "{tail}");
    assert_eq!(tail.matches(" PUT /kv/logged 201 ").count(), 1, "{tail}");
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
        "--kv-zone",
        "--access-log",
        "--backend",
    ] {
        assert!(text.contains(opt), "{opt} missing from --help");
    }
    let bad = Command::new(binary()).arg("--workers=0").output().unwrap();
    assert!(!bad.status.success());
}
