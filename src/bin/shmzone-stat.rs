//! `shmzone-stat`: prints the zones of a named shmzone region and their slab
//! statistics, as a table or as JSON.
//!
//! ```text
//! shmzone-stat [--json] [--classes] (posix:/NAME | sysv:KEY | file:PATH)
//! shmzone-stat [--json] [--classes] (--posix /NAME | --sysv KEY | --file PATH)
//! ```
//!
//! It attaches **read-only** (so read permission on the region is enough,
//! and it cannot disturb the server) and works on a private snapshot of the
//! region taken at attach time: see `Zones::attach` with
//! `NamedSpec::read_only`. Every zone is `check()`ed before its counters
//! are read (they are only trusted once the pages and bitmaps are sound).
//! Exit status: 0; 1 when the region cannot be attached (not there, no
//! permission, not a valid region); 2 for a usage error; 3 when a zone is
//! inconsistent in five snapshots running.

use std::fmt::Write as _;
use std::process::ExitCode;

use shmzone::slab::PoolStats;
use shmzone::{NamedId, NamedSpec, Zones};

const USAGE: &str = "usage: shmzone-stat [--json] [--classes] \
                     (posix:/NAME | sysv:KEY | file:PATH | --posix /NAME | --sysv KEY | --file PATH)\n\
                     \n  --posix /NAME   a POSIX shm region (/dev/shm/NAME on Linux)\
                     \n  --sysv KEY      a SysV keyed region (decimal or 0x hex, as `ipcs -m` shows)\
                     \n  --file PATH     a file region\
                     \n  --json          print JSON instead of a table\
                     \n  --classes       also print every size class in use (table output)";

struct Args {
    spec: NamedSpec,
    json: bool,
    classes: bool,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let (mut spec, mut json, mut classes) = (None, false, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value"))
        };
        let next = match a.as_str() {
            "--json" => {
                json = true;
                None
            }
            "--classes" => {
                classes = true;
                None
            }
            "--posix" => Some(NamedSpec::posix(&value()?)),
            "--sysv" => {
                let v = value()?;
                Some(NamedSpec::new(format!("sysv:{v}").parse::<NamedId>()?))
            }
            "--file" => Some(NamedSpec::file(value()?)),
            "-h" | "--help" => return Err(String::new()),
            other if other.starts_with('-') => return Err(format!("unknown argument {other:?}")),
            other => Some(NamedSpec::new(other.parse::<NamedId>()?)),
        };
        if let Some(s) = next {
            if spec.replace(s).is_some() {
                return Err("give one region only".into());
            }
        }
    }
    Ok(Args {
        spec: spec.ok_or("which region? give --posix, --sysv or --file")?,
        json,
        classes,
    })
}

/// One zone's line of figures.
struct Row {
    name: String,
    size: usize,
    tag: u64,
    root: usize,
    /// The counters, if `check()` passed (else what it found).
    stats: Result<PoolStats, String>,
}

fn snapshot(args: &Args) -> Result<(Zones, Vec<Row>, PoolStats), shmzone::Error> {
    let zones = Zones::attach(&args.spec.clone().read_only(true))?;
    let rows = zones
        .iter()
        .map(|z| Row {
            name: z.name().to_string(),
            size: z.size(),
            tag: z.tag(),
            root: z.root(),
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
    Ok((zones, rows, free))
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse(&argv) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("shmzone-stat: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    // A snapshot copied while a worker was inside a critical section can
    // look inconsistent: take up to five before believing it.
    let mut tries = 0;
    let (zones, rows, free) = loop {
        tries += 1;
        match snapshot(&args) {
            Ok(s) if tries < 5 && s.1.iter().any(|r| r.stats.is_err()) => {}
            Ok(s) => break s,
            Err(e) => {
                eprintln!("shmzone-stat: {e}");
                return ExitCode::from(1);
            }
        }
    };
    let out = if args.json {
        json(&args, &zones, &rows, &free)
    } else {
        table(&args, &zones, &rows, &free)
    };
    print!("{out}");
    if rows.iter().any(|r| r.stats.is_err()) {
        return ExitCode::from(3);
    }
    ExitCode::SUCCESS
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

fn table(args: &Args, zones: &Zones, rows: &[Row], free: &PoolStats) -> String {
    let mut s = String::new();
    let page = shmzone::slab::SLAB_PAGE;
    let _ = writeln!(
        s,
        "{}: {} ({} bytes), {} zones, {} free for zones made at run time",
        args.spec.id(),
        human(zones.len()),
        zones.len(),
        rows.len(),
        human(free.largest_free_run * page),
    );
    let _ = writeln!(
        s,
        "{:<24} {:>9} {:>6} {:>7} {:>7} {:>9} {:>9} {:>9} {:>6} {:>10}  CHECK",
        "ZONE", "SIZE", "TAG", "PAGES", "FREE", "LARGEST", "IN USE", "REQS", "FAILS", "ROOT",
    );
    for r in rows {
        let st = match &r.stats {
            Ok(st) => st,
            Err(e) => {
                let _ = writeln!(
                    s,
                    "{:<24} {:>9} {:>6} {:>7} {:>7} {:>9} {:>9} {:>9} {:>6} {:>10}  BROKEN: {e}",
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
                );
                continue;
            }
        };
        let reqs = st.classes.iter().map(|c| c.reqs).sum::<u64>() + st.page_reqs;
        let fails = st.classes.iter().map(|c| c.fails).sum::<u64>() + st.page_fails;
        let _ = writeln!(
            s,
            "{:<24} {:>9} {:>6} {:>7} {:>7} {:>9} {:>9} {:>9} {:>6} {:>10}  ok",
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
        );
        if args.classes {
            for c in st.classes.iter().filter(|c| c.total > 0 || c.reqs > 0) {
                let _ = writeln!(
                    s,
                    "    {:>5}B chunks: {}/{} used, {} reqs, {} fails",
                    c.size, c.used, c.total, c.reqs, c.fails
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
    }
    s
}

/// A JSON string literal.
fn q(text: &str) -> String {
    let mut s = String::with_capacity(text.len() + 2);
    s.push('"');
    for ch in text.chars() {
        match ch {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

fn stats_json(st: &PoolStats) -> String {
    let classes: Vec<String> = st
        .classes
        .iter()
        .map(|c| {
            format!(
                "{{\"size\": {}, \"total\": {}, \"used\": {}, \"reqs\": {}, \"fails\": {}}}",
                c.size, c.total, c.used, c.reqs, c.fails
            )
        })
        .collect();
    format!(
        "\"pages_total\": {}, \"pages_free\": {}, \"pages_in_runs\": {}, \
         \"largest_free_run\": {}, \"page_reqs\": {}, \"page_fails\": {}, \
         \"bytes_requested\": {}, \"bytes_handed_out\": {}, \"bytes_in_use\": {}, \
         \"classes\": [{}]",
        st.pages_total,
        st.pages_free,
        st.pages_in_runs,
        st.largest_free_run,
        st.page_reqs,
        st.page_fails,
        st.bytes_requested,
        st.bytes_handed_out,
        st.bytes_in_use(),
        classes.join(", ")
    )
}

fn json(args: &Args, zones: &Zones, rows: &[Row], free: &PoolStats) -> String {
    let zone_objs: Vec<String> = rows
        .iter()
        .map(|r| {
            let rest = match &r.stats {
                Ok(st) => format!("\"check\": \"ok\", {}", stats_json(st)),
                Err(e) => format!("\"check\": {}", q(e)),
            };
            format!(
                "    {{\"name\": {}, \"size\": {}, \"tag\": {}, \"root\": {}, {rest}}}",
                q(&r.name),
                r.size,
                r.tag,
                r.root,
            )
        })
        .collect();
    format!(
        "{{\n  \"region\": {},\n  \"len\": {},\n  \"region_pool\": {{{}}},\n  \"zones\": [\n{}\n  ]\n}}\n",
        q(&args.spec.id().to_string()),
        zones.len(),
        stats_json(free),
        zone_objs.join(",\n")
    )
}
