//! `shmzone-tail`: prints the records of a log ring in a named region as
//! they come, like `tail -f`.
//!
//! ```text
//! shmzone-tail [--zone NAME] [--from-start] [--json] [--no-follow]
//!              [--interval MS] posix:/NAME | sysv:KEY | file:PATH
//! ```
//!
//! Text lines are `TIME [PID] #SEQ TEXT`; `--json` lines are
//! `{"pid":P,"seq":S,"slot":N,"time":"2026-12-01T23:08:43.123456789Z","text":"..."}`
//! (`"time":null` for unstamped records). Records a reader missed (the
//! ring overwrote them first, or a producer died writing them) are
//! reported on stderr.

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

use shmzone::ring::{Record, Ring, Start};
use shmzone::{NamedId, NamedSpec, Zones};

const USAGE: &str = "usage: shmzone-tail [--zone NAME] [--from-start] [--json] [--no-follow] \
                     [--interval MS] posix:/NAME | sysv:KEY | file:PATH";

struct Args {
    id: NamedId,
    zone: String,
    from_start: bool,
    json: bool,
    follow: bool,
    interval: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut id = None;
    let mut zone = "access_log".to_string();
    let (mut from_start, mut json, mut follow) = (false, false, true);
    let mut interval = Duration::from_millis(50);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--zone" => zone = it.next().ok_or("--zone needs a zone name")?,
            "--from-start" => from_start = true,
            "--json" => json = true,
            "--no-follow" => follow = false,
            "--interval" => {
                let ms = it.next().ok_or("--interval needs milliseconds")?;
                let ms: u64 = ms.parse().map_err(|_| format!("bad --interval {ms:?}"))?;
                interval = Duration::from_millis(ms.max(1));
            }
            "-h" | "--help" => return Err(String::new()),
            _ if a.starts_with('-') => return Err(format!("unknown option {a}")),
            _ if id.is_none() => id = Some(a.parse::<NamedId>()?),
            _ => return Err(format!("one region only (got {a:?} too)")),
        }
    }
    Ok(Args {
        id: id.ok_or("which region? (posix:/NAME, sysv:KEY or file:PATH)")?,
        zone,
        from_start,
        json,
        follow,
        interval,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("shmzone-tail: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shmzone-tail: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let name = args.id.to_arg();
    let zones = Zones::attach(&NamedSpec::new(args.id.clone())).map_err(|e| e.to_string())?;
    let ring = Ring::find(&zones, &args.zone).map_err(|e| format!("{name}: {e}"))?;
    let mut reader = ring.reader(if args.from_start {
        Start::Oldest
    } else {
        Start::Newest
    });
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut reported = 0;
    loop {
        // A bounded drain, so lost counts are reported now and then even
        // under a flood.
        for _ in 0..100_000 {
            match reader.next_record() {
                Ok(Some(rec)) => {
                    let r = if args.json {
                        write_json(&mut out, &rec)
                    } else {
                        write_text(&mut out, &rec)
                    };
                    if r.is_err() {
                        return Ok(()); // stdout closed (`| head`)
                    }
                }
                Ok(None) => break,
                Err(e) => eprintln!("shmzone-tail: {e}"),
            }
        }
        if out.flush().is_err() {
            return Ok(());
        }
        let lost = reader.lost();
        if lost > reported {
            eprintln!(
                "shmzone-tail: lost {} records ({lost} in total: overwritten before they \
                 were read, or torn by a producer that died)",
                lost - reported
            );
            reported = lost;
        }
        if !args.follow {
            return Ok(());
        }
        std::thread::sleep(args.interval);
    }
}

fn write_text(out: &mut impl Write, r: &Record<'_>) -> io::Result<()> {
    let time = r.time_ns.map_or_else(|| "-".to_string(), rfc3339);
    writeln!(
        out,
        "{time} [{}] #{} {}",
        r.pid,
        r.seq,
        String::from_utf8_lossy(r.data)
    )
}

fn write_json(out: &mut impl Write, r: &Record<'_>) -> io::Result<()> {
    let time = r
        .time_ns
        .map_or_else(|| "null".to_string(), |t| format!("\"{}\"", rfc3339(t)));
    let mut text = String::with_capacity(r.data.len() + 2);
    for c in String::from_utf8_lossy(r.data).chars() {
        match c {
            '"' => text.push_str("\\\""),
            '\\' => text.push_str("\\\\"),
            '\n' => text.push_str("\\n"),
            '\r' => text.push_str("\\r"),
            '\t' => text.push_str("\\t"),
            c if (c as u32) < 0x20 => text.push_str(&format!("\\u{:04x}", c as u32)),
            c => text.push(c),
        }
    }
    writeln!(
        out,
        "{{\"pid\":{},\"seq\":{},\"slot\":{},\"time\":{time},\"text\":\"{text}\"}}",
        r.pid, r.seq, r.slot
    )
}

/// `2026-12-01T23:08:43.123456789Z` for ns since the Unix epoch (UTC).
fn rfc3339(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ns % 1_000_000_000
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01, by
/// eras of 400 years (146,097 days) counted from 0000-03-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of the era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of the year from March 1
    let mp = (5 * doy + 2) / 153; // month from March, 0..=11
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(
            rfc3339(1_764_630_523_000_000_042),
            "2025-12-01T23:08:43.000000042Z"
        );
    }
}
