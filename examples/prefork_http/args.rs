//! Command-line options (clap derive).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use shmzone::{Backend, NamedId};

const ENDPOINTS: &str = "\
endpoints:
  GET /hit               add one to a counter shared by all workers
  GET /limit?key=K       leaky-bucket limiter per key: 200 or 429
  PUT /kv/KEY[?ttl=MS]   store the body in the shared dictionary: 201 or 204
  GET /kv/KEY            the value (200) or 404; DELETE /kv/KEY: 204 or 404
  GET /stats             JSON: every zone's size, pages, classes, lock
  GET /metrics           the same and the request counters, Prometheus text
  GET /                  this list

signals (to the master): SIGTERM/SIGINT stop gracefully, SIGHUP reloads.";

/// A pre-fork HTTP/1.1 server (hyper workers) whose workers share zones
/// (shmzone).
#[derive(Parser, Clone, Debug)]
#[command(name = "prefork_http", version, after_help = ENDPOINTS)]
pub struct Config {
    /// Address to listen on (port 0: any free port; the first line printed
    /// names the real one).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Worker processes [default: number of CPUs].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: Option<u16>,
    /// Connections one worker serves at once (nginx's worker_connections);
    /// past it the worker stops accepting until one closes.
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub connections: u32,
    /// One listening socket per worker with SO_REUSEPORT (the kernel spreads
    /// connections) instead of one socket shared by all workers.
    #[arg(long)]
    pub reuseport: bool,
    /// Limiter rate per key: N, Nr/s or Nr/m.
    #[arg(long, value_name = "RATE", default_value = "10r/s", value_parser = rate)]
    pub rate: Rate,
    /// Limiter burst (requests above the rate).
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub burst: u64,
    /// Size of the shared dictionary's zone "kv" (k, m, g suffixes): /kv,
    /// /hit's counter (key "hits") and /limit's buckets (keys "limit:K").
    #[arg(long, value_name = "SIZE", default_value = "4m", value_parser = size)]
    pub kv_zone: usize,
    /// The access log: `ring` (a log ring in zone "access_log", one record
    /// per request, read with `shmzone-tail ID`) or `off` [default: ring
    /// with --named, else off].
    #[arg(long, value_name = "ring|off", value_parser = access_log)]
    access_log: Option<bool>,
    /// Bytes of access-log records each worker's slot of the ring keeps (a
    /// power of two, 4k..=1g).
    #[arg(long, value_name = "SIZE", default_value = "256k", value_parser = size)]
    pub log_ring_slot: usize,
    /// Size of the counters zone.
    #[arg(long, value_name = "SIZE", default_value = "32k", value_parser = size)]
    pub counters_zone: usize,
    /// map_anon, dev_zero or sysv [default: the probed one].
    #[arg(long, value_name = "NAME")]
    backend: Option<Backend>,
    /// A named region instead: posix:/NAME, sysv:KEY or file:PATH (mode
    /// 0600; removed when the server stops), for `shmzone-stat ID` to read
    /// while it runs.
    #[arg(long, value_name = "ID")]
    pub named: Option<NamedId>,
    /// With --named: remove a region left under that name before creating it.
    #[arg(long, requires = "named")]
    pub replace: bool,
    /// Seconds an idle keep-alive connection is kept.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = secs)]
    pub keepalive: Duration,
    /// Seconds allowed for a request head to arrive whole (from the
    /// connection's start or the previous response).
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = secs)]
    pub header_timeout: Duration,
    /// Seconds allowed for a request body to arrive whole.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = secs)]
    pub body_timeout: Duration,
    /// Largest request body accepted (413 past it).
    #[arg(long, value_name = "SIZE", default_value = "1m", value_parser = size)]
    pub max_body: usize,
    /// Microseconds a worker with nothing to do keeps polling before it
    /// sleeps, yielding the CPU to any other runnable task meanwhile (0:
    /// sleep at once). Requests that come meanwhile are served without a
    /// wake-up.
    #[arg(long, value_name = "MICROS", default_value_t = 200, value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub busy_poll: u64,
    /// Graceful stop limit before SIGKILL, in seconds.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = secs)]
    pub stop_timeout: Duration,
    /// error, warn, info, debug or off.
    #[arg(long = "log", value_name = "LEVEL", default_value = "info", value_parser = level)]
    pub log_level: log::LevelFilter,
}

impl Config {
    /// Worker processes.
    pub fn workers(&self) -> usize {
        match self.workers {
            Some(n) => usize::from(n),
            None => std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }

    /// The zone backend.
    /// Whether workers write the access log into a ring.
    pub fn access_log(&self) -> bool {
        self.access_log.unwrap_or(self.named.is_some())
    }

    pub fn backend(&self) -> Backend {
        self.backend.unwrap_or_default()
    }
}

/// nginx's `rate=`, in thousandths of a request per second, with the text
/// as written (for messages).
#[derive(Clone, Debug)]
pub struct Rate {
    pub milli: u64,
    pub text: String,
}

/// `N`, `Nr/s` or `Nr/m`.
fn rate(v: &str) -> Result<Rate, String> {
    let bad = || format!("expected N, Nr/s or Nr/m, got {v:?}");
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
    Ok(Rate {
        milli: if per_minute { n * 1000 / 60 } else { n * 1000 }.max(1),
        text: v.to_string(),
    })
}

/// `10m`, `512k`, `65536` → bytes.
fn size(v: &str) -> Result<usize, String> {
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
        .ok_or_else(|| format!("not a size: {v:?}"))
}

fn access_log(v: &str) -> Result<bool, String> {
    match v {
        "ring" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("expected ring or off, got {v:?}")),
    }
}

fn level(v: &str) -> Result<log::LevelFilter, String> {
    v.parse()
        .map_err(|_| format!("expected error, warn, info, debug, trace or off, got {v:?}"))
}

/// Whole seconds, 1..=86400.
fn secs(v: &str) -> Result<Duration, String> {
    match v.parse::<u64>() {
        Ok(n) if (1..=86_400).contains(&n) => Ok(Duration::from_secs(n)),
        _ => Err(format!("expected seconds in 1..=86400, got {v:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_rates_and_the_command_line() {
        assert_eq!(size("1m"), Ok(1 << 20));
        assert_eq!(size("64K"), Ok(64 << 10));
        assert!(size("0").is_err());
        assert_eq!(rate("10r/s").unwrap().milli, 10_000);
        assert_eq!(rate("30r/m").unwrap().milli, 500);
        assert!(rate("fast").is_err());
        let c = Config::try_parse_from(["x", "--workers", "3", "--rate=2r/s"]).unwrap();
        assert_eq!((c.workers(), c.rate.milli), (3, 2000));
        assert!(Config::try_parse_from(["x", "--workers=0"]).is_err());
        assert!(Config::try_parse_from(["x", "--replace"]).is_err());
        assert!(!c.access_log());
        let c = Config::try_parse_from(["x", "--named", "posix:/x"]).unwrap();
        assert!(c.access_log());
        let c = Config::try_parse_from(["x", "--named", "posix:/x", "--access-log=off"]).unwrap();
        assert!(!c.access_log());
        assert!(Config::try_parse_from(["x", "--access-log=file"]).is_err());
    }
}
