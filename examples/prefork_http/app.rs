//! The routes: /kv, /hit, /limit, /stats, /metrics, and the zones they use.
//!
//! [`App::handle`] is the whole request path: find the route, read a body
//! if one was sent (bounded in size and time), answer, count, and write
//! the access-log record. Each route is one method; /kv, /hit and /limit
//! are on the shared dictionary (`kv.rs`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::TcpListener;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderValue, ALLOW};
use hyper::http::request::Parts;
use hyper::{Method, Request, StatusCode, Version};
use serde::Serialize;

use shmzone::dict::{Dict, DictStats};
use shmzone::metrics::{write_dicts, write_rings, write_zones, Kind, PromText, ZoneSample};
use shmzone::ring::{Producer, Ring, RingConfig, RingStats};
use shmzone::{Zone, ZoneInit, Zones, ZonesBuilder};

use crate::args::Config;
use crate::counters::{self, Counters, Event, Route};
use crate::kv::{self, Verdict, KV};
pub use crate::reply::Reply;
use crate::reply::{closing, json, json_with, push_milli, push_u64, recycle_headers, reply, text};

pub const COUNTERS: &str = "counters";
/// The access log's ring zone.
pub const ACCESS_LOG: &str = "access_log";

/// What the master holds and every worker inherits.
pub struct Shared {
    pub zones: Zones,
    /// One socket shared by every worker, or one per worker slot
    /// (`--reuseport`).
    pub listeners: Vec<TcpListener>,
    pub config: Config,
    /// Time zero for the limiter's milliseconds (a monotonic clock read
    /// before fork, so every worker measures from the same instant).
    pub epoch: Instant,
}

/// The zone declarations (used at start and again by each reload).
pub fn builder(c: &Config) -> ZonesBuilder {
    let b = Zones::builder()
        .backend(c.backend())
        .zone(COUNTERS, c.counters_zone)
        .init(COUNTERS, counters::init)
        .dict(KV, c.kv_zone);
    if !c.access_log() {
        return b;
    }
    let ring = ring_config(c);
    b.zone(ACCESS_LOG, ring.zone_size())
        .init(ACCESS_LOG, move |zone, how| {
            match how {
                ZoneInit::Reused => Ring::open(zone).map(drop),
                _ => Ring::create(zone, &ring).map(drop),
            }
            .map_err(shmzone::Error::from)
        })
}

/// The access log's ring: a slot per worker (and spares for the old
/// workers of a reload), `--log-ring-slot` bytes each.
pub fn ring_config(c: &Config) -> RingConfig {
    RingConfig {
        slots: (c.workers() * 2).clamp(4, shmzone::ring::MAX_SLOTS),
        slot_bytes: c.log_ring_slot,
        max_record: 1024,
        ..RingConfig::default()
    }
}

impl Route {
    fn of(path: &str) -> Route {
        match path {
            "/hit" => Route::Hit,
            "/limit" => Route::Limit,
            "/stats" => Route::Stats,
            "/metrics" => Route::Metrics,
            "/" => Route::Index,
            p if p == "/kv" || p.starts_with("/kv/") => Route::Kv,
            _ => Route::Other,
        }
    }
}

/// Zone handles looked up once per worker.
pub struct App<'a> {
    pub shared: &'a Shared,
    counters: Option<Counters<'a>>,
    dict: Option<Dict<'a>>,
    ring: Option<Ring<'a>>,
    /// This worker's access-log producer (taken once).
    log: Option<RefCell<Producer<'a>>>,
    /// This worker's counter slot.
    slot: usize,
    pid: u32,
}

#[derive(Serialize)]
struct ClassJson {
    size: usize,
    total: u64,
    used: u64,
    reqs: u64,
    fails: u64,
}

/// One zone in /stats (`classes` last: a reader may cut at `]}`).
#[derive(Serialize)]
struct ZoneJson {
    name: String,
    size: usize,
    pages_total: usize,
    pages_free: usize,
    largest_free_run: usize,
    page_reqs: u64,
    page_fails: u64,
    lock_holder: Option<u32>,
    recoveries: u32,
    rollbacks: u64,
    fenced: bool,
    classes: Vec<ClassJson>,
}

/// The dictionary in /stats.
#[derive(Serialize)]
struct DictJson {
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
}

impl From<DictStats> for DictJson {
    fn from(s: DictStats) -> DictJson {
        DictJson {
            entries: s.entries,
            bytes: s.bytes,
            capacity: s.capacity,
            free_space: s.free_space,
            gets: s.gets,
            hits: s.hits,
            misses: s.misses,
            sets: s.sets,
            evictions: s.evictions,
            expirations: s.expirations,
        }
    }
}

/// The access-log ring in /stats.
#[derive(Serialize)]
struct RingJson {
    producers: usize,
    written: u64,
    bytes: u64,
    overwritten: u64,
    dropped: u64,
    torn: u64,
}

impl From<RingStats> for RingJson {
    fn from(s: RingStats) -> RingJson {
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
struct StatsJson {
    pid: u32,
    backend: String,
    region_bytes: usize,
    hits: Option<i64>,
    requests: Option<u64>,
    requests_by_route: BTreeMap<&'static str, u64>,
    kv: Option<DictJson>,
    access_log: Option<RingJson>,
    zones: Vec<ZoneJson>,
}

impl<'a> App<'a> {
    pub fn new(shared: &'a Shared, worker_index: usize) -> App<'a> {
        let zones = &shared.zones;
        let dict = zones.get(KV).and_then(|z| match kv::open(&z) {
            Ok(d) => Some(d),
            Err(e) => {
                log::error!("zone {KV}: {e}");
                None
            }
        });
        let ring = zones.get(ACCESS_LOG).and_then(|z| Ring::open(&z).ok());
        let log = ring.and_then(|r| match r.producer() {
            Ok(p) => Some(RefCell::new(p)),
            Err(e) => {
                log::error!("access log: {e}");
                None
            }
        });
        App {
            shared,
            counters: zones.get(COUNTERS).and_then(|z| Counters::of(&z)),
            dict,
            ring,
            log,
            slot: worker_index,
            pid: std::process::id(),
        }
    }

    /// The request counters (and the workers' open-connection gauges).
    pub fn counters(&self) -> Option<Counters<'a>> {
        self.counters
    }

    /// Counts a connection event.
    pub fn event(&self, e: Event) {
        if let Some(c) = self.counters {
            c.event(self.slot, e);
        }
    }

    /// Counts an answer and writes its access-log record.
    fn done(&self, route: Route, line: Option<(String, Instant)>, r: Reply) -> Reply {
        if let Some(c) = self.counters {
            c.request(self.slot, route, r.status().as_u16());
        }
        if let (Some((mut line, start)), Some(p)) = (line, self.log.as_ref()) {
            use std::fmt::Write as _;
            let _ = write!(
                line,
                " {} {}",
                r.status().as_u16(),
                start.elapsed().as_micros()
            );
            // A record longer than the ring takes is dropped (and
            // counted); the request is answered anyway.
            let _ = p.borrow_mut().write(line.as_bytes());
        }
        r
    }

    /// Reads a body whole (PUT /kv/KEY will store it; elsewhere it is
    /// dropped), within the size cap and the body timeout; the error
    /// answer otherwise.
    async fn read_body(&self, body: Incoming) -> Result<Bytes, Reply> {
        let c = &self.shared.config;
        let read = Limited::new(body, c.max_body).collect();
        match tokio::time::timeout(c.body_timeout, read).await {
            Ok(Ok(b)) => Ok(b.to_bytes()),
            Ok(Err(e)) if e.is::<LengthLimitError>() => {
                Err(closing(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n"))
            }
            Ok(Err(_)) => Err(closing(StatusCode::BAD_REQUEST, "bad body\n")),
            Err(_) => {
                self.event(Event::BodyTimeout);
                Err(closing(StatusCode::REQUEST_TIMEOUT, "body timeout\n"))
            }
        }
    }

    /// The answer to a request whose body (if any) was read.
    fn answer(&self, route: Route, parts: &Parts, body: &[u8]) -> Reply {
        // The methods each route takes.
        let (allowed, ok): (&'static str, bool) = match route {
            Route::Other => return text(StatusCode::NOT_FOUND, "not found\n"),
            Route::Kv => (
                "GET, HEAD, PUT, DELETE",
                matches!(
                    parts.method,
                    Method::GET | Method::HEAD | Method::PUT | Method::DELETE
                ),
            ),
            _ => (
                "GET, HEAD",
                matches!(parts.method, Method::GET | Method::HEAD),
            ),
        };
        if !ok {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allowed));
            return r;
        }
        match route {
            Route::Kv => self.kv(&parts.method, &parts.uri, body),
            Route::Hit => self.hit(),
            Route::Limit => self.limit(parts.uri.query().unwrap_or("")),
            Route::Stats => self.stats(),
            Route::Metrics => self.metrics(),
            _ => text(StatusCode::OK, crate::USAGE.as_str()),
        }
    }

    /// `/kv/KEY`: GET (200 or 404), PUT with `?ttl=MS` (201 new, 204
    /// replaced), DELETE (204 or 404); errors carry the dictionary's text.
    fn kv(&self, method: &Method, uri: &hyper::Uri, body: &[u8]) -> Reply {
        let Some(d) = self.dict.as_ref() else {
            return text(StatusCode::INTERNAL_SERVER_ERROR, "no kv zone\n");
        };
        let key = uri.path().strip_prefix("/kv/").unwrap_or("").as_bytes();
        let err = |e: shmzone::dict::DictError| text(kv::error_status(&e), format!("{e}\n"));
        if key.is_empty() {
            return text(StatusCode::BAD_REQUEST, "/kv/KEY: empty key\n");
        }
        match *method {
            Method::PUT => {
                let ttl = uri
                    .query()
                    .unwrap_or("")
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("ttl="));
                let ttl = match ttl.map(str::parse::<u64>) {
                    None => 0,
                    Some(Ok(ms)) => ms,
                    Some(Err(_)) => return text(StatusCode::BAD_REQUEST, "ttl=MS: milliseconds\n"),
                };
                match kv::put(d, key, body, ttl) {
                    Ok(true) => text(StatusCode::CREATED, ""),
                    Ok(false) => text(StatusCode::NO_CONTENT, ""),
                    Err(e) => err(e),
                }
            }
            Method::DELETE => match d.delete(key) {
                Ok(true) => text(StatusCode::NO_CONTENT, ""),
                Ok(false) => text(StatusCode::NOT_FOUND, "not found\n"),
                Err(e) => err(e),
            },
            _ => match d.get(key) {
                Ok(Some(got)) => reply(
                    StatusCode::OK,
                    "application/octet-stream",
                    kv::body_of(got.value),
                ),
                Ok(None) => text(StatusCode::NOT_FOUND, "not found\n"),
                Err(e) => err(e),
            },
        }
    }

    /// One `incr` of "hits" in the dictionary, then the answer carries the
    /// new total: a total is counted before it is answered, so every 200
    /// is counted.
    fn hit(&self) -> Reply {
        let Some(d) = self.dict.as_ref() else {
            return text(StatusCode::INTERNAL_SERVER_ERROR, "no kv zone\n");
        };
        match kv::hit(d) {
            // {"hits":N,"pid":P}, written directly (the hot path: serde_json
            // took about 8 % of a request's instructions).
            Ok(hits) => json_with(StatusCode::OK, |b| {
                b.extend_from_slice(b"{\"hits\":");
                push_u64(b, hits.max(0) as u64);
                b.extend_from_slice(b",\"pid\":");
                push_u64(b, u64::from(self.pid));
                b.extend_from_slice(b"}\n");
            }),
            Err(e) => text(kv::error_status(&e), format!("hits: {e}\n")),
        }
    }

    fn limit(&self, query: &str) -> Reply {
        let key = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("key="))
            .unwrap_or("");
        if key.is_empty() || key.len() > kv::MAX_LIMIT_KEY {
            return text(
                StatusCode::BAD_REQUEST,
                format!("key=K required, 1..={} bytes\n", kv::MAX_LIMIT_KEY),
            );
        }
        let Some(d) = self.dict.as_ref() else {
            return text(StatusCode::INTERNAL_SERVER_ERROR, "no kv zone\n");
        };
        let c = &self.shared.config;
        let now = self.shared.epoch.elapsed().as_millis() as u64;
        let (status, allowed, excess) = match kv::limit(d, key, now, c.rate.milli, c.burst) {
            Ok(Verdict::Allowed(e)) => (StatusCode::OK, true, e),
            Ok(Verdict::Refused(e)) => (StatusCode::TOO_MANY_REQUESTS, false, e),
            Err(e) => return text(StatusCode::SERVICE_UNAVAILABLE, format!("limiter: {e}\n")),
        };
        // {"key":K,"allowed":B,"excess":X,"pid":P}, written directly but
        // for the key (escaped by serde_json).
        json_with(status, |b| {
            b.extend_from_slice(b"{\"key\":");
            // (Writing into a Vec cannot fail.)
            let _ = serde_json::to_writer(&mut *b, key);
            b.extend_from_slice(if allowed {
                b",\"allowed\":true,\"excess\":"
            } else {
                b",\"allowed\":false,\"excess\":"
            });
            push_milli(b, excess);
            b.extend_from_slice(b",\"pid\":");
            push_u64(b, u64::from(self.pid));
            b.extend_from_slice(b"}\n");
        })
    }

    fn stats(&self) -> Reply {
        let zones = &self.shared.zones;
        let totals = self.counters.map(|c| c.totals());
        let s = StatsJson {
            pid: self.pid,
            backend: zones.region().backend().to_string(),
            region_bytes: zones.len(),
            hits: self
                .dict
                .as_ref()
                .and_then(|d| d.get(kv::HITS).ok().flatten())
                .and_then(|g| g.value.as_int()),
            requests: totals.as_ref().map(|t| t.requests()),
            requests_by_route: totals
                .as_ref()
                .map(|t| Route::ALL.iter().map(|r| (r.name(), t.routes[*r as usize])))
                .into_iter()
                .flatten()
                .collect(),
            kv: self.dict.as_ref().map(|d| d.stats().into()),
            access_log: self.ring.as_ref().map(|r| r.stats().into()),
            zones: zones.iter().map(|z| zone_json(&z)).collect(),
        };
        json(StatusCode::OK, &s)
    }

    fn metrics(&self) -> Reply {
        let zones = &self.shared.zones;
        let mut t = PromText::new();
        t.family(
            "shmzone_region_bytes",
            Kind::Gauge,
            "Size of the shared region.",
        )
        .sample("shmzone_region_bytes", &[], zones.len());
        let hits = self
            .dict
            .as_ref()
            .and_then(|d| d.get(kv::HITS).ok().flatten())
            .and_then(|g| g.value.as_int());
        if let Some(h) = hits {
            t.family(
                "shmzone_http_hits_total",
                Kind::Counter,
                "The /hit counter shared by all workers (key \"hits\" of zone kv).",
            )
            .sample("shmzone_http_hits_total", &[], h);
        }
        if let Some(tot) = self.counters.map(|c| c.totals()) {
            t.family(
                "shmzone_http_requests_total",
                Kind::Counter,
                "Requests answered, by route, all workers.",
            );
            for r in Route::ALL {
                t.sample(
                    "shmzone_http_requests_total",
                    &[("route", r.name())],
                    tot.routes[r as usize],
                );
            }
            t.family(
                "shmzone_http_responses_total",
                Kind::Counter,
                "Responses by status class, all workers.",
            );
            for (class, n) in tot.status.iter().enumerate().skip(1) {
                t.sample(
                    "shmzone_http_responses_total",
                    &[("status", &format!("{class}xx"))],
                    n,
                );
            }
            t.family(
                "shmzone_http_connection_events_total",
                Kind::Counter,
                "Connections accepted, and closed by a timeout or an error.",
            );
            for e in Event::ALL {
                t.sample(
                    "shmzone_http_connection_events_total",
                    &[("event", e.name())],
                    tot.events[e as usize],
                );
            }
        }
        if let Some(c) = self.counters {
            let name = "shmzone_http_open_connections";
            t.family(name, Kind::Gauge, "Open connections per worker slot.");
            for (i, n) in c.open(self.shared.config.workers()).enumerate() {
                t.sample(name, &[("worker", &i.to_string())], n);
            }
        }
        if let Some(d) = self.dict.as_ref() {
            write_dicts(&mut t, &[(d.zone_name().to_string(), d.stats())]);
        }
        if let Some(r) = self.ring.as_ref() {
            write_rings(&mut t, &[r.stats()]);
        }
        let samples: Vec<ZoneSample> = zones.iter().map(|z| ZoneSample::of(&z)).collect();
        write_zones(&mut t, &samples);
        reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            t.finish(),
        )
    }
}

impl App<'static> {
    /// Answers one request: at once when it has no body (most requests:
    /// no future to keep), else once the body is read.
    pub fn handle(&'static self, req: Request<Incoming>) -> Answer {
        let route = Route::of(req.uri().path());
        // The access log's line starts before the request is consumed (the
        // clock is read only for it).
        let line = self
            .log
            .as_ref()
            .map(|_| (format!("{} {}", req.method(), req.uri()), Instant::now()));
        // HTTP/1.1 requires Host (RFC 9112 3.2); hyper leaves that to us.
        if req.version() == Version::HTTP_11 && !req.headers().contains_key("host") {
            let r = closing(StatusCode::BAD_REQUEST, "Host header required\n");
            return Answer::Now(Some(self.done(route, line, r)));
        }
        let (mut parts, body) = req.into_parts();
        // The request's header map becomes the answer's (`reply.rs`).
        recycle_headers(std::mem::take(&mut parts.headers));
        if body.is_end_stream() {
            let r = self.answer(route, &parts, &[]);
            return Answer::Now(Some(self.done(route, line, r)));
        }
        Answer::Later(Box::pin(async move {
            let r = match self.read_body(body).await {
                Ok(b) => self.answer(route, &parts, &b),
                Err(r) => r,
            };
            self.done(route, line, r)
        }))
    }
}

/// The answer to a request, as a future: ready, or waiting for the body.
pub enum Answer {
    Now(Option<Reply>),
    Later(Pin<Box<dyn Future<Output = Reply>>>),
}

impl Future for Answer {
    type Output = Reply;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reply> {
        match self.get_mut() {
            // (Polled again after Ready: a broken executor; hyper never does.)
            Answer::Now(r) => Poll::Ready(r.take().expect("Answer polled after completion")),
            Answer::Later(f) => f.as_mut().poll(cx),
        }
    }
}

fn zone_json(z: &Zone<'_>) -> ZoneJson {
    let st = z.stats();
    ZoneJson {
        name: z.name().to_string(),
        size: z.size(),
        pages_total: st.pages_total,
        pages_free: st.pages_free,
        largest_free_run: st.largest_free_run,
        page_reqs: st.page_reqs,
        page_fails: st.page_fails,
        lock_holder: z.mutex().holder(),
        recoveries: z.mutex().recoveries(),
        rollbacks: z.pool().rollbacks(),
        fenced: z.is_fenced(),
        classes: st
            .classes
            .iter()
            .filter(|c| c.total > 0 || c.reqs > 0)
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
