//! The main job: a pre-fork HTTP/1.1 server whose workers share zones.
//!
//! ```sh
//! cargo run --release --example prefork_http -- --workers 4 --listen 127.0.0.1:8080
//! curl -s localhost:8080/hit            # a counter shared by every worker
//! curl -s 'localhost:8080/limit?key=me' # nginx limit_req: 200, or 429 past the rate
//! curl -s -X PUT --data-binary v1 'localhost:8080/kv/k1?ttl=60000' # the shared dictionary
//! curl -s localhost:8080/kv/k1          # v1; DELETE removes it
//! curl -s localhost:8080/stats          # every zone's pages, classes, lock
//! curl -s localhost:8080/metrics        # the same and request counters, Prometheus text
//! ```
//!
//! The master makes the listening socket and the zones, then forks the
//! workers ([`shmzone::prefork::Master`]); each worker serves with hyper on
//! a tokio current-thread runtime it makes after the fork (`server.rs`). It respawns a worker that dies
//! (after releasing the zone locks it held and checking those zones),
//! reloads on SIGHUP (zones kept, new workers, old ones finish and leave)
//! and stops gracefully on SIGTERM or Ctrl-C. `--help` lists the options.

#[path = "prefork_http/accept.rs"]
mod accept;
#[path = "prefork_http/app.rs"]
mod app;
#[path = "prefork_http/args.rs"]
mod args;
#[path = "prefork_http/counters.rs"]
mod counters;
#[path = "prefork_http/kv.rs"]
mod kv;
#[path = "prefork_http/reply.rs"]
mod reply;
#[path = "prefork_http/server.rs"]
mod server;
#[path = "prefork_http/watchdog.rs"]
mod watchdog;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;
use std::sync::LazyLock;
use std::time::Instant;

use clap::{CommandFactory, Parser};
use shmzone::dict::Dict;
use shmzone::prefork::{recover_zones, Master};
use shmzone::ring::Ring;
use shmzone::{NamedSpec, Zones};

use app::Shared;
use args::Config;

/// The `--help` text, also served on `/`.
pub static USAGE: LazyLock<String> =
    LazyLock::new(|| Config::command().render_long_help().to_string());

/// A minimal logger: `LEVEL [pid] message` on stderr.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!("{:<5} [{}] {}", r.level(), std::process::id(), r.args());
        }
    }
    fn flush(&self) {}
}

static LOGGER: StderrLog = StderrLog;

fn main() -> ExitCode {
    let config = Config::parse();
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(config.log_level);
    match run(config) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("prefork_http: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let listeners = listen(&config).map_err(|e| format!("listen on {}: {e}", config.listen))?;
    let zones = match &config.named {
        // The master's drop removes the name when the server stops; a
        // forked worker's drop never does.
        Some(id) => Zones::create_named(
            app::builder(&config),
            &NamedSpec::new(id.clone())
                .replace(config.replace)
                .remove_on_drop(true),
        )?,
        None => app::builder(&config).build()?,
    };

    let addr = listeners[0].local_addr()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on http://{addr}")?;
    match zones.region().named() {
        Some(id) => writeln!(
            out,
            "named region {id}, {} bytes, master pid {}; inspect with: shmzone-stat {}",
            zones.len(),
            std::process::id(),
            id.to_arg()
        )?,
        None => writeln!(
            out,
            "backend {}, region {} bytes, master pid {}",
            zones.region().backend(),
            zones.len(),
            std::process::id()
        )?,
    }
    for z in zones.iter() {
        writeln!(out, "zone {:?}: {} bytes", z.name(), z.size())?;
    }
    writeln!(
        out,
        "{} workers (hyper, {} connections each, {}); limiter {} burst {}; access log {}; try: curl -s http://{addr}/hit",
        config.workers(),
        config.connections,
        if config.reuseport { "a SO_REUSEPORT socket each" } else { "one shared socket" },
        config.rate.text,
        config.burst,
        if config.access_log() { "in zone access_log (shmzone-tail)" } else { "off" }
    )?;
    out.flush()?;
    drop(out);

    let shared = Shared {
        zones,
        listeners,
        config: config.clone(),
        epoch: Instant::now(),
    };
    let reload_config = config.clone();
    let master = Master::new(shared)
        .workers(config.workers())
        .stop_timeout(config.stop_timeout)
        .on_death(|s: &Shared, d| {
            let r = recover_zones(&s.zones, d.pid);
            if !r.is_clean() {
                log::warn!(
                    "{d}: released the locks of {:?}; broken zones: {}",
                    r.unlocked,
                    r.broken.len()
                );
            }
            // The dictionary's sections were rolled back by the recovery;
            // check what is left.
            if let Some(z) = s.zones.get(kv::KV) {
                if let Err(e) = Dict::open(&z).and_then(|d| d.check()) {
                    log::error!("dictionary {:?} after {d}: {e}", kv::KV);
                }
            }
            // The access-log slots the dead worker held go back.
            if let Some(ring) = s
                .zones
                .get(app::ACCESS_LOG)
                .and_then(|z| Ring::open(&z).ok())
            {
                let n = ring.release_slots_of(d.pid);
                log::debug!("{d}: released {n} access-log slots");
            }
        })
        .on_reload(move |s: &mut Shared| {
            let report = s.zones.reload(app::builder(&reload_config))?;
            log::info!(
                "reload: kept {:?}, created {:?}, resized {:?}, recreated {:?}, dropped {:?}",
                report.kept,
                report.created,
                report.resized,
                report.recreated,
                report.dropped
            );
            Ok(())
        })
        .on_retired(|s: &mut Shared| {
            let bytes = s.zones.release_retired();
            if bytes > 0 {
                log::info!("released {bytes} bytes of retired zones");
            }
        });
    // SAFETY: this program has a single thread until here: each worker
    // makes its runtime (and its one helper thread) after the fork.
    let (_, report) = unsafe { master.run(server::worker) }?;
    log::info!(
        "master: exiting; {} workers spawned, {} respawned, {} abnormal deaths, {} reloads",
        report.spawned,
        report.respawned,
        report.abnormal,
        report.reloads
    );
    Ok(if report.gave_up {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The listening sockets: one shared by every worker, or with
/// `--reuseport` one per worker slot, all bound to the same address with
/// SO_REUSEPORT so the kernel spreads connections over them (nginx's
/// `listen ... reuseport`). They are made here, before the fork, so a
/// respawned worker takes over its slot's socket and the connections
/// queued on it.
fn listen(c: &Config) -> std::io::Result<Vec<TcpListener>> {
    use socket2::{Domain, Socket, Type};
    let n = if c.reuseport { c.workers() } else { 1 };
    let mut out: Vec<TcpListener> = Vec::with_capacity(n);
    let mut addr: SocketAddr = c.listen;
    for _ in 0..n {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        if c.reuseport {
            s.set_reuse_port(true)?;
        }
        s.bind(&addr.into())?;
        s.listen(1024)?;
        // On the shared socket each worker's accept thread blocks in
        // accept (the kernel wakes one waiter per connection, in turn); the
        // timeout bounds a wait so that a stopping worker's thread notices
        // within it. With --reuseport every worker polls every socket and
        // may take from another's (accept.rs): non-blocking, so a lost race
        // costs nothing.
        s.set_nonblocking(c.reuseport)?;
        s.set_read_timeout(Some(std::time::Duration::from_millis(100)))?;
        let l: TcpListener = s.into();
        // Port 0: the others join the port the first one got.
        addr = l.local_addr()?;
        out.push(l);
    }
    Ok(out)
}
