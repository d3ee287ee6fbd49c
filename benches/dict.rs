//! The dictionary workloads of `WORKLOADS.md` (D1–D4), in one run.
//!
//! ```text
//! cargo bench --bench dict                 # everything, medians of 3
//! cargo bench --bench dict -- --quick      # N / 10, one rep: a smoke run
//! cargo bench --bench dict -- D1 D4        # only these
//! cargo bench --bench dict -- --reps 5
//! ```
//!
//! stdout: a header row, then `workload<TAB>param<TAB>impl<TAB>value<TAB>unit`
//! lines (each timed figure as its median, min and max over the reps);
//! progress goes to stderr. D1–D3 also give `cpu ns/op`: the process's
//! own CPU time per op (`CLOCK_PROCESS_CPUTIME_ID`), which a busy machine
//! disturbs much less than the wall-clock figure.
//!
//! D3's mix draws two numbers per op: `c = next()` chooses (`c % 10 < 9`:
//! a get), `x = next()` makes the key (and a set's size), so that the choice
//! and the key are independent.

use std::hint::black_box;
use std::time::{Duration, Instant};

use shmzone::dict::Dict;
use shmzone::Zones;

const K: u64 = 10_000;
const KEYS: u64 = 100_000;

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

/// `prefix` followed by `n` in decimal, in a stack buffer.
struct Key {
    buf: [u8; 24],
    len: usize,
}

impl Key {
    #[inline]
    fn new(prefix: u8, mut n: u64) -> Key {
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
        let mut buf = [0u8; 24];
        buf[0] = prefix;
        let d = digits.len() - i;
        buf[1..1 + d].copy_from_slice(&digits[i..]);
        Key { buf, len: 1 + d }
    }
    #[inline]
    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

struct Cfg {
    quick: bool,
    reps: usize,
    filters: Vec<String>,
}

impl Cfg {
    fn wants(&self, id: &str) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| f.eq_ignore_ascii_case(id))
    }
    fn n(&self, full: u64) -> u64 {
        if self.quick {
            full / 10
        } else {
            full
        }
    }
}

fn emit(workload: &str, param: &str, value: f64, unit: &str) {
    let v = if value >= 1000.0 || value == value.trunc() {
        format!("{value:.0}")
    } else if value < 1.0 {
        format!("{value:.4}")
    } else {
        format!("{value:.1}")
    };
    println!("{workload}\t{param}\tshmzone\t{v}\t{unit}");
}

/// Emits the median, min and max of `v`.
fn emit3(workload: &str, param: &str, mut v: Vec<f64>, unit: &str) {
    v.sort_by(|a, b| a.total_cmp(b));
    emit(workload, param, v[v.len() / 2], unit);
    emit(workload, &format!("{param} min"), v[0], unit);
    emit(workload, &format!("{param} max"), v[v.len() - 1], unit);
}

fn ns_per(d: Duration, n: u64) -> f64 {
    d.as_nanos() as f64 / n as f64
}

/// This process's CPU time in ns.
fn cpu_ns() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; the clock exists on every unix.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e9 + ts.tv_nsec as f64
}

/// CPU time (user + system, ns) of this process's waited-for children.
fn children_cpu_ns() -> f64 {
    // SAFETY: an all-zero rusage is valid; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 * 1e9 + tv.tv_usec as f64 * 1e3;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// Wall and CPU time of `f`, per op.
fn timed(n: u64, f: impl FnOnce()) -> (f64, f64) {
    let (t, c) = (Instant::now(), cpu_ns());
    f();
    (ns_per(t.elapsed(), n), (cpu_ns() - c) / n as f64)
}

fn zones(size: usize) -> Zones {
    Zones::builder()
        .dict("d", size)
        .build()
        .expect("a dict zone")
}

fn bench_d1(cfg: &Cfg) {
    let n = cfg.n(1_000_000);
    let mut v: [Vec<f64>; 6] = Default::default();
    for _ in 0..cfg.reps {
        let z = zones(64 << 20);
        let d = Dict::open(&z.get("d").unwrap()).unwrap();
        let (w, c) = timed(n, || {
            for i in 1..=n {
                d.set(Key::new(b'k', i % K).as_bytes(), i as i64, 0, 0)
                    .unwrap();
            }
        });
        v[0].push(w);
        v[1].push(c);
        let (w, c) = timed(n, || {
            for i in 1..=n {
                black_box(d.get(Key::new(b'k', i % K).as_bytes()).unwrap());
            }
        });
        v[2].push(w);
        v[3].push(c);
        let (w, c) = timed(n, || {
            for i in 1..=n {
                black_box(
                    d.incr(Key::new(b'c', i % K).as_bytes(), 1, Some(0), 0)
                        .unwrap(),
                );
            }
        });
        v[4].push(w);
        v[5].push(c);
        d.check().expect("check after D1");
    }
    let [set, set_cpu, get, get_cpu, incr, incr_cpu] = v;
    emit3("D1", "set", set, "ns/op");
    emit3("D1", "set", set_cpu, "cpu ns/op");
    emit3("D1", "get", get, "ns/op");
    emit3("D1", "get", get_cpu, "cpu ns/op");
    emit3("D1", "incr", incr, "ns/op");
    emit3("D1", "incr", incr_cpu, "cpu ns/op");
}

static VALUE: [u8; 512] = [0x5a; 512];

/// D2's fill: N sets of random keys and sizes.
#[inline]
fn d2_fill(d: &Dict<'_>, rng: &mut Rng, n: u64) {
    for _ in 0..n {
        let x = rng.next();
        let len = 8 + (x % 505) as usize;
        d.set(Key::new(b'k', x % KEYS).as_bytes(), &VALUE[..len], 0, 0)
            .unwrap();
    }
}

/// D3's mix: `n` ops, `get_pct` % gets.
#[inline]
fn d3_mix(d: &Dict<'_>, rng: &mut Rng, n: u64, get_pct: u64) -> u64 {
    let mut hits = 0;
    for _ in 0..n {
        let c = rng.next();
        let x = rng.next();
        let key = Key::new(b'k', x % KEYS);
        if c % 100 < get_pct {
            hits += d.get(key.as_bytes()).unwrap().is_some() as u64;
        } else {
            let len = 8 + (x % 505) as usize;
            d.set(key.as_bytes(), &VALUE[..len], 0, 0).unwrap();
        }
    }
    hits
}

fn bench_d2_d3(cfg: &Cfg) {
    let n2 = cfg.n(2_000_000);
    let n3 = cfg.n(5_000_000);
    let zone_len = 16 << 20;
    let (mut ns2, mut ns3, mut frac, mut ev, mut hit) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut cpu2, mut cpu3) = (vec![], vec![]);
    for _ in 0..cfg.reps {
        let z = zones(zone_len);
        let d = Dict::open(&z.get("d").unwrap()).unwrap();
        let mut rng = Rng(42);
        let (w, c) = timed(n2, || d2_fill(&d, &mut rng, n2));
        ns2.push(w);
        cpu2.push(c);
        let st = d.stats();
        frac.push(st.bytes as f64 / zone_len as f64);
        ev.push(st.evictions as f64);
        let mut hits = 0;
        let (w, c) = timed(n3, || hits = d3_mix(&d, &mut rng, n3, 90));
        ns3.push(w);
        cpu3.push(c);
        hit.push(hits as f64 / (n3 as f64 * 0.9));
        d.check().expect("check after D3");
    }
    emit3("D2", "set", ns2, "ns/op");
    emit3("D2", "set", cpu2, "cpu ns/op");
    emit3("D2", "evictions", ev, "count");
    emit3("D2", "stored", frac, "fraction");
    emit3("D3", "op", ns3, "ns/op");
    emit3("D3", "op", cpu3, "cpu ns/op");
    emit3("D3", "hit", hit, "ratio");
}

fn bench_d4(cfg: &Cfg, get_pct: u64, id: &str) {
    let n = cfg.n(5_000_000);
    let mut base = 0.0;
    for procs in [1u64, 2, 4] {
        eprintln!("{id} P={procs} ...");
        let (mut v, mut cpu) = (Vec::new(), Vec::new());
        for _ in 0..cfg.reps {
            let z = zones(16 << 20);
            let d = Dict::open(&z.get("d").unwrap()).unwrap();
            d2_fill(&d, &mut Rng(42), cfg.n(2_000_000));
            let t = Instant::now();
            let c0 = children_cpu_ns();
            let mut pids = Vec::new();
            for w in 0..procs {
                // SAFETY: the child only runs the mix on the shared
                // dictionary, then `_exit`s.
                let pid = unsafe { libc::fork() };
                assert!(pid >= 0, "fork failed");
                if pid == 0 {
                    d3_mix(&d, &mut Rng(42 + w), n / procs, get_pct);
                    // SAFETY: ends the child without running destructors.
                    unsafe { libc::_exit(0) };
                }
                pids.push(pid);
            }
            for pid in pids {
                let mut status = 0;
                // SAFETY: waits for our own child.
                let r = unsafe { libc::waitpid(pid, &mut status, 0) };
                assert!(r == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
            }
            v.push(n as f64 / t.elapsed().as_secs_f64() / 1e6);
            cpu.push((children_cpu_ns() - c0) / n as f64);
            d.check().expect("check after D4");
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let med = v[v.len() / 2];
        if procs == 1 {
            base = med;
        }
        emit3(id, &procs.to_string(), v, "Mops/s");
        emit(id, &format!("{procs} / 1"), med / base, "ratio");
        // CPU time the workers spent per op: flat as P grows means no
        // contention between them (throughput then follows the CPUs the
        // machine gives them).
        emit3(id, &procs.to_string(), cpu, "cpu ns/op");
    }
}

fn main() {
    let mut cfg = Cfg {
        quick: false,
        reps: 3,
        filters: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => {
                cfg.quick = true;
                cfg.reps = 1;
            }
            "--reps" => cfg.reps = args.next().and_then(|r| r.parse().ok()).unwrap_or(3).max(1),
            s if s.starts_with('-') => {} // --bench, from cargo
            s => cfg.filters.push(s.to_string()),
        }
    }
    let t = Instant::now();
    println!("workload\tparam\timpl\tvalue\tunit");
    if cfg.wants("D1") {
        eprintln!("D1 ...");
        bench_d1(&cfg);
    }
    if cfg.wants("D2") || cfg.wants("D3") {
        eprintln!("D2, D3 ...");
        bench_d2_d3(&cfg);
    }
    if cfg.wants("D4") {
        bench_d4(&cfg, 90, "D4");
    }
    if cfg.wants("D4r") || cfg.wants("D4") {
        bench_d4(&cfg, 100, "D4r");
    }
    eprintln!(
        "done in {:.1} s ({} reps, medians{})",
        t.elapsed().as_secs_f64(),
        cfg.reps,
        if cfg.quick { ", --quick: N / 10" } else { "" }
    );
}
