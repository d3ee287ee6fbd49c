//! The main job: a pre-fork HTTP/1.1 server whose workers share zones.
//!
//! ```sh
//! cargo run --release --example prefork_http -- --workers 4 --listen 127.0.0.1:8080
//! curl -s localhost:8080/hit            # a counter shared by every worker
//! curl -s 'localhost:8080/limit?key=me' # nginx limit_req: 200, or 429 past the rate
//! curl -s localhost:8080/stats          # every zone's pages, classes, lock
//! ```
//!
//! The master makes the listening socket and the zones, then forks the
//! workers ([`shmzone::prefork::Master`]). It respawns a worker that dies
//! (after releasing the zone locks it held and checking those zones),
//! reloads on SIGHUP (zones kept, new workers, old ones finish and leave)
//! and stops gracefully on SIGTERM or Ctrl-C. `--help` lists the options.

#[path = "prefork_http/app.rs"]
mod app;
#[path = "prefork_http/args.rs"]
mod args;
#[path = "prefork_http/http.rs"]
mod http;
#[path = "prefork_http/limiter.rs"]
mod limiter;

use std::io::Write;
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use shmzone::prefork::{recover_zones, Master, Wake, Worker};
use shmzone::{NamedSpec, Zones};

use app::{App, Shared};
use args::{Config, Parsed};

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
    let config = match args::parse(std::env::args().skip(1)) {
        Ok(Parsed::Run(c)) => c,
        Ok(Parsed::Help) => {
            print!("{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("prefork_http: {e}");
            return ExitCode::from(64);
        }
    };
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
    let listener =
        TcpListener::bind(config.listen).map_err(|e| format!("bind {}: {e}", config.listen))?;
    // Workers poll the shared socket and accept without blocking: whoever
    // loses the race for a connection gets WouldBlock and waits again.
    listener.set_nonblocking(true)?;
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

    let addr = listener.local_addr()?;
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
        "{} workers x {} connections; limiter {} burst {}; try: curl -s http://{addr}/hit",
        config.workers, config.threads, config.rate_text, config.burst
    )?;
    out.flush()?;
    drop(out);

    let shared = Shared {
        zones,
        listener,
        config: config.clone(),
        epoch: Instant::now(),
    };
    let reload_config = config.clone();
    let master = Master::new(shared)
        .workers(config.workers)
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
            // Our own structure in the limits zone may be half-updated.
            if r.unlocked.iter().any(|z| z == app::LIMITS) {
                if let Some(z) = s.zones.get(app::LIMITS) {
                    if limiter::repair(&z) {
                        log::warn!("limiter table inconsistent after {d}: emptied");
                    }
                }
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
    // SAFETY: this program has a single thread until here (workers start
    // their threads after the fork).
    let (_, report) = unsafe { master.run(worker) }?;
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

/// One worker process: `threads` threads, each accepting and serving one
/// connection at a time, until the master says stop.
fn worker(shared: &Shared, w: &Worker) -> i32 {
    let app = App::new(shared);
    let limits = http::Limits {
        keepalive: shared.config.keepalive,
        read_timeout: shared.config.read_timeout,
    };
    log::debug!("worker {} (generation {}) ready", w.index(), w.generation());
    std::thread::scope(|scope| {
        for _ in 0..shared.config.threads {
            scope.spawn(|| accept_loop(shared, w, &app, &limits));
        }
    });
    0
}

fn accept_loop(shared: &Shared, w: &Worker, app: &App<'_>, limits: &http::Limits) {
    loop {
        match w.wait_readable(shared.listener.as_fd(), None) {
            Wake::Stop => return,
            Wake::Timeout => continue,
            Wake::Ready => {}
        }
        match shared.listener.accept() {
            Ok((stream, _)) => http::serve(stream, w, limits, |req| app.route(req)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                log::warn!("accept: {e}");
                if w.wait_stop(Some(Duration::from_millis(100))) {
                    return;
                }
            }
        }
    }
}
