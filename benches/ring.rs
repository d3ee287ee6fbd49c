//! The ring workloads of `WORKLOADS.md` (R1–R3), in one run.
//!
//! ```text
//! cargo bench --bench ring               # N = 10^7, medians of 3
//! cargo bench --bench ring -- --quick    # N / 100, for a smoke run
//! cargo bench --bench ring -- R1 R3      # only these
//! cargo bench --bench ring -- R1plain     # R1 without timestamps only
//! cargo bench --bench ring -- R1follow    # R1, the reader 1 MiB behind
//! cargo bench --bench ring -- R1read      # R1's reader alone (diagnostics)
//! cargo bench --bench ring -- R1turns     # R1's writer and reader in turns
//! SHMZONE_BENCH_N=1000000 SHMZONE_BENCH_REPS=5 cargo bench --bench ring
//! ```
//!
//! stdout: a header row, then `workload<TAB>param<TAB>impl<TAB>value<TAB>unit`
//! lines (median, then min and max of the repetitions); progress goes to
//! stderr.
//!
//! R1: the parent writes N 64-byte records into a one-slot ring (32 MiB, or
//! `SHMZONE_RING_SLOT` bytes, in a 64 MiB zone) while a forked reader reads
//! them all with `Reader::read_batch` (a batching reader,
//! `Reader::set_batching`, only if `SHMZONE_RING_BATCHING` is set: no gain
//! was measured on the loaded machine, see `benches/README.md`); ns per
//! record written, timed in the writer (wall clock, and the writer's CPU
//! time, since the bench shares its cores), records the reader lost, and
//! the reader's busy ns per record (it keeps up only while that is
//! under the writer's); then again with the reader following 1 MiB
//! behind the producer (`Reader::set_follow_distance`, impl
//! `shmzone-follow`); then with timestamps on. The reader is made in the
//! forked process (where it maps the slot's pages) and the writer starts
//! once it is there. R1read: the
//! reader alone, from a slot filled beforehand (from memory: `read_batch`
//! and `next_record`) and on records still in cache (`reader-alone-hot`).
//! R1turns: the writer writes 4096 (or 65536) records, then the forked
//! reader reads them while the writer waits, and again: each side's cost
//! per record without the other running (see `r1_turns`). R2: 4 forked
//! producers write N/4 records each of `16 + x % 241` bytes (seed 42 + w)
//! into a 4-slot ring (8 MiB slots), one reader; records/s from the first
//! fork until every producer exited, and lost. R3: R1's records written
//! with `write(2)`, one call per record, to a file opened `O_APPEND` in the
//! temporary directory and to a pipe drained by a forked reader; N / 10
//! records (a system call per record makes N = 10^7 take minutes); ns per
//! record and the ratio to R1's median in the same run.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shmzone::ring::{Reader, Ring, RingConfig, Start};
use shmzone::{Region, Zones};

/// Repetitions of each workload: `SHMZONE_BENCH_REPS`, else 3.
fn reps() -> usize {
    env_usize("SHMZONE_BENCH_REPS").unwrap_or(3).max(1)
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}
const ZONE: usize = 64 << 20;

/// The workloads' xorshift64, advanced before each use.
struct Rng(u64);

impl Rng {
    #[inline]
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// 1 MiB of random bytes (seed 42); record `i` of size `s` is the window at
/// `(i * 64) % (1 MiB - 256)`.
fn random_bytes() -> Vec<u8> {
    let mut rng = Rng(42);
    (0..(1 << 20) / 8)
        .flat_map(|_| rng.next().to_le_bytes())
        .collect()
}

#[inline]
fn rec(bytes: &[u8], i: usize, size: usize) -> &[u8] {
    let at = (i * 64) % (bytes.len() - 256);
    &bytes[at..at + size]
}

/// A shared page of counters for children to report through.
struct Board(Region);

impl Board {
    fn new() -> Board {
        Board(Region::new(4096).expect("a page"))
    }
    fn at(&self, i: usize) -> &AtomicU64 {
        assert!(i < 512);
        // SAFETY: a page of zeroed shared memory, 8-aligned, used only
        // through atomics, alive as long as `self`.
        unsafe { &*self.0.as_ptr().cast::<AtomicU64>().add(i) }
    }
}

fn fork(f: impl FnOnce()) -> libc::pid_t {
    // SAFETY: the child runs `f` (shared memory and its own stack) and
    // `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        f();
        // SAFETY: ends the child without running destructors.
        unsafe { libc::_exit(0) };
    }
    pid
}

fn wait(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: waits for our own child.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(r == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
}

/// A reader process: reads until `n` records were read or lost, then
/// stores read and lost at `board[slot]`, `board[slot + 1]`, and its busy
/// time: the wall-clock ns spent in one in 8 `read_batch` calls, those
/// that found records, and the records they found, at `board[slot + 2]`
/// and `board[slot + 3]` (to keep up, its busy ns per record must be under
/// the producer's ns per record). A timed call that took over 200 µs
/// (a copy takes a few) was preempted and is left out; not the thread's
/// CPU clock, whose system call costs 2 µs or more on the bench's VM.
fn reader(ring: &Ring<'_>, board: &Board, slot: usize, n: u64, follow: usize) -> libc::pid_t {
    let ring = *ring;
    let pid = fork(move || {
        // Made in the reading process, which is where `Ring::reader` maps
        // the slots' pages (a reader made before the fork would map them
        // into the parent only).
        let mut reader = ring.reader(Start::Oldest);
        if std::env::var_os("SHMZONE_RING_BATCHING").is_some() {
            reader.set_batching(true);
        }
        reader.set_follow_distance(follow);
        board.at(slot + 4).store(1, Ordering::Release);
        let mut sum = 0usize;
        let (mut busy, mut sampled, mut calls) = (0u64, 0u64, 0u64);
        while reader.read() + reader.lost() < n {
            calls += 1;
            let timed = calls % 8 == 0;
            let t = timed.then(Instant::now);
            match reader.read_batch(|r| sum += r.data.len()) {
                Ok(0) => {
                    for _ in 0..1024 {
                        std::hint::spin_loop();
                    }
                }
                Ok(k) => {
                    if let Some(t) = t {
                        let d = t.elapsed().as_nanos() as u64;
                        if d < 200_000 {
                            busy += d;
                            sampled += k as u64;
                        }
                    }
                }
                Err(e) => panic!("{e}"),
            }
        }
        black_box(sum);
        board.at(slot).store(reader.read(), Ordering::SeqCst);
        board.at(slot + 1).store(reader.lost(), Ordering::SeqCst);
        board.at(slot + 2).store(busy, Ordering::SeqCst);
        board.at(slot + 3).store(sampled, Ordering::SeqCst);
    });
    // The producers start once the reader is there (it reads from the
    // oldest record, so it would miss nothing either way, but it would
    // start behind by as much as its setup took).
    wait_until(board.at(slot + 4), 1);
    pid
}

/// Waits until `at` holds at least `v`: set by the other process of a
/// bench, which takes well under a second (a panic after 30 s: the other
/// side is stuck).
fn wait_until(at: &AtomicU64, v: u64) {
    let t = Instant::now();
    while at.load(Ordering::Acquire) < v {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the other side is stuck"
        );
        std::hint::spin_loop();
    }
}

/// Reads everything there is with `read_batch`; payload bytes read. Out
/// of line, so that callgrind can count it alone
/// (`--toggle-collect='*read_all_batch*'`).
#[inline(never)]
fn read_all_batch(reader: &mut Reader<'_>) -> usize {
    let mut sum = 0usize;
    while reader.read_batch(|r| sum += r.data.len()).expect("sound") > 0 {}
    sum
}

/// Reads everything there is with `next_record`; payload bytes read.
#[inline(never)]
fn read_all_next(reader: &mut Reader<'_>) -> usize {
    let mut sum = 0usize;
    while let Some(r) = reader.next_record().expect("sound") {
        sum += r.data.len();
    }
    sum
}

/// A zone of 64 MiB for the ring, or as much as it needs if more (R1
/// with `SHMZONE_RING_SLOT` over 32 MiB).
fn ring_zones(cfg: &RingConfig) -> Zones {
    Zones::builder()
        .zone("ring", cfg.zone_size().max(ZONE))
        .build()
        .expect("zones")
}

/// The thread's CPU time in ns (the bench shares its cores: wall time
/// includes other processes' turns).
fn cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// R1's slot size: `SHMZONE_RING_SLOT` bytes (a power of two), else 32 MiB.
fn r1_slot() -> usize {
    std::env::var("SHMZONE_RING_SLOT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32 << 20)
}

/// R1's ring: one slot of [`r1_slot`] bytes, records up to 256 bytes.
fn r1_config(timestamps: bool) -> RingConfig {
    RingConfig {
        slots: 1,
        slot_bytes: r1_slot(),
        max_record: 256,
        timestamps,
    }
}

/// The distance R1follow's reader keeps behind the producer
/// (`Reader::set_follow_distance`).
const R1_FOLLOW: usize = 1 << 20;

/// R1 once: ns per record written (wall, CPU), records lost, the
/// reader's busy ns per record read.
fn r1(n: usize, bytes: &[u8], stamp: bool, follow: usize) -> (f64, f64, u64, f64) {
    let cfg = r1_config(stamp);
    let zones = ring_zones(&cfg);
    let ring = Ring::create(&zones.get("ring").unwrap(), &cfg).expect("ring");
    let board = Board::new();
    let pid = reader(&ring, &board, 0, n as u64, follow);
    let mut log = ring.producer().expect("a slot");
    let (t, c) = (Instant::now(), cpu_ns());
    for i in 0..n {
        log.write(rec(bytes, i, 64)).expect("64 bytes fit");
    }
    let (el, cpu) = (t.elapsed(), cpu_ns() - c);
    wait(pid);
    let (read, lost) = (
        board.at(0).load(Ordering::SeqCst),
        board.at(1).load(Ordering::SeqCst),
    );
    assert_eq!(read + lost, n as u64);
    let busy = board.at(2).load(Ordering::SeqCst) as f64
        / board.at(3).load(Ordering::SeqCst).max(1) as f64;
    (ns_per(el, n), cpu as f64 / n as f64, lost, busy)
}

/// R1's reader alone, a diagnostic (it must outrun the producer for R1's
/// 0 lost): ns per record read (wall and CPU) from a slot filled
/// beforehand with `min(n, what the slot holds)` 64-byte records, in one
/// process, with `read_batch` (what R1's reader uses) or `next_record`.
fn r1_read(n: usize, bytes: &[u8], batch: bool) -> (f64, f64) {
    let cfg = r1_config(false);
    let n = n.min(r1_slot() / 96);
    let zones = ring_zones(&cfg);
    let ring = Ring::create(&zones.get("ring").unwrap(), &cfg).expect("ring");
    let mut reader = ring.reader(Start::Oldest);
    let mut log = ring.producer().expect("a slot");
    for i in 0..n {
        log.write(rec(bytes, i, 64)).expect("64 bytes fit");
    }
    let (t, c) = (Instant::now(), cpu_ns());
    let sum = if batch {
        read_all_batch(&mut reader)
    } else {
        read_all_next(&mut reader)
    };
    let (el, cpu) = (t.elapsed(), cpu_ns() - c);
    assert_eq!((sum, reader.read(), reader.lost()), (64 * n, n as u64, 0));
    (ns_per(el, n), cpu as f64 / n as f64)
}

/// R1's reader alone on records still in cache: the producer writes 512
/// records (44 KiB), the reader reads them (timed), and again, N records
/// in all: the reader's own cost per record without the trip to memory
/// that `r1_read` measures (in R1 the lines come from the producer's core).
fn r1_read_hot(n: usize, bytes: &[u8]) -> f64 {
    let cfg = r1_config(false);
    let zones = ring_zones(&cfg);
    let ring = Ring::create(&zones.get("ring").unwrap(), &cfg).expect("ring");
    let mut reader = ring.reader(Start::Oldest);
    let mut log = ring.producer().expect("a slot");
    let mut spent = Duration::ZERO;
    let mut sum = 0;
    for round in 0..n.div_ceil(512) {
        for i in 0..512 {
            log.write(rec(bytes, round * 512 + i, 64))
                .expect("64 bytes fit");
        }
        let t = Instant::now();
        sum += read_all_batch(&mut reader);
        spent += t.elapsed();
    }
    assert_eq!(reader.lost(), 0);
    assert_eq!(sum as u64, 64 * reader.read());
    ns_per(spent, reader.read() as usize)
}

/// R1 in turns, a diagnostic: the producer writes `k` records, then the
/// forked reader reads them (timed) while the producer waits, and again,
/// N records in all. The reader's cost per record on lines that sit in
/// the other core's cache (`k` = 4096: 320 KiB, in the producer's L2) or
/// have left it (`k` = 65536: 5 MiB), against the producer's own cost per
/// record in the same run, neither slowed by the other (R1 runs them at
/// once): the margin the reader has for catching up. Returns (reader,
/// writer) ns per record.
fn r1_turns(n: usize, bytes: &[u8], k: usize) -> (f64, f64) {
    let cfg = r1_config(false);
    let zones = ring_zones(&cfg);
    let ring = Ring::create(&zones.get("ring").unwrap(), &cfg).expect("ring");
    let board = Board::new();
    let turns = (n / k).max(1) as u64;
    let b = &board;
    let ring = &ring;
    let pid = fork(move || {
        // Made here, where it maps the slot's pages (see `reader`).
        let mut reader = ring.reader(Start::Oldest);
        let (mut spent, mut sum) = (0u64, 0usize);
        for turn in 1..=turns {
            wait_until(b.at(0), turn);
            let t = Instant::now();
            while reader.read() + reader.lost() < turn * k as u64 {
                sum += read_all_batch(&mut reader);
            }
            spent += t.elapsed().as_nanos() as u64;
            b.at(1).store(turn, Ordering::Release);
        }
        black_box(sum);
        b.at(2).store(spent, Ordering::SeqCst);
        b.at(3).store(reader.lost(), Ordering::SeqCst);
    });
    let mut log = ring.producer().expect("a slot");
    let mut spent = Duration::ZERO;
    for turn in 1..=turns {
        let t = Instant::now();
        for i in 0..k {
            log.write(rec(bytes, i, 64)).expect("64 bytes fit");
        }
        spent += t.elapsed();
        board.at(0).store(turn, Ordering::Release);
        wait_until(board.at(1), turn);
    }
    wait(pid);
    assert_eq!(board.at(3).load(Ordering::SeqCst), 0, "lost in turns");
    let total = turns as usize * k;
    (
        board.at(2).load(Ordering::SeqCst) as f64 / total as f64,
        ns_per(spent, total),
    )
}

/// R2 once: records per second, records lost.
fn r2(n: usize, bytes: &[u8]) -> (f64, u64) {
    let cfg = RingConfig {
        slots: 4,
        slot_bytes: 8 << 20,
        max_record: 256,
        timestamps: false,
    };
    let zones = ring_zones(&cfg);
    let ring = Ring::create(&zones.get("ring").unwrap(), &cfg).expect("ring");
    let board = Board::new();
    let rpid = reader(&ring, &board, 0, n as u64, 0);
    let t = Instant::now();
    let pids: Vec<_> = (0..4u64)
        .map(|w| {
            let ring = &ring;
            fork(move || {
                let mut log = ring.producer().expect("a slot");
                let mut rng = Rng(42 + w);
                for i in 0..n / 4 {
                    let size = 16 + (rng.next() % 241) as usize;
                    log.write(rec(bytes, i, size)).expect("fits");
                }
            })
        })
        .collect();
    for pid in pids {
        wait(pid);
    }
    let el = t.elapsed();
    wait(rpid);
    (
        n as f64 / el.as_secs_f64(),
        board.at(1).load(Ordering::SeqCst),
    )
}

/// R3 once on `fd`: ns per 64-byte `write(2)`.
fn r3_writes(fd: libc::c_int, n: usize, bytes: &[u8]) -> f64 {
    let t = Instant::now();
    for i in 0..n {
        let r = rec(bytes, i, 64);
        // SAFETY: `r` is 64 readable bytes; `fd` is open for writing.
        let w = unsafe { libc::write(fd, r.as_ptr().cast(), r.len()) };
        assert_eq!(w, 64, "write: {}", std::io::Error::last_os_error());
    }
    ns_per(t.elapsed(), n)
}

fn r3_file(n: usize, bytes: &[u8]) -> f64 {
    let path = std::env::temp_dir().join(format!("shmzone-bench-r3-{}", std::process::id()));
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid C path; the fd is closed below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_APPEND | libc::O_CLOEXEC,
            0o600,
        )
    };
    assert!(fd >= 0, "open: {}", std::io::Error::last_os_error());
    let ns = r3_writes(fd, n, bytes);
    // SAFETY: our fd, closed once.
    unsafe { libc::close(fd) };
    let _ = std::fs::remove_file(&path);
    ns
}

fn r3_pipe(n: usize, bytes: &[u8]) -> f64 {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid out-array of two ints.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let [rd, wr] = fds;
    let pid = fork(|| {
        // SAFETY: the child closes its copy of the write end and drains
        // the read end into a stack buffer until EOF.
        unsafe {
            libc::close(wr);
            let mut buf = [0u8; 65536];
            while libc::read(rd, buf.as_mut_ptr().cast(), buf.len()) > 0 {}
        }
    });
    // SAFETY: our copy of the read end, closed once.
    unsafe { libc::close(rd) };
    let ns = r3_writes(wr, n, bytes);
    // SAFETY: our write end, closed once (the reader then sees EOF).
    unsafe { libc::close(wr) };
    wait(pid);
    ns
}

fn ns_per(d: Duration, n: usize) -> f64 {
    d.as_nanos() as f64 / n as f64
}

/// Median, min, max.
fn summary(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn emit(workload: &str, param: &str, imp: &str, value: f64, unit: &str) {
    let v = if value >= 1000.0 || value == value.trunc() {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    };
    println!("{workload}\t{param}\t{imp}\t{v}\t{unit}");
}

fn emit3(workload: &str, param: &str, imp: &str, v: Vec<f64>, unit: &str) -> f64 {
    let (med, min, max) = summary(v);
    emit(workload, param, imp, med, unit);
    emit(workload, param, &format!("{imp}-min"), min, unit);
    emit(workload, param, &format!("{imp}-max"), max, unit);
    med
}

fn main() {
    let mut quick = false;
    let mut filters = Vec::new();
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--quick" => quick = true,
            s if s.starts_with('-') => {} // --bench, from cargo
            s => filters.push(s.to_string()),
        }
    }
    let wants = |id: &str| filters.is_empty() || filters.iter().any(|f| f.eq_ignore_ascii_case(id));
    let n = env_usize("SHMZONE_BENCH_N").unwrap_or(if quick { 100_000 } else { 10_000_000 });
    let reps = reps();
    let bytes = random_bytes();
    let t = Instant::now();
    println!("workload\tparam\timpl\tvalue\tunit");
    let mut r1_ns = None;
    let r1_runs = [
        (false, 0, wants("R1") || wants("R1plain")),
        (false, R1_FOLLOW, wants("R1") || wants("R1follow")),
        (true, 0, wants("R1") || wants("R1stamped")),
    ];
    for (stamp, follow, on) in r1_runs {
        if on {
            let imp = match (stamp, follow) {
                (true, _) => "shmzone-stamped",
                (false, 0) => "shmzone",
                (false, _) => "shmzone-follow",
            };
            eprintln!("R1 {imp} ...");
            let (mut ns, mut cpu, mut lost, mut busy) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for _ in 0..reps {
                let (a, c, b, r) = r1(n, &bytes, stamp, follow);
                // Each repetition on stderr: the lost counts per rep.
                eprintln!("  ns/record {a:.2} cpu {c:.2} lost {b} reader busy {r:.2}");
                ns.push(a);
                cpu.push(c);
                lost.push(b as f64);
                busy.push(r);
            }
            let med = emit3("R1", "64", imp, ns, "ns/record");
            emit3("R1", "64", imp, cpu, "cpu-ns/record");
            emit3("R1", "64", imp, lost, "lost");
            emit3("R1", "64", &format!("{imp}-reader"), busy, "busy-ns/record");
            if imp == "shmzone" {
                r1_ns = Some(med);
            }
        }
    }
    if wants("R1read") {
        for (batch, imp) in [(true, "reader-alone"), (false, "reader-alone-next")] {
            eprintln!("R1 {imp} ...");
            let (mut ns, mut cpu) = (Vec::new(), Vec::new());
            for _ in 0..reps {
                let (a, c) = r1_read(n, &bytes, batch);
                ns.push(a);
                cpu.push(c);
            }
            emit3("R1", "64", imp, ns, "ns/record");
            emit3("R1", "64", imp, cpu, "cpu-ns/record");
        }
        eprintln!("R1 reader-alone-hot ...");
        let v: Vec<f64> = (0..reps).map(|_| r1_read_hot(n, &bytes)).collect();
        emit3("R1", "64", "reader-alone-hot", v, "ns/record");
    }
    if wants("R1turns") {
        for k in [4096usize, 65536] {
            eprintln!("R1 turns of {k} ...");
            let (mut rv, mut wv) = (Vec::new(), Vec::new());
            for _ in 0..reps {
                let (r, w) = r1_turns(n, &bytes, k);
                rv.push(r);
                wv.push(w);
            }
            let param = format!("64/{k}");
            emit3("R1turns", &param, "reader", rv, "ns/record");
            emit3("R1turns", &param, "writer", wv, "ns/record");
        }
    }
    if wants("R2") {
        eprintln!("R2 ...");
        let (mut rate, mut lost) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            let (a, b) = r2(n, &bytes);
            rate.push(a / 1e6);
            lost.push(b as f64);
        }
        emit3("R2", "4", "shmzone", rate, "Mrecords/s");
        emit3("R2", "4", "shmzone", lost, "lost");
    }
    if wants("R3") {
        let n3 = n / 10;
        for (imp, f) in [
            ("write-append-file", r3_file as fn(usize, &[u8]) -> f64),
            ("write-pipe", r3_pipe),
        ] {
            eprintln!("R3 {imp} ...");
            let v: Vec<f64> = (0..reps).map(|_| f(n3, &bytes)).collect();
            let med = emit3("R3", "64", imp, v, "ns/record");
            if let Some(r1) = r1_ns {
                emit("R3", "64", imp, med / r1, "x R1");
            }
        }
    }
    eprintln!(
        "done in {:.1} s ({reps} reps: median, min, max{})",
        t.elapsed().as_secs_f64(),
        if quick { ", --quick" } else { "" }
    );
}
