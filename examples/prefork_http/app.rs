//! The routes: /hit, /limit, /stats, /metrics, and the zones they use.
//!
//! [`App::handle`] is the whole request path: find the route, read a body
//! if one was sent (bounded in size and time), answer, count. Each route is
//! one method; `/kv/KEY` is reserved in [`Route`] for the shared dictionary
//! (`shmzone::dict`), and until then answers 404.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode, Version};
use serde::Serialize;

use shmzone::metrics::{write_zones, Kind, PromText, ZoneSample};
use shmzone::{Zone, Zones, ZonesBuilder};

use crate::args::Config;
use crate::counters::{self, Counters, Event, Route};
use crate::limiter::{self, TableStats, Verdict};

pub const COUNTERS: &str = "counters";
pub const LIMITS: &str = "limits";

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
    Zones::builder()
        .backend(c.backend())
        .zone(COUNTERS, c.counters_zone)
        .init(COUNTERS, counters::init)
        .zone(LIMITS, c.limit_zone)
        .init(LIMITS, limiter::init)
}

/// The answer type of every route.
pub type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    reply(status, "text/plain; charset=utf-8", body)
}

fn json(status: StatusCode, v: &impl Serialize) -> Reply {
    let mut body = serde_json::to_vec(v).unwrap_or_default();
    body.push(b'\n');
    reply(status, "application/json", body)
}

/// An error answer after which the connection is closed.
fn closing(status: StatusCode, body: &'static str) -> Reply {
    let mut r = text(status, body);
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    r
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
    limits: Option<Zone<'a>>,
    /// This worker's counter slot.
    slot: usize,
    pid: u32,
}

#[derive(Serialize)]
struct Hit {
    hits: u64,
    pid: u32,
}

#[derive(Serialize)]
struct Limit<'k> {
    key: &'k str,
    allowed: bool,
    excess: f64,
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

#[derive(Serialize)]
struct StatsJson {
    pid: u32,
    backend: String,
    region_bytes: usize,
    hits: Option<u64>,
    requests: Option<u64>,
    requests_by_route: BTreeMap<&'static str, u64>,
    limiter: Option<TableStats>,
    zones: Vec<ZoneJson>,
}

impl<'a> App<'a> {
    pub fn new(shared: &'a Shared, worker_index: usize) -> App<'a> {
        App {
            shared,
            counters: shared.zones.get(COUNTERS).and_then(|z| Counters::of(&z)),
            limits: shared.zones.get(LIMITS),
            slot: worker_index,
            pid: std::process::id(),
        }
    }

    /// Counts a connection event.
    pub fn event(&self, e: Event) {
        if let Some(c) = self.counters {
            c.event(self.slot, e);
        }
    }

    /// Answers one request.
    pub async fn handle(&self, req: Request<Incoming>) -> Reply {
        let route = Route::of(req.uri().path());
        let r = self.answer(route, req).await;
        if let Some(c) = self.counters {
            c.request(self.slot, route, r.status().as_u16());
        }
        r
    }

    async fn answer(&self, route: Route, req: Request<Incoming>) -> Reply {
        // HTTP/1.1 requires Host (RFC 9112 3.2); hyper leaves that to us.
        if req.version() == Version::HTTP_11 && !req.headers().contains_key("host") {
            return closing(StatusCode::BAD_REQUEST, "Host header required\n");
        }
        let (parts, body) = req.into_parts();
        // Read a body whole (PUT /kv/KEY will store it; elsewhere it is
        // dropped), within the size cap and the body timeout.
        let body: Bytes = if body.is_end_stream() {
            Bytes::new()
        } else {
            let c = &self.shared.config;
            let read = Limited::new(body, c.max_body).collect();
            match tokio::time::timeout(c.body_timeout, read).await {
                Ok(Ok(b)) => b.to_bytes(),
                Ok(Err(e)) if e.is::<LengthLimitError>() => {
                    return closing(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n")
                }
                Ok(Err(_)) => return closing(StatusCode::BAD_REQUEST, "bad body\n"),
                Err(_) => {
                    self.event(Event::BodyTimeout);
                    return closing(StatusCode::REQUEST_TIMEOUT, "body timeout\n");
                }
            }
        };
        // The methods each route takes (/kv/KEY, with the dictionary:
        // GET, HEAD, PUT, DELETE).
        let allowed: &'static str = match route {
            Route::Other | Route::Kv => return text(StatusCode::NOT_FOUND, "not found\n"),
            _ => "GET, HEAD",
        };
        if !matches!(parts.method, Method::GET | Method::HEAD) {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allowed));
            return r;
        }
        drop(body);
        match route {
            Route::Hit => self.hit(),
            Route::Limit => self.limit(parts.uri.query().unwrap_or("")),
            Route::Stats => self.stats(),
            Route::Metrics => self.metrics(),
            _ => text(StatusCode::OK, crate::USAGE.as_str()),
        }
    }

    /// One atomic add in the zone, then the answer carries the new total:
    /// a total is counted before it is answered, so every 200 is counted.
    fn hit(&self) -> Reply {
        let Some(c) = self.counters else {
            return text(StatusCode::INTERNAL_SERVER_ERROR, "no counters zone\n");
        };
        json(
            StatusCode::OK,
            &Hit {
                hits: c.hit(),
                pid: self.pid,
            },
        )
    }

    fn limit(&self, query: &str) -> Reply {
        let key = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("key="))
            .unwrap_or("");
        if key.is_empty() || key.len() > limiter::MAX_KEY {
            return text(
                StatusCode::BAD_REQUEST,
                format!("key=K required, 1..={} bytes\n", limiter::MAX_KEY),
            );
        }
        let Some(zone) = self.limits.as_ref() else {
            return text(StatusCode::INTERNAL_SERVER_ERROR, "no limits zone\n");
        };
        let c = &self.shared.config;
        let now = self.shared.epoch.elapsed().as_millis() as u64;
        let (status, allowed, excess) =
            match limiter::account(zone, key.as_bytes(), now, c.rate.milli, c.burst) {
                Verdict::Allowed(e) => (StatusCode::OK, true, e),
                Verdict::Refused(e) => (StatusCode::TOO_MANY_REQUESTS, false, e),
                Verdict::NoMemory => {
                    return text(StatusCode::SERVICE_UNAVAILABLE, "limiter zone too small\n")
                }
            };
        json(
            status,
            &Limit {
                key,
                allowed,
                excess: excess as f64 / 1000.0,
                pid: self.pid,
            },
        )
    }

    fn stats(&self) -> Reply {
        let zones = &self.shared.zones;
        let totals = self.counters.map(|c| c.totals());
        let s = StatsJson {
            pid: self.pid,
            backend: zones.region().backend().to_string(),
            region_bytes: zones.len(),
            hits: totals.as_ref().map(|t| t.hits),
            requests: totals.as_ref().map(|t| t.requests()),
            requests_by_route: totals
                .as_ref()
                .map(|t| Route::ALL.iter().map(|r| (r.name(), t.routes[*r as usize])))
                .into_iter()
                .flatten()
                .collect(),
            limiter: self.limits.as_ref().and_then(limiter::stats),
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
        if let Some(tot) = self.counters.map(|c| c.totals()) {
            t.family(
                "shmzone_http_hits_total",
                Kind::Counter,
                "The /hit counter shared by all workers.",
            )
            .sample("shmzone_http_hits_total", &[], tot.hits);
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
        if let Some(l) = self.limits.as_ref().and_then(limiter::stats) {
            let families: [(&str, Kind, &str, u64); 5] = [
                (
                    "shmzone_limiter_keys",
                    Kind::Gauge,
                    "Keys in the limiter table.",
                    l.keys,
                ),
                (
                    "shmzone_limiter_evicted_total",
                    Kind::Counter,
                    "Keys evicted (LRU) when the zone was full.",
                    l.evicted,
                ),
                (
                    "shmzone_limiter_expired_total",
                    Kind::Counter,
                    "Idle keys expired.",
                    l.expired,
                ),
                (
                    "shmzone_limiter_rebuilt_total",
                    Kind::Counter,
                    "Times the table was emptied after a worker died mid-update.",
                    l.rebuilt,
                ),
                (
                    "shmzone_limiter_consistent",
                    Kind::Gauge,
                    "1 if the table's list and chains agree.",
                    u64::from(l.consistent),
                ),
            ];
            for (name, kind, help, v) in families {
                t.family(name, kind, help).sample(name, &[], v);
            }
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
