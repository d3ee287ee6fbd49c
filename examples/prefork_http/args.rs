//! Command-line options (hand-written; no dependencies).

use std::net::SocketAddr;
use std::time::Duration;

use shmzone::{Backend, NamedId};

/// Everything the command line sets.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub workers: usize,
    pub threads: usize,
    /// Limiter rate in thousandths of a request per second (nginx's unit).
    pub rate_milli: u64,
    /// The rate as written, for messages.
    pub rate_text: String,
    pub burst: u64,
    pub limit_zone: usize,
    pub counters_zone: usize,
    pub backend: Backend,
    /// Make the region a named one that other processes (shmzone-stat) can
    /// attach to.
    pub named: Option<NamedId>,
    /// Remove a region left under that name before creating it.
    pub replace: bool,
    pub keepalive: Duration,
    pub read_timeout: Duration,
    pub stop_timeout: Duration,
    pub log_level: log::LevelFilter,
}

pub const USAGE: &str = "\
prefork_http: a pre-fork HTTP/1.1 server whose workers share zones (shmzone)

usage: prefork_http [OPTIONS]

options:
  --listen ADDR          address to listen on            [127.0.0.1:8080]
                         (port 0: any free port; the first line printed
                         names the real one)
  --workers N            worker processes                [number of CPUs]
  --threads N            connections served at once per worker      [16]
  --rate R               limiter rate per key: N, Nr/s or Nr/m  [10r/s]
  --burst N              limiter burst (requests above the rate)     [5]
  --limit-zone SIZE      size of the limiter zone (k, m suffixes)   [1m]
  --counters-zone SIZE   size of the counters zone                 [32k]
  --backend NAME         map_anon, dev_zero or sysv        [probed default]
  --named ID             a named region instead: posix:/NAME, sysv:KEY or
                         file:PATH (mode 0600; removed when the server
                         stops), for `shmzone-stat ID` to read while it runs
  --replace              with --named: remove a region left under that name
  --keepalive SECS       idle keep-alive timeout                     [5]
  --read-timeout SECS    time allowed to send one request           [10]
  --stop-timeout SECS    graceful stop limit before SIGKILL         [10]
  --log LEVEL            error, warn, info, debug or off          [info]
  -h, --help             this text

endpoints:
  GET /hit               add one to a counter shared by all workers
  GET /limit?key=K       leaky-bucket limiter per key: 200 or 429
  GET /stats             JSON: every zone's size, pages, classes, lock
  GET /                  this list

signals (to the master): SIGTERM/SIGINT stop gracefully, SIGHUP reloads.
";

/// What parsing found: run with a config, or print help.
pub enum Parsed {
    Run(Config),
    Help,
}

pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Parsed, String> {
    let ncpu = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut c = Config {
        listen: "127.0.0.1:8080".parse().unwrap(),
        workers: ncpu,
        threads: 16,
        rate_milli: 10_000,
        rate_text: "10r/s".to_string(),
        burst: 5,
        limit_zone: 1 << 20,
        counters_zone: 32 << 10,
        backend: Backend::default(),
        named: None,
        replace: false,
        keepalive: Duration::from_secs(5),
        read_timeout: Duration::from_secs(10),
        stop_timeout: Duration::from_secs(10),
        log_level: log::LevelFilter::Info,
    };
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        if name == "-h" || name == "--help" {
            return Ok(Parsed::Help);
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "--listen" => {
                let v = value()?;
                c.listen = v
                    .parse()
                    .map_err(|_| format!("--listen: not an address: {v:?}"))?;
            }
            "--workers" => c.workers = count(&name, &value()?, 1, 256)?,
            "--threads" => c.threads = count(&name, &value()?, 1, 1024)?,
            "--rate" => {
                let v = value()?;
                c.rate_milli = rate(&v)?;
                c.rate_text = v;
            }
            "--burst" => c.burst = count(&name, &value()?, 0, 1_000_000)? as u64,
            "--limit-zone" => c.limit_zone = size(&name, &value()?)?,
            "--counters-zone" => c.counters_zone = size(&name, &value()?)?,
            "--named" => {
                let v = value()?;
                c.named = Some(v.parse().map_err(|e| format!("--named: {e}"))?);
            }
            "--replace" => c.replace = true,
            "--backend" => {
                let v = value()?;
                c.backend = v.parse().map_err(|e| format!("--backend: {e}"))?;
            }
            "--keepalive" => c.keepalive = secs(&name, &value()?)?,
            "--read-timeout" => c.read_timeout = secs(&name, &value()?)?,
            "--stop-timeout" => c.stop_timeout = secs(&name, &value()?)?,
            "--log" => {
                let v = value()?;
                c.log_level = v
                    .parse()
                    .map_err(|_| format!("--log: unknown level {v:?}"))?;
            }
            _ => return Err(format!("unknown option {arg:?} (try --help)")),
        }
    }
    Ok(Parsed::Run(c))
}

fn count(name: &str, v: &str, min: usize, max: usize) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "{name}: expected a number in {min}..={max}, got {v:?}"
        )),
    }
}

fn secs(name: &str, v: &str) -> Result<Duration, String> {
    let n = count(name, v, 1, 86_400)?;
    Ok(Duration::from_secs(n as u64))
}

/// `10m`, `512k`, `65536` → bytes.
fn size(name: &str, v: &str) -> Result<usize, String> {
    let lower = v.to_ascii_lowercase();
    let (digits, mult) = match lower.as_bytes().last() {
        Some(b'k') => (&lower[..lower.len() - 1], 1usize << 10),
        Some(b'm') => (&lower[..lower.len() - 1], 1 << 20),
        Some(b'g') => (&lower[..lower.len() - 1], 1 << 30),
        _ => (lower.as_str(), 1),
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&n| n > 0 && n <= 1 << 34)
        .ok_or_else(|| format!("{name}: not a size: {v:?}"))
}

/// nginx's `rate=`: `N`, `Nr/s` or `Nr/m`, in thousandths of a request per
/// second.
fn rate(v: &str) -> Result<u64, String> {
    let bad = || format!("--rate: expected N, Nr/s or Nr/m, got {v:?}");
    let (n, per_minute) = if let Some(n) = v.strip_suffix("r/s") {
        (n, false)
    } else if let Some(n) = v.strip_suffix("r/m") {
        (n, true)
    } else {
        (v, false)
    };
    let n: u64 = n.parse().map_err(|_| bad())?;
    if n == 0 || n > 1_000_000 {
        return Err(bad());
    }
    Ok(if per_minute { n * 1000 / 60 } else { n * 1000 }.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_rates() {
        assert_eq!(size("x", "1m"), Ok(1 << 20));
        assert_eq!(size("x", "64K"), Ok(64 << 10));
        assert!(size("x", "0").is_err());
        assert_eq!(rate("10r/s"), Ok(10_000));
        assert_eq!(rate("30r/m"), Ok(500));
        assert!(rate("fast").is_err());
    }
}
