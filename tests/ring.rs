//! The log ring with real processes: forked producers and readers, a reader
//! in an unrelated process attached by name, a post-mortem read, and
//! `shmzone-tail`.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::named::{child_request, run_child, Fresh};
use common::{fork_child, wait_ok, wait_within};
use shmzone::ring::{Reader, Record, Ring, RingConfig, RingError, Start};
use shmzone::{NamedSpec, Region, Zones};

const ROLE_VAR: &str = "SHMZONE_RING_TEST_ROLE";

/// A fork-shared region with one zone, "log", sized for a ring of `cfg`.
fn log_zones(cfg: &RingConfig) -> Zones {
    Zones::builder()
        .zone("log", cfg.zone_size())
        .build()
        .unwrap()
}

/// A record of the tests: producer number, record number, filler of a
/// length that depends on both, and a check word over all of it.
fn record(producer: u64, i: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(140);
    v.extend_from_slice(&producer.to_le_bytes());
    v.extend_from_slice(&i.to_le_bytes());
    let fill = ((producer * 31 + i * 7) % 100) as usize;
    v.extend((0..fill).map(|k| (k as u64 ^ i ^ producer) as u8));
    let c = check(&v);
    v.extend_from_slice(&c.to_le_bytes());
    v
}

fn check(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// The producer and record numbers of a record, if its check word holds.
fn parse(b: &[u8]) -> Option<(u64, u64)> {
    if b.len() < 24 {
        return None;
    }
    let (body, c) = b.split_at(b.len() - 8);
    if check(body) != u64::from_le_bytes(c.try_into().unwrap()) {
        return None;
    }
    Some((
        u64::from_le_bytes(body[..8].try_into().unwrap()),
        u64::from_le_bytes(body[8..16].try_into().unwrap()),
    ))
}

/// Shared counters for children to report through: a page of u64s.
struct Board(Region);

impl Board {
    fn new() -> Board {
        Board(Region::new(4096).unwrap())
    }
    fn at(&self, i: usize) -> &AtomicU64 {
        assert!(i < 512);
        // SAFETY: the region is a page of zeroed shared memory, 8-aligned,
        // used only through atomics, alive as long as `self`.
        unsafe { &*self.0.as_ptr().cast::<AtomicU64>().add(i) }
    }
}

/// Reads until `total` records were read or lost (or `limit` passes);
/// checks every record and the order per producer. Returns (read, lost).
fn read_all(reader: &mut Reader<'_>, total: u64, limit: Duration) -> Result<(u64, u64), String> {
    let mut next = [0u64; 16];
    let deadline = Instant::now() + limit;
    while reader.read() + reader.lost() < total {
        if Instant::now() > deadline {
            return Err(format!("timed out: {:?}", reader.stats()));
        }
        let Some(r) = reader.next_record().map_err(|e| e.to_string())? else {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        };
        let (p, i) = parse(r.data).ok_or_else(|| format!("torn record seq {}", r.seq))?;
        if p >= 16 || i < next[p as usize] {
            return Err(format!(
                "record {p}/{i} out of order (expected {})",
                next[p as usize]
            ));
        }
        next[p as usize] = i + 1;
    }
    Ok((reader.read(), reader.lost()))
}

#[test]
fn four_producers_two_readers_read_everything_once_in_order() {
    const K: u64 = 20_000;
    let cfg = RingConfig {
        slots: 4,
        slot_bytes: 4 << 20,
        max_record: 256,
        timestamps: true,
    };
    let zones = log_zones(&cfg);
    let ring = Ring::create(&zones.get("log").unwrap(), &cfg).unwrap();
    let board = Board::new();
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let (ring, board) = (&ring, &board);
            fork_child(move || {
                // Lossless (the slots hold every record): each record exactly
                // once, in order per producer.
                let mut reader = ring.reader(Start::Oldest);
                let mut next = [0u64; 4];
                let deadline = Instant::now() + Duration::from_secs(60);
                while next.iter().sum::<u64>() < 4 * K {
                    if Instant::now() > deadline {
                        return 2;
                    }
                    // Reader 0 reads one record a call, reader 1 a copy a
                    // call.
                    let mut bad = 0;
                    let mut see = |rec: Record<'_>| match parse(rec.data) {
                        Some((p, i)) if p < 4 && i == next[p as usize] => {
                            next[p as usize] += 1;
                            if rec.time_ns.is_none() {
                                bad = 5;
                            }
                        }
                        _ => bad = 3,
                    };
                    let got = if r == 0 {
                        reader.next_record().map(|rec| rec.map(&mut see).is_some())
                    } else {
                        reader.read_batch(&mut see).map(|n| n > 0)
                    };
                    if bad != 0 {
                        return bad;
                    }
                    match got {
                        Ok(true) => {}
                        Ok(false) => std::thread::sleep(Duration::from_micros(100)),
                        Err(_) => return 4,
                    }
                }
                board.at(r * 2).store(reader.read(), Ordering::SeqCst);
                board.at(r * 2 + 1).store(reader.lost(), Ordering::SeqCst);
                0
            })
        })
        .collect();
    let producers: Vec<_> = (0..4u64)
        .map(|p| {
            let ring = &ring;
            fork_child(move || {
                let mut log = ring.producer().expect("a free slot");
                for i in 0..K {
                    if log.write(&record(p, i)).is_err() {
                        return 1;
                    }
                }
                0
            })
        })
        .collect();
    for pid in producers {
        wait_ok(pid);
    }
    for pid in readers {
        assert_eq!(
            wait_within(pid, Duration::from_secs(90)),
            common::Exit::Code(0)
        );
    }
    for r in 0..2 {
        assert_eq!(
            board.at(r * 2).load(Ordering::SeqCst),
            4 * K,
            "reader {r} read"
        );
        assert_eq!(
            board.at(r * 2 + 1).load(Ordering::SeqCst),
            0,
            "reader {r} lost"
        );
    }
    let st = ring.stats();
    assert_eq!((st.written, st.overwritten, st.torn), (4 * K, 0, 0));
    assert_eq!(st.producers, 0, "slots given back on exit");
}

/// Board slots where the lapped test's readers say they are ready.
const READY: usize = 10;

#[test]
fn lapped_readers_count_every_gap_and_never_see_a_torn_record() {
    const K: u64 = 50_000;
    let cfg = RingConfig {
        slots: 4,
        slot_bytes: 16 << 10,
        max_record: 256,
        timestamps: false,
    };
    let zones = log_zones(&cfg);
    let ring = Ring::create(&zones.get("log").unwrap(), &cfg).unwrap();
    let board = Board::new();
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let (ring, board) = (&ring, &board);
            fork_child(move || {
                let mut reader = ring.reader(Start::Oldest);
                // Ready before any producer starts: from here every record
                // is either read or counted lost (a reader made after a
                // slot was overwritten never saw the first records).
                board.at(READY + r).store(1, Ordering::SeqCst);
                let mut next = [0u64; 4];
                let mut gaps = 0;
                let deadline = Instant::now() + Duration::from_secs(60);
                while reader.read() + reader.lost() < 4 * K {
                    if Instant::now() > deadline {
                        let msg = format!(
                            "reader {r}: read {} lost {} next {next:?} stats {:?}\n",
                            reader.read(),
                            reader.lost(),
                            reader.stats()
                        );
                        // SAFETY: writes our own buffer to stderr.
                        unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
                        return 2;
                    }
                    // Reader 0 reads one record a call, reader 1 a copy a
                    // call.
                    let before = reader.read();
                    let mut bad = false;
                    let mut see = |rec: Record<'_>| match parse(rec.data) {
                        Some((p, i)) if p < 4 && i >= next[p as usize] => {
                            gaps += i - next[p as usize];
                            next[p as usize] = i + 1;
                        }
                        _ => bad = true,
                    };
                    let got = if r == 0 {
                        reader.next_record().map(|rec| rec.map(&mut see).is_some())
                    } else {
                        reader.read_batch(&mut see).map(|n| n > 0)
                    };
                    if bad {
                        return 3;
                    }
                    match got {
                        Ok(true) => {}
                        // Slow down now and then, to be lapped.
                        Ok(false) => std::thread::sleep(Duration::from_micros(50)),
                        Err(_) => return 4,
                    }
                    if reader.read() / 1000 != before / 1000 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                // Whatever was lost at the end is a gap at the end.
                gaps += next.iter().map(|&n| K - n).sum::<u64>();
                board.at(r * 3).store(reader.read(), Ordering::SeqCst);
                board.at(r * 3 + 1).store(reader.lost(), Ordering::SeqCst);
                board.at(r * 3 + 2).store(gaps, Ordering::SeqCst);
                0
            })
        })
        .collect();
    let ready_by = Instant::now() + Duration::from_secs(20);
    while board.at(READY).load(Ordering::SeqCst) == 0
        || board.at(READY + 1).load(Ordering::SeqCst) == 0
    {
        assert!(Instant::now() < ready_by, "the readers never got ready");
        std::thread::sleep(Duration::from_millis(1));
    }
    let producers: Vec<_> = (0..4u64)
        .map(|p| {
            let ring = &ring;
            fork_child(move || {
                let mut log = ring.producer().expect("a free slot");
                for i in 0..K {
                    log.write(&record(p, i)).unwrap();
                }
                0
            })
        })
        .collect();
    for pid in producers {
        wait_ok(pid);
    }
    for pid in readers {
        assert_eq!(
            wait_within(pid, Duration::from_secs(90)),
            common::Exit::Code(0)
        );
    }
    for r in 0..2 {
        let (read, lost, gaps) = (
            board.at(r * 3).load(Ordering::SeqCst),
            board.at(r * 3 + 1).load(Ordering::SeqCst),
            board.at(r * 3 + 2).load(Ordering::SeqCst),
        );
        assert_eq!(read + lost, 4 * K, "reader {r}");
        assert_eq!(gaps, lost, "reader {r}: every gap counted, nothing else");
    }
    let st = ring.stats();
    assert_eq!(st.written, 4 * K);
    assert!(st.overwritten > 0, "the slots were too big to lap");
}

/// The role a re-executed test binary plays, from `ROLE_VAR`.
#[test]
fn child_entry() {
    let Some((role, spec)) = child_request(ROLE_VAR) else {
        return;
    };
    let zones = Zones::attach(&spec).expect("attach by name");
    let zone = zones.get("access_log").expect("the ring's zone");
    let ring = Ring::open(&zone).expect("open the ring");
    match role.as_str() {
        "read-1000" => {
            let mut reader = ring.reader(Start::Oldest);
            let (read, lost) = read_all(&mut reader, 1000, Duration::from_secs(20)).unwrap();
            assert_eq!((read, lost), (1000, 0));
        }
        "write-1000" => {
            let mut log = ring.producer().unwrap();
            for i in 0..1000 {
                log.write(&record(1, i)).unwrap();
            }
        }
        "wrong-zone" => {
            let e = Ring::open(&zones.get("other").unwrap()).unwrap_err();
            assert!(matches!(e, RingError::NoRing { .. }));
            assert!(e.to_string().contains("\"other\""), "{e}");
        }
        r => panic!("unknown role {r}"),
    }
}

fn make_named(spec: &NamedSpec, cfg: &RingConfig) -> Zones {
    Zones::create_named(
        Zones::builder()
            .zone("access_log", cfg.zone_size())
            .zone("other", 64 << 10),
        spec,
    )
    .unwrap()
}

#[test]
fn an_unrelated_process_attaches_by_name_and_reads() {
    for kind in ["posix", "file"] {
        let fresh = Fresh::new(kind);
        let cfg = RingConfig::default();
        let zones = make_named(&fresh.spec(), &cfg);
        let ring = Ring::create(&zones.get("access_log").unwrap(), &cfg).unwrap();
        let mut log = ring.producer().unwrap();
        for i in 0..1000 {
            log.write(&record(0, i)).unwrap();
        }
        assert_eq!(run_child(ROLE_VAR, "read-1000", &fresh.0), 0, "{kind}");
        assert_eq!(run_child(ROLE_VAR, "wrong-zone", &fresh.0), 0, "{kind}");
        // And the other way round: another process writes, we read.
        let mut reader = ring.reader(Start::Newest);
        let (read, lost) = std::thread::scope(|s| {
            let writer = s.spawn(|| run_child(ROLE_VAR, "write-1000", &fresh.0));
            let got = read_all(&mut reader, 1000, Duration::from_secs(20));
            assert_eq!(writer.join().unwrap(), 0);
            got
        })
        .unwrap();
        assert_eq!((read, lost), (1000, 0), "{kind}");
    }
}

#[test]
fn post_mortem_read_after_the_server_died() {
    for kind in ["posix", "file"] {
        let fresh = Fresh::new(kind);
        let id = fresh.0.clone();
        // The "server": makes the region and ring, logs, and dies by SIGKILL
        // right after (its producer slot is never given back).
        // One slot, so the next producer must take the dead one's over.
        let cfg = RingConfig {
            slots: 1,
            ..RingConfig::default()
        };
        let server = fork_child(move || {
            let zones = make_named(&NamedSpec::new(id), &cfg);
            let ring = Ring::create(&zones.get("access_log").unwrap(), &cfg).unwrap();
            let mut log = ring.producer().unwrap();
            for i in 0..500 {
                log.write(&record(0, i)).unwrap();
            }
            // SAFETY: kills this child itself.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            1
        });
        assert!(matches!(
            wait_within(server, Duration::from_secs(20)),
            common::Exit::Signal(libc::SIGKILL)
        ));
        let zones = Zones::attach(&NamedSpec::new(fresh.0.clone())).unwrap();
        let zone = zones.get("access_log").unwrap();
        let ring = Ring::open(&zone).unwrap();
        let mut reader = ring.reader(Start::Oldest);
        let (read, lost) = read_all(&mut reader, 500, Duration::from_secs(10)).unwrap();
        assert_eq!((read, lost), (500, 0), "{kind}");
        let st = ring.stats();
        assert_eq!(st.producers, 1, "the dead server's slot is still owned");
        // A new producer takes the dead server's slot over and goes on
        // with its sequence numbers.
        let mut log = ring.producer().unwrap();
        assert_eq!(log.write(b"after").unwrap(), 500);
        assert_eq!(ring.stats().slots[0].claims, 2);
        // A read-only snapshot reads it too.
        let snap = Zones::attach(&NamedSpec::new(fresh.0.clone()).read_only(true)).unwrap();
        let ring = Ring::open(&snap.get("access_log").unwrap()).unwrap();
        let mut r = ring.reader(Start::Oldest);
        let mut n = 0;
        while r.next_record().unwrap().is_some() {
            n += 1;
        }
        assert_eq!((n, r.lost()), (501, 0), "{kind}");
    }
}

#[test]
fn shmzone_tail_prints_records_and_json() {
    let fresh = Fresh::new("posix");
    let cfg = RingConfig::default();
    let zones = make_named(&fresh.spec(), &cfg);
    let ring = Ring::create(&zones.get("access_log").unwrap(), &cfg).unwrap();
    let mut log = ring.producer().unwrap();
    for i in 0..3 {
        log.write(format!("GET /hit {i} \"q\"").as_bytes()).unwrap();
    }
    let tail = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_shmzone-tail"))
            .args(args)
            .arg(fresh.0.to_arg())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let text = tail(&["--from-start", "--no-follow"]);
    let lines: Vec<_> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[2].ends_with("GET /hit 2 \"q\""), "{text}");
    assert!(lines[0].contains(&std::process::id().to_string()), "{text}");
    let json = tail(&["--from-start", "--no-follow", "--json"]);
    let first = json.lines().next().unwrap();
    let me = std::process::id();
    assert!(
        first.starts_with(&format!("{{\"pid\":{me},\"seq\":0,\"slot\":")),
        "{first}"
    );
    assert!(first.contains("\"time\":\"20"), "{first}");
    assert!(
        first.ends_with(",\"text\":\"GET /hit 0 \\\"q\\\"\"}"),
        "{first}"
    );
    // Nothing new since the start: nothing printed.
    assert_eq!(tail(&["--no-follow"]), "");
    // No such zone: a clear error naming it.
    let out = Command::new(env!("CARGO_BIN_EXE_shmzone-tail"))
        .args(["--zone", "other", "--no-follow"])
        .arg(fresh.0.to_arg())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"other\" holds no log ring"), "{err}");
}

#[test]
fn a_producer_inherited_through_fork_refuses_to_write() {
    let cfg = RingConfig {
        slots: 2,
        ..RingConfig::default()
    };
    let zones = log_zones(&cfg);
    let ring = Ring::create(&zones.get("log").unwrap(), &cfg).unwrap();
    let mut log = Some(ring.producer().unwrap());
    log.as_mut().unwrap().write(b"parent").unwrap();
    let (ring_ref, log_ref) = (&ring, &mut log);
    let child = fork_child(move || {
        // The child's copy of the parent's handle.
        let mut log = log_ref.take().unwrap();
        let code = match log.write(b"child") {
            Err(RingError::NotOwner { .. }) => 0,
            _ => 1,
        };
        // The inherited handle must not give the parent's slot back.
        drop(log);
        if ring_ref.stats().producers != 1 {
            return 2;
        }
        // Its own slot works.
        match ring_ref.producer().map(|mut p| p.write(b"child")) {
            Ok(Ok(0)) => code,
            _ => 3,
        }
    });
    assert_eq!(
        wait_within(child, Duration::from_secs(20)),
        common::Exit::Code(0)
    );
    let st = ring.stats();
    assert_eq!((st.written, st.producers), (2, 1));
}

#[test]
fn shmzone_tail_follows_new_records() {
    use std::io::{BufRead, BufReader};
    let fresh = Fresh::new("file");
    let cfg = RingConfig::default();
    let zones = make_named(&fresh.spec(), &cfg);
    let ring = Ring::create(&zones.get("access_log").unwrap(), &cfg).unwrap();
    let mut log = ring.producer().unwrap();
    log.write(b"before").unwrap();
    let mut tail = Command::new(env!("CARGO_BIN_EXE_shmzone-tail"))
        .args(["--json", "--interval", "5"])
        .arg(fresh.0.to_arg())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    // It starts at the newest record: "before" is not printed. Records
    // written while it runs are (it polls every 5 ms); the first ones may
    // come before it attached, so keep writing until one shows.
    let deadline = Instant::now() + Duration::from_secs(20);
    let reader = std::thread::spawn(move || lines.next().map(|l| l.unwrap()));
    let mut i = 0;
    while !reader.is_finished() && Instant::now() < deadline {
        log.write(format!("after {i}").as_bytes()).unwrap();
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    tail.kill().unwrap();
    tail.wait().unwrap();
    let line = reader.join().unwrap().expect("a line from shmzone-tail");
    assert!(line.contains("\"text\":\"after "), "{line}");
    assert!(
        line.contains(&format!("\"pid\":{}", std::process::id())),
        "{line}"
    );
}

/// Minor page faults of this process so far.
fn minor_faults() -> i64 {
    // SAFETY: `ru` is a valid out-pointer for getrusage.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut ru), 0);
        ru.ru_minflt
    }
}

#[test]
fn producers_and_readers_map_the_slot_pages_before_they_use_them() {
    // A producer's first lap and a reader's first pass over a slot take
    // no page fault per 4 KiB page: `Ring::producer` and `Ring::reader`
    // map the slots' pages into their process up front (Linux 5.14's
    // MADV_POPULATE_*; older kernels refuse it and this test has nothing
    // to check).
    // SAFETY: a probe on a fresh private page of our own.
    let supported = unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        let ok = libc::madvise(p, 4096, libc::MADV_POPULATE_READ) == 0;
        libc::munmap(p, 4096);
        ok
    };
    if !supported {
        eprintln!("MADV_POPULATE_READ not supported by this kernel: nothing to check");
        return;
    }
    let cfg = RingConfig {
        slots: 1,
        slot_bytes: 4 << 20,
        max_record: 256,
        timestamps: false,
    };
    let zones = log_zones(&cfg);
    let ring = Ring::create(&zones.get("log").unwrap(), &cfg).unwrap();
    let ring = &ring;
    // 60,000 records of 64 bytes (80 in the slot): more than a lap of the
    // slot's 1,024 pages.
    let writer = fork_child(move || {
        let mut log = ring.producer().unwrap();
        let before = minor_faults();
        for i in 0..60_000u32 {
            log.write(&[i as u8; 64]).unwrap();
        }
        let faults = minor_faults() - before;
        eprintln!("producer: {faults} minor faults writing 60,000 records");
        if faults > 64 {
            return 10;
        }
        0
    });
    wait_ok(writer);
    let reader = fork_child(move || {
        let mut reader = ring.reader(Start::Oldest);
        let before = minor_faults();
        let mut read = 0;
        while let Ok(k) = reader.read_batch(|r| assert_eq!(r.data.len(), 64)) {
            if k == 0 {
                break;
            }
            read += k;
        }
        let faults = minor_faults() - before;
        eprintln!("reader: {faults} minor faults reading {read} records");
        if read < 40_000 {
            return 11;
        }
        if faults > 64 {
            return 12;
        }
        0
    });
    wait_ok(reader);
}
