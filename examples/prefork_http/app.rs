//! The routes: /hit, /limit, /stats, and the zones they use.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use shmzone::{Zone, ZoneInit, Zones, ZonesBuilder};

use crate::args::Config;
use crate::http::{Request, Response};
use crate::limiter::{self, Verdict};

pub const COUNTERS: &str = "counters";
pub const LIMITS: &str = "limits";

/// What the master holds and every worker inherits.
pub struct Shared {
    pub zones: Zones,
    pub listener: TcpListener,
    pub config: Config,
    /// Time zero for the limiter's milliseconds (a monotonic clock read
    /// before fork, so every worker measures from the same instant).
    pub epoch: Instant,
}

/// The counters zone's root block: `hits` is bumped with one atomic add, no
/// lock needed.
#[repr(C)]
#[derive(Clone, Copy)]
struct Counters {
    hits: u64,
    requests: u64,
}
static_assertions::assert_eq_size!(Counters, [u8; 16]);

fn counters_init(zone: &Zone<'_>, how: ZoneInit<'_>) -> Result<(), shmzone::Error> {
    let keep = match how {
        ZoneInit::Reused => zone.value_at::<Counters>(zone.root()).is_some(),
        _ => false,
    };
    if keep {
        return Ok(());
    }
    // Resized or recreated: carry the totals over from the old zone.
    let old = match how {
        ZoneInit::Resized(old) | ZoneInit::Recreated(old) => counters(&old).map(|c| {
            // SAFETY: checked in bounds and aligned by `counters`; atomics.
            let c = unsafe { c.as_ref() };
            Counters {
                hits: c[0].load(Ordering::SeqCst),
                requests: c[1].load(Ordering::SeqCst),
            }
        }),
        _ => None,
    };
    let p = zone
        .alloc_value(old.unwrap_or(Counters {
            hits: 0,
            requests: 0,
        }))
        .ok_or(shmzone::Error::ZoneTooSmall {
            name: zone.name().to_string(),
            size: zone.size(),
            min: zone.size() + 4096,
        })?;
    zone.set_root(zone.offset_of(p.as_ptr().cast()).unwrap_or(0));
    Ok(())
}

/// The counters as atomics, in this process.
fn counters(zone: &Zone<'_>) -> Option<NonNull<[AtomicU64; 2]>> {
    zone.value_at::<[AtomicU64; 2]>(zone.root())
}

/// The zone declarations (used at start and again by each reload).
pub fn builder(c: &Config) -> ZonesBuilder {
    Zones::builder()
        .backend(c.backend)
        .zone(COUNTERS, c.counters_zone)
        .init(COUNTERS, counters_init)
        .zone(LIMITS, c.limit_zone)
        .init(LIMITS, limiter::init)
}

/// Zone handles looked up once per worker.
pub struct App<'a> {
    pub shared: &'a Shared,
    counters: Option<&'a [AtomicU64; 2]>,
    limits: Option<Zone<'a>>,
}

impl<'a> App<'a> {
    pub fn new(shared: &'a Shared) -> App<'a> {
        let counters = shared
            .zones
            .get(COUNTERS)
            .and_then(|z| counters(&z))
            .map(|p| {
                // SAFETY: in bounds and aligned (value_at); atomics only; the
                // zone outlives the worker (it is retired, not unmapped, on
                // reload).
                unsafe { &*p.as_ptr() }
            });
        App {
            shared,
            counters,
            limits: shared.zones.get(LIMITS),
        }
    }

    pub fn route(&self, req: &Request<'_>) -> Response {
        if let Some(c) = self.counters {
            c[1].fetch_add(1, Ordering::Relaxed);
        }
        let known = matches!(req.path, "/" | "/hit" | "/limit" | "/stats");
        if !known {
            return Response::text(404, "not found\n");
        }
        if req.method != "GET" && req.method != "HEAD" {
            let mut r = Response::text(405, "method not allowed\n");
            r.extra = "Allow: GET, HEAD\r\n";
            return r;
        }
        match req.path {
            "/hit" => self.hit(),
            "/limit" => self.limit(req.query),
            "/stats" => self.stats(),
            _ => Response::text(200, crate::args::USAGE),
        }
    }

    /// One atomic add in the zone, then the answer carries the new total:
    /// a total is counted before it is answered, so every 200 is counted.
    fn hit(&self) -> Response {
        let Some(c) = self.counters else {
            return Response::text(500, "no counters zone\n");
        };
        let total = c[0].fetch_add(1, Ordering::SeqCst) + 1;
        Response::json(
            200,
            format!("{{\"hits\":{total},\"pid\":{}}}\n", std::process::id()),
        )
    }

    fn limit(&self, query: &str) -> Response {
        let key = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("key="))
            .unwrap_or("");
        if key.is_empty() || key.len() > limiter::MAX_KEY {
            return Response::text(
                400,
                format!("key=K required, 1..={} bytes\n", limiter::MAX_KEY),
            );
        }
        let Some(zone) = self.limits.as_ref() else {
            return Response::text(500, "no limits zone\n");
        };
        let c = &self.shared.config;
        let now = self.shared.epoch.elapsed().as_millis() as u64;
        let pid = std::process::id();
        let key_json = json_str(key);
        match limiter::account(zone, key.as_bytes(), now, c.rate_milli, c.burst) {
            Verdict::Allowed(excess) => Response::json(
                200,
                format!(
                    "{{\"key\":{key_json},\"allowed\":true,\"excess\":{:.3},\"pid\":{pid}}}\n",
                    excess as f64 / 1000.0
                ),
            ),
            Verdict::Refused(excess) => Response::json(
                429,
                format!(
                    "{{\"key\":{key_json},\"allowed\":false,\"excess\":{:.3},\"pid\":{pid}}}\n",
                    excess as f64 / 1000.0
                ),
            ),
            Verdict::NoMemory => Response::text(503, "limiter zone too small\n"),
        }
    }

    fn stats(&self) -> Response {
        let zones = &self.shared.zones;
        let mut s = String::with_capacity(4096);
        let _ = write!(
            s,
            "{{\"pid\":{},\"backend\":\"{}\",\"region_bytes\":{},",
            std::process::id(),
            zones.region().backend(),
            zones.len()
        );
        if let Some(c) = self.counters {
            let _ = write!(
                s,
                "\"hits\":{},\"requests\":{},",
                c[0].load(Ordering::SeqCst),
                c[1].load(Ordering::SeqCst)
            );
        }
        if let Some(t) = self.limits.as_ref().and_then(limiter::stats) {
            let _ = write!(
                s,
                "\"limiter\":{{\"keys\":{},\"evicted\":{},\"expired\":{},\"rebuilt\":{},\"consistent\":{}}},",
                t.keys, t.evicted, t.expired, t.rebuilt, t.consistent
            );
        }
        s.push_str("\"zones\":[");
        for (i, z) in zones.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            zone_json(&mut s, &z);
        }
        s.push_str("]}\n");
        Response::json(200, s)
    }
}

fn zone_json(s: &mut String, z: &Zone<'_>) {
    let st = z.stats();
    let holder = z
        .mutex()
        .holder()
        .map_or("null".to_string(), |p| p.to_string());
    let _ = write!(
        s,
        "{{\"name\":{},\"size\":{},\"pages_total\":{},\"pages_free\":{},\"largest_free_run\":{},\
         \"page_reqs\":{},\"page_fails\":{},\"lock_holder\":{holder},\"recoveries\":{},\"classes\":[",
        json_str(z.name()),
        z.size(),
        st.pages_total,
        st.pages_free,
        st.largest_free_run,
        st.page_reqs,
        st.page_fails,
        z.mutex().recoveries(),
    );
    let mut first = true;
    for c in st.classes.iter().filter(|c| c.total > 0 || c.reqs > 0) {
        if !first {
            s.push(',');
        }
        first = false;
        let _ = write!(
            s,
            "{{\"size\":{},\"total\":{},\"used\":{},\"reqs\":{},\"fails\":{}}}",
            c.size, c.total, c.used, c.reqs, c.fails
        );
    }
    s.push_str("]}");
}

fn json_str(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for ch in v.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
