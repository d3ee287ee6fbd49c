//! `shmzone-stat`: prints the zones of a named shmzone region and their slab
//! statistics, as a table, as JSON or in the Prometheus text format, once
//! or refreshed in place.
//!
//! ```text
//! shmzone-stat [--json | --prometheus] [--classes] [--watch SECS] (posix:/NAME | sysv:KEY | file:PATH)
//! shmzone-stat [OPTIONS] (--posix /NAME | --sysv KEY | --file PATH)
//! ```
//!
//! It attaches **read-only** (so read permission on the region is enough,
//! and it cannot disturb the server) and works on a private snapshot of the
//! region taken at attach time: see `Zones::attach` with
//! `NamedSpec::read_only`. Every zone is `check()`ed before its counters
//! are read (they are only trusted once the pages and bitmaps are sound).
//! Zones holding a shared dictionary (`shmzone::dict`) or a log ring
//! (`shmzone::ring`) also show its entries, capacity and free space (and
//! with `--largest N` its largest entries), or its written and lost
//! records: the snapshot copies the data pages too, so both are opened on
//! it as on the live region.
//! Exit status: 0; 1 when the region cannot be attached (not there, no
//! permission, not a valid region); 2 for a usage error; 3 when a zone is
//! inconsistent in five snapshots running. `--watch` runs until Ctrl-C (or
//! until the region goes away: 1).

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Parser};
use serde::Serialize;

use shmzone::dict::{Dict, DictError, DictStats};
use shmzone::journal::JournalStats;
use shmzone::metrics::{write_dicts, write_rings, write_zones, Kind, PromText, ZoneSample};
use shmzone::ring::{Ring, RingStats};
use shmzone::slab::PoolStats;
use shmzone::{NamedId, NamedSpec, Zones};

/// Prints the zones of a named shmzone region and their slab statistics.
#[derive(Parser, Debug)]
#[command(name = "shmzone-stat", version)]
#[command(group(ArgGroup::new("region").required(true).args(["id", "posix", "sysv", "file"])))]
struct Cli {
    /// The region: posix:/NAME, sysv:KEY or file:PATH.
    #[arg(value_name = "REGION")]
    id: Option<NamedId>,
    /// A POSIX shm region (/dev/shm/NAME on Linux).
    #[arg(long, value_name = "/NAME")]
    posix: Option<String>,
    /// A SysV keyed region (decimal or 0x hex, as `ipcs -m` shows).
    #[arg(long, value_name = "KEY", value_parser = sysv_key)]
    sysv: Option<NamedId>,
    /// A file region.
    #[arg(long, value_name = "PATH")]
    file: Option<std::path::PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, conflicts_with = "prometheus")]
    json: bool,
    /// Print the Prometheus text format (the names of the example server's
    /// /metrics).
    #[arg(long)]
    prometheus: bool,
    /// Also print every size class in use (table output).
    #[arg(long)]
    classes: bool,
    /// Also list the N largest entries of each dictionary (key and bytes).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    largest: Option<u32>,
    /// Refresh every SECS seconds in place, as `top` does, until Ctrl-C.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u32).range(1..=86_400))]
    watch: Option<u32>,
}

fn sysv_key(v: &str) -> Result<NamedId, String> {
    format!("sysv:{v}").parse()
}

impl Cli {
    fn spec(&self) -> NamedSpec {
        match (&self.id, &self.posix, &self.sysv, &self.file) {
            (Some(id), ..) => NamedSpec::new(id.clone()),
            (_, Some(p), ..) => NamedSpec::posix(p),
            (_, _, Some(id), _) => NamedSpec::new(id.clone()),
            (.., Some(f)) => NamedSpec::file(f),
            // The "region" group is required: clap refused the command
            // line before we get here.
            _ => unreachable!("clap requires one region"),
        }
    }
}

/// One zone's line of figures.
struct Row {
    name: String,
    size: usize,
    tag: u64,
    root: usize,
    recoveries: u32,
    journal: JournalStats,
    /// The counters, if `check()` passed (else what it found).
    stats: Result<PoolStats, String>,
    /// The zone's dictionary, if it holds one (else what opening or
    /// checking it found).
    dict: Option<Result<DictRow, String>>,
    /// The zone's log ring, if it holds one.
    ring: Option<Result<RingStats, String>>,
}

/// A dictionary's figures.
struct DictRow {
    stats: DictStats,
    /// The largest entries (key, bytes), with `--largest`.
    largest: Vec<(Vec<u8>, usize)>,
}

/// The dictionary in `z`, if it holds one.
fn dict_row(z: &shmzone::Zone<'_>, largest: Option<u32>) -> Option<Result<DictRow, String>> {
    let d = match Dict::open(z) {
        Ok(d) => d,
        Err(DictError::NotADict(_)) => return None,
        Err(e) => return Some(Err(e.to_string())),
    };
    Some(
        (|| {
            d.check()?;
            let largest = match largest {
                Some(n) => d.largest(n as usize)?,
                None => Vec::new(),
            };
            Ok::<_, DictError>(DictRow {
                stats: d.stats(),
                largest,
            })
        })()
        .map_err(|e| e.to_string()),
    )
}

/// One look at the region.
struct Snapshot {
    len: usize,
    rows: Vec<Row>,
    free: PoolStats,
}

fn snapshot(spec: &NamedSpec, largest: Option<u32>) -> Result<Snapshot, shmzone::Error> {
    let zones = Zones::attach(&spec.clone().read_only(true))?;
    let rows = zones
        .iter()
        .map(|z| Row {
            dict: z.check().ok().and_then(|()| dict_row(&z, largest)),
            ring: z
                .check()
                .ok()
                .and_then(|()| Ring::open(&z).ok())
                .map(|r| Ok(r.stats())),
            name: z.name().to_string(),
            size: z.size(),
            tag: z.tag(),
            root: z.root(),
            recoveries: z.mutex().recoveries(),
            journal: z.pool().journal_stats(),
            stats: z.check().map(|()| z.stats()).map_err(|e| e.to_string()),
        })
        .collect();
    let pool = zones.region_pool();
    let free = match pool.check() {
        Ok(()) => pool.stats(),
        Err(e) => {
            return Err(shmzone::Error::BadRegion {
                reason: format!("the region pool: {e}"),
            })
        }
    };
    Ok(Snapshot {
        len: zones.len(),
        rows,
        free,
    })
}

/// A snapshot copied while a worker was inside a critical section can
/// look inconsistent: take up to five before believing it.
fn settled(spec: &NamedSpec, largest: Option<u32>) -> Result<Snapshot, shmzone::Error> {
    let mut tries = 0;
    loop {
        tries += 1;
        match snapshot(spec, largest) {
            Ok(s)
                if tries < 5
                    && s.rows
                        .iter()
                        .any(|r| r.stats.is_err() || matches!(r.dict, Some(Err(_)))) => {}
            other => return other,
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            // --help, --version
            print!("{e}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap says "Usage:"; this tool always said "usage:".
            let msg = e.render().to_string().replace("Usage:", "usage:");
            eprint!("{msg}");
            if !msg.contains("usage:") {
                eprintln!("usage: shmzone-stat [OPTIONS] <REGION | --posix /NAME | --sysv KEY | --file PATH>");
            }
            return ExitCode::from(2);
        }
    };
    let spec = cli.spec();
    let Some(secs) = cli.watch else {
        return match settled(&spec, cli.largest) {
            Ok(s) => {
                print!("{}", render(&cli, &spec, &s));
                if s.rows
                    .iter()
                    .any(|r| r.stats.is_err() || matches!(r.dict, Some(Err(_))))
                {
                    ExitCode::from(3)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => {
                eprintln!("shmzone-stat: {e}");
                ExitCode::from(1)
            }
        };
    };
    // --watch: clear the screen and redraw, until Ctrl-C (SIGINT's default
    // action ends the process) or the region goes away.
    let mut out = std::io::stdout();
    loop {
        match settled(&spec, cli.largest) {
            Ok(s) => {
                let page = render(&cli, &spec, &s);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let _ = write!(
                    out,
                    "\x1b[H\x1b[2J{page}\nevery {secs} s (unix time {now}); Ctrl-C to stop\n"
                );
                let _ = out.flush();
            }
            Err(e) => {
                eprintln!("shmzone-stat: {e}");
                return ExitCode::from(1);
            }
        }
        std::thread::sleep(Duration::from_secs(u64::from(secs)));
    }
}

fn render(cli: &Cli, spec: &NamedSpec, s: &Snapshot) -> String {
    if cli.json {
        json(spec, s)
    } else if cli.prometheus {
        prometheus(s)
    } else {
        table(cli, spec, s)
    }
}

/// `n` bytes in B, KiB, MiB or GiB, three significant digits.
fn human(n: usize) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else if v >= 100.0 {
        format!("{v:.0}{}", UNITS[u])
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

fn table(cli: &Cli, spec: &NamedSpec, snap: &Snapshot) -> String {
    let mut s = String::new();
    let page = shmzone::slab::SLAB_PAGE;
    let _ = writeln!(
        s,
        "{}: {} ({} bytes), {} zones, {} free for zones made at run time",
        spec.id(),
        human(snap.len),
        snap.len,
        snap.rows.len(),
        human(snap.free.largest_free_run * page),
    );
    let _ = writeln!(
        s,
        "{:<24} {:>9} {:>6} {:>7} {:>7} {:>9} {:>9} {:>9} {:>6} {:>10} {:>6}  CHECK",
        "ZONE",
        "SIZE",
        "TAG",
        "PAGES",
        "FREE",
        "LARGEST",
        "IN USE",
        "REQS",
        "FAILS",
        "ROOT",
        "RBACK",
    );
    for r in &snap.rows {
        let st = match &r.stats {
            Ok(st) => st,
            Err(e) => {
                let _ = writeln!(
                    s,
                    "{:<24} {:>9} {:>6} {:>7} {:>7} {:>9} {:>9} {:>9} {:>6} {:>10} {:>6}  BROKEN{}: {e}",
                    r.name,
                    human(r.size),
                    r.tag,
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    format!("{:#x}", r.root),
                    r.journal.rollbacks,
                    if r.journal.fenced { " (fenced)" } else { "" },
                );
                continue;
            }
        };
        // Saturating: each counter passed check() (at most 2^62), but 62
        // classes of them can still add up past u64::MAX.
        let reqs = st
            .classes
            .iter()
            .fold(st.page_reqs, |a, c| a.saturating_add(c.reqs));
        let fails = st
            .classes
            .iter()
            .fold(st.page_fails, |a, c| a.saturating_add(c.fails));
        let _ = writeln!(
            s,
            "{:<24} {:>9} {:>6} {:>7} {:>7} {:>9} {:>9} {:>9} {:>6} {:>10} {:>6}  {}",
            r.name,
            human(r.size),
            r.tag,
            st.pages_total,
            st.pages_free,
            human(st.largest_free_run * page),
            human(st.bytes_in_use()),
            reqs,
            fails,
            format!("{:#x}", r.root),
            r.journal.rollbacks,
            if r.journal.fenced {
                "ok (fenced)"
            } else {
                "ok"
            },
        );
        if cli.classes {
            for c in st.classes.iter().filter(|c| c.total > 0 || c.reqs > 0) {
                let _ = writeln!(
                    s,
                    "    {:>5}B chunks: {}/{} used, {} cached, {} reqs, {} fails",
                    c.size, c.used, c.total, c.cached, c.reqs, c.fails
                );
            }
            if st.page_reqs > 0 {
                let _ = writeln!(
                    s,
                    "    page runs: {} pages, {} reqs, {} fails",
                    st.pages_in_runs, st.page_reqs, st.page_fails
                );
            }
        }
        if st.cache.slots > 0 || st.cache.claims > 0 {
            let c = &st.cache;
            let _ = writeln!(
                s,
                "    caches: {} thread(s){}, {} chunks and {} runs cached ({}), {} claimed, \
                 {} returned from dead threads, {} flush requests",
                c.slots,
                if c.enabled { "" } else { " (caching off)" },
                c.chunks,
                c.runs,
                human(c.bytes as usize),
                c.claims,
                c.reclaims,
                c.pressure
            );
        }
        structures(&mut s, r);
    }
    s
}

/// A zone's dictionary or ring lines in the table.
fn structures(s: &mut String, r: &Row) {
    match &r.dict {
        Some(Ok(d)) => {
            let st = &d.stats;
            let _ = writeln!(
                s,
                "    dict: {} entries, {} of keys and values, capacity {}, free {}; \
                 {} gets ({} hits, {} misses), {} sets, {} evictions, {} expirations",
                st.entries,
                human(st.bytes as usize),
                human(st.capacity),
                human(st.free_space),
                st.gets,
                st.hits,
                st.misses,
                st.sets,
                st.evictions,
                st.expirations
            );
            for (k, n) in &d.largest {
                let _ = writeln!(s, "      {:>9}  {}", human(*n), String::from_utf8_lossy(k));
            }
        }
        Some(Err(e)) => {
            let _ = writeln!(s, "    dict: BROKEN: {e}");
        }
        None => {}
    }
    match &r.ring {
        Some(Ok(st)) => {
            let _ = writeln!(
                s,
                "    ring: {} producers, {} records written ({}), lost: {} overwritten, {} dropped, {} torn",
                st.producers,
                st.written,
                human(st.bytes as usize),
                st.overwritten,
                st.dropped,
                st.torn
            );
        }
        Some(Err(e)) => {
            let _ = writeln!(s, "    ring: {e}");
        }
        None => {}
    }
}

fn prometheus(snap: &Snapshot) -> String {
    let mut t = PromText::new();
    t.family(
        "shmzone_region_bytes",
        Kind::Gauge,
        "Size of the shared region.",
    )
    .sample("shmzone_region_bytes", &[], snap.len);
    t.family(
        "shmzone_region_largest_free_run_pages",
        Kind::Gauge,
        "The largest zone that can still be made at run time, in pages.",
    )
    .sample(
        "shmzone_region_largest_free_run_pages",
        &[],
        snap.free.largest_free_run,
    );
    let samples: Vec<ZoneSample> = snap
        .rows
        .iter()
        .map(|r| ZoneSample {
            name: r.name.clone(),
            size: r.size,
            stats: r.stats.as_ref().ok().cloned(),
            // A read-only snapshot releases any lock held in its copy.
            lock_holder: None,
            recoveries: r.recoveries,
            journal: r.journal,
            consistent: Some(r.stats.is_ok()),
        })
        .collect();
    write_zones(&mut t, &samples);
    let dicts: Vec<(String, DictStats)> = snap
        .rows
        .iter()
        .filter_map(|r| match &r.dict {
            Some(Ok(d)) => Some((r.name.clone(), d.stats)),
            _ => None,
        })
        .collect();
    if !dicts.is_empty() {
        write_dicts(&mut t, &dicts);
    }
    let rings: Vec<RingStats> = snap
        .rows
        .iter()
        .filter_map(|r| r.ring.as_ref().and_then(|x| x.as_ref().ok()).cloned())
        .collect();
    if !rings.is_empty() {
        write_rings(&mut t, &rings);
    }
    t.finish()
}

#[derive(Serialize)]
struct ClassJson {
    size: usize,
    total: u64,
    used: u64,
    reqs: u64,
    fails: u64,
}

#[derive(Serialize)]
struct StatsJson {
    pages_total: usize,
    pages_free: usize,
    pages_in_runs: usize,
    largest_free_run: usize,
    page_reqs: u64,
    page_fails: u64,
    bytes_requested: u64,
    bytes_handed_out: u64,
    bytes_in_use: usize,
    classes: Vec<ClassJson>,
}

impl From<&PoolStats> for StatsJson {
    fn from(st: &PoolStats) -> StatsJson {
        StatsJson {
            pages_total: st.pages_total,
            pages_free: st.pages_free,
            pages_in_runs: st.pages_in_runs,
            largest_free_run: st.largest_free_run,
            page_reqs: st.page_reqs,
            page_fails: st.page_fails,
            bytes_requested: st.bytes_requested,
            bytes_handed_out: st.bytes_handed_out,
            bytes_in_use: st.bytes_in_use(),
            classes: st
                .classes
                .iter()
                .map(|c| ClassJson {
                    size: c.size,
                    total: c.total,
                    used: c.used,
                    reqs: c.reqs,
                    fails: c.fails,
                })
                .collect(),
        }
    }
}

#[derive(Serialize)]
struct ZoneJson {
    name: String,
    size: usize,
    tag: u64,
    root: usize,
    recoveries: u32,
    rollbacks: u64,
    fenced: bool,
    /// "ok", or what check() found.
    check: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    dict: Option<DictJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ring: Option<RingJson>,
    #[serde(flatten)]
    stats: Option<StatsJson>,
}

/// A dictionary in the JSON output ("check" is "ok" or what it found).
#[derive(Serialize)]
struct DictJson {
    check: String,
    entries: u64,
    bytes: u64,
    capacity: usize,
    free_space: usize,
    gets: u64,
    hits: u64,
    misses: u64,
    sets: u64,
    evictions: u64,
    expirations: u64,
    /// With --largest: [key (lossy UTF-8), bytes].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    largest: Vec<(String, usize)>,
}

impl DictJson {
    fn of(r: &Result<DictRow, String>) -> DictJson {
        let (check, st, largest) = match r {
            Ok(d) => (
                "ok".to_string(),
                d.stats,
                d.largest
                    .iter()
                    .map(|(k, n)| (String::from_utf8_lossy(k).into_owned(), *n))
                    .collect(),
            ),
            Err(e) => (e.clone(), DictStats::default(), Vec::new()),
        };
        DictJson {
            check,
            entries: st.entries,
            bytes: st.bytes,
            capacity: st.capacity,
            free_space: st.free_space,
            gets: st.gets,
            hits: st.hits,
            misses: st.misses,
            sets: st.sets,
            evictions: st.evictions,
            expirations: st.expirations,
            largest,
        }
    }
}

/// A log ring in the JSON output.
#[derive(Serialize)]
struct RingJson {
    producers: usize,
    written: u64,
    bytes: u64,
    overwritten: u64,
    dropped: u64,
    torn: u64,
}

impl From<&RingStats> for RingJson {
    fn from(s: &RingStats) -> RingJson {
        RingJson {
            producers: s.producers,
            written: s.written,
            bytes: s.bytes,
            overwritten: s.overwritten,
            dropped: s.dropped,
            torn: s.torn,
        }
    }
}

#[derive(Serialize)]
struct RegionJson {
    region: String,
    len: usize,
    region_pool: StatsJson,
    zones: Vec<ZoneJson>,
}

fn json(spec: &NamedSpec, snap: &Snapshot) -> String {
    let doc = RegionJson {
        region: spec.id().to_string(),
        len: snap.len,
        region_pool: StatsJson::from(&snap.free),
        zones: snap
            .rows
            .iter()
            .map(|r| ZoneJson {
                name: r.name.clone(),
                size: r.size,
                tag: r.tag,
                root: r.root,
                recoveries: r.recoveries,
                rollbacks: r.journal.rollbacks,
                fenced: r.journal.fenced,
                check: match &r.stats {
                    Ok(_) => "ok".to_string(),
                    Err(e) => e.clone(),
                },
                dict: r.dict.as_ref().map(DictJson::of),
                ring: r
                    .ring
                    .as_ref()
                    .and_then(|x| x.as_ref().ok())
                    .map(RingJson::from),
                stats: r.stats.as_ref().ok().map(StatsJson::from),
            })
            .collect(),
    };
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, Layout::default());
    // Serialising plain structs of numbers and strings into a Vec cannot fail.
    doc.serialize(&mut ser).expect("JSON into a Vec");
    out.push(b'\n');
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// The JSON layout this tool has always printed: the top object's members
/// and the zones one per line, each zone on one line, `": "` and `", "`
/// between items.
#[derive(Default)]
struct Layout {
    depth: usize,
}

impl Layout {
    fn newline<W: ?Sized + std::io::Write>(&self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b"\n")?;
        for _ in 0..self.depth {
            w.write_all(b"  ")?;
        }
        Ok(())
    }

    /// Items at depth 1 (the top object's members) and 2 (the zones) go
    /// on their own lines.
    fn broken(&self) -> bool {
        self.depth <= 2
    }
}

impl serde_json::ser::Formatter for Layout {
    fn begin_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.depth += 1;
        w.write_all(b"{")
    }
    fn end_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.depth -= 1;
        if self.depth == 0 {
            self.newline(w)?;
        }
        w.write_all(b"}")
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if !first {
            w.write_all(b",")?;
        }
        if self.depth == 1 {
            self.newline(w)
        } else if !first {
            w.write_all(b" ")
        } else {
            Ok(())
        }
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
    fn begin_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.depth += 1;
        w.write_all(b"[")
    }
    fn end_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.depth -= 1;
        if self.depth == 1 {
            self.newline(w)?;
        }
        w.write_all(b"]")
    }
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if !first {
            w.write_all(b",")?;
        }
        if self.broken() {
            self.newline(w)
        } else if !first {
            w.write_all(b" ")
        } else {
            Ok(())
        }
    }
}
