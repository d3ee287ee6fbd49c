//! Zone statistics in the Prometheus text exposition format (version
//! 0.0.4), with no dependency: a small writer ([`PromText`]) and the zone
//! families ([`write_zones`]) that the example server's `/metrics` and
//! `shmzone-stat --prometheus` both print, so the names agree.
//!
//! The figures are read from shared memory at scrape time (every worker's
//! allocations are in them), which is why this formats a snapshot instead
//! of keeping a registry of process-local counters.
//!
//! ```
//! use shmzone::metrics::{write_zones, PromText, ZoneSample};
//! use shmzone::Zones;
//! let zones = Zones::builder().zone("limits", 64 << 10).build()?;
//! let samples: Vec<ZoneSample> = zones.iter().map(|z| ZoneSample::of(&z)).collect();
//! let mut t = PromText::new();
//! write_zones(&mut t, &samples);
//! let text = t.finish();
//! assert!(text.contains("shmzone_zone_pages_free{zone=\"limits\"} "));
//! # Ok::<(), shmzone::Error>(())
//! ```

use std::fmt::{Display, Write as _};

use crate::dict::DictStats;
use crate::journal::JournalStats;
use crate::ring::RingStats;
use crate::slab::PoolStats;
use crate::zone::Zone;

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (until a restart).
    Counter,
    /// Goes up and down.
    Gauge,
}

/// Builds a Prometheus text page: each family's `# HELP` and `# TYPE`
/// lines, then its samples (all samples of a family must be together).
#[derive(Debug, Default)]
pub struct PromText {
    out: String,
}

impl PromText {
    /// An empty page.
    pub fn new() -> PromText {
        PromText::default()
    }

    /// Starts the family `name`.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        self
    }

    /// One sample of the family last started (the same `name`: counters
    /// are named with their `_total`, as the 0.0.4 format wants). Label
    /// values are escaped.
    pub fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: impl Display,
    ) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"");
                escape_label(&mut self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
        self
    }

    /// The family `name` with one sample per item.
    pub fn each<T, V: Display>(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        items: &[T],
        mut f: impl FnMut(&T) -> (Vec<(&'static str, String)>, V),
    ) -> &mut Self {
        self.family(name, kind, help);
        for it in items {
            let (labels, v) = f(it);
            let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            self.sample(name, &labels, v);
        }
        self
    }

    /// The page so far.
    pub fn as_str(&self) -> &str {
        &self.out
    }

    /// The finished page.
    pub fn finish(self) -> String {
        self.out
    }
}

fn escape_help(h: &str) -> String {
    h.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// What [`write_zones`] prints about one zone.
#[derive(Debug, Clone)]
pub struct ZoneSample {
    /// The zone's name (the `zone` label).
    pub name: String,
    /// Its size in bytes.
    pub size: usize,
    /// Its pool's counters (`None`: not to be trusted, e.g. `check()`
    /// failed; the zone then appears only in the size, lock and
    /// consistency families).
    pub stats: Option<PoolStats>,
    /// The pid holding its lock, if any.
    pub lock_holder: Option<u32>,
    /// Locks taken back from dead holders.
    pub recoveries: u32,
    /// The zone's journal: rollbacks of dead holders' sections, the fence.
    pub journal: JournalStats,
    /// What `check()` found, when it was run (`None`: not checked).
    pub consistent: Option<bool>,
}

impl ZoneSample {
    /// A zone's figures now (its stats are taken under its lock; no check).
    pub fn of(z: &Zone<'_>) -> ZoneSample {
        ZoneSample {
            name: z.name().to_string(),
            size: z.size(),
            stats: Some(z.stats()),
            lock_holder: z.mutex().holder(),
            recoveries: z.mutex().recoveries(),
            journal: z.pool().journal_stats(),
            consistent: None,
        }
    }
}

/// Writes the `shmzone_zone_*` families for `zones`:
///
/// | family | type | labels |
/// |---|---|---|
/// | `shmzone_zone_size_bytes` | gauge | zone |
/// | `shmzone_zone_pages`, `shmzone_zone_pages_free`, `shmzone_zone_largest_free_run_pages` | gauge | zone |
/// | `shmzone_zone_bytes_in_use` | gauge | zone |
/// | `shmzone_zone_page_requests_total`, `shmzone_zone_page_failures_total` | counter | zone |
/// | `shmzone_zone_class_chunks`, `shmzone_zone_class_chunks_used` | gauge | zone, size |
/// | `shmzone_zone_class_requests_total`, `shmzone_zone_class_failures_total` | counter | zone, size |
/// | `shmzone_zone_lock_holder_pid` | gauge (0: free) | zone |
/// | `shmzone_zone_lock_recoveries_total` | counter | zone |
/// | `shmzone_zone_rollbacks_total`, `shmzone_zone_rollback_words_total` | counter | zone |
/// | `shmzone_zone_journal_overflows_total` | counter | zone |
/// | `shmzone_zone_fenced` | gauge (1: allocations refused until reinit) | zone |
/// | `shmzone_zone_consistent` | gauge (1/0; only for checked zones) | zone |
/// | `shmzone_zone_cache_slots`, `shmzone_zone_cache_bytes` | gauge | zone |
/// | `shmzone_zone_cache_claims_total`, `shmzone_zone_cache_reclaims_total`, `shmzone_zone_cache_pressure_total` | counter | zone |
///
/// Size classes appear once they have pages or requests.
pub fn write_zones(t: &mut PromText, zones: &[ZoneSample]) {
    let z = |s: &ZoneSample| vec![("zone", s.name.clone())];
    let with: Vec<(&ZoneSample, &PoolStats)> = zones
        .iter()
        .filter_map(|s| s.stats.as_ref().map(|st| (s, st)))
        .collect();
    let zs = |p: &(&ZoneSample, &PoolStats)| vec![("zone", p.0.name.clone())];
    t.each(
        "shmzone_zone_size_bytes",
        Kind::Gauge,
        "Zone size in bytes.",
        zones,
        |s| (z(s), s.size as u64),
    );
    t.each(
        "shmzone_zone_pages",
        Kind::Gauge,
        "Data pages in the zone's slab pool.",
        &with,
        |p| (zs(p), p.1.pages_total as u64),
    );
    t.each(
        "shmzone_zone_pages_free",
        Kind::Gauge,
        "Pages on no size class and in no allocation.",
        &with,
        |p| (zs(p), p.1.pages_free as u64),
    );
    t.each(
        "shmzone_zone_largest_free_run_pages",
        Kind::Gauge,
        "The longest run of free pages (the largest allocation possible).",
        &with,
        |p| (zs(p), p.1.largest_free_run as u64),
    );
    t.each(
        "shmzone_zone_bytes_in_use",
        Kind::Gauge,
        "Bytes in live chunks and page runs.",
        &with,
        |p| (zs(p), p.1.bytes_in_use() as u64),
    );
    t.each(
        "shmzone_zone_page_requests_total",
        Kind::Counter,
        "Page-run allocations (larger than the largest size class).",
        &with,
        |p| (zs(p), p.1.page_reqs),
    );
    t.each(
        "shmzone_zone_page_failures_total",
        Kind::Counter,
        "Of those, the ones that failed.",
        &with,
        |p| (zs(p), p.1.page_fails),
    );
    type Pick = fn(&crate::slab::ClassStats) -> u64;
    let classes: [(&str, Kind, &str, Pick); 4] = [
        (
            "shmzone_zone_class_chunks",
            Kind::Gauge,
            "Chunks in the pages a size class holds.",
            |c| c.total,
        ),
        (
            "shmzone_zone_class_chunks_used",
            Kind::Gauge,
            "Chunks in use in a size class.",
            |c| c.used,
        ),
        (
            "shmzone_zone_class_requests_total",
            Kind::Counter,
            "Allocation requests of a size class.",
            |c| c.reqs,
        ),
        (
            "shmzone_zone_class_failures_total",
            Kind::Counter,
            "Failed allocation requests of a size class.",
            |c| c.fails,
        ),
    ];
    for (name, kind, help, pick) in classes {
        t.family(name, kind, help);
        for (s, st) in &with {
            for c in st.classes.iter().filter(|c| c.total > 0 || c.reqs > 0) {
                let size = c.size.to_string();
                t.sample(name, &[("zone", &s.name), ("size", &size)], pick(c));
            }
        }
    }
    t.each(
        "shmzone_zone_lock_holder_pid",
        Kind::Gauge,
        "The pid holding the zone's lock (0: free).",
        zones,
        |s| (z(s), s.lock_holder.unwrap_or(0)),
    );
    t.each(
        "shmzone_zone_lock_recoveries_total",
        Kind::Counter,
        "Zone locks taken back from dead holders.",
        zones,
        |s| (z(s), s.recoveries),
    );
    t.each(
        "shmzone_zone_rollbacks_total",
        Kind::Counter,
        "Sections of dead lock holders rolled back (crash-atomic sections).",
        zones,
        |s| (z(s), s.journal.rollbacks),
    );
    t.each(
        "shmzone_zone_rollback_words_total",
        Kind::Counter,
        "Words restored by those rollbacks.",
        zones,
        |s| (z(s), s.journal.words_undone),
    );
    t.each(
        "shmzone_zone_journal_overflows_total",
        Kind::Counter,
        "Sections that outgrew the journal (should stay 0).",
        zones,
        |s| (z(s), u64::from(s.journal.overflows)),
    );
    t.each(
        "shmzone_zone_cache_slots",
        Kind::Gauge,
        "Threads holding a per-thread chunk cache in the zone.",
        &with,
        |p| (zs(p), p.1.cache.slots as u64),
    );
    t.each(
        "shmzone_zone_cache_bytes",
        Kind::Gauge,
        "Bytes of chunks and page runs sitting in per-thread caches.",
        &with,
        |p| (zs(p), p.1.cache.bytes),
    );
    t.each(
        "shmzone_zone_cache_claims_total",
        Kind::Counter,
        "Per-thread cache slots claimed.",
        &with,
        |p| (zs(p), p.1.cache.claims),
    );
    t.each(
        "shmzone_zone_cache_reclaims_total",
        Kind::Counter,
        "Caches of dead threads and processes returned to the zone.",
        &with,
        |p| (zs(p), p.1.cache.reclaims),
    );
    t.each(
        "shmzone_zone_cache_pressure_total",
        Kind::Counter,
        "Times memory ran short and every cache was asked to flush.",
        &with,
        |p| (zs(p), p.1.cache.pressure),
    );
    t.each(
        "shmzone_zone_fenced",
        Kind::Gauge,
        "1 if the zone is fenced off: still inconsistent after a rollback, allocations refused until reinit.",
        zones,
        |s| (z(s), u8::from(s.journal.fenced)),
    );
    let checked: Vec<&ZoneSample> = zones.iter().filter(|s| s.consistent.is_some()).collect();
    if !checked.is_empty() {
        t.family(
            "shmzone_zone_consistent",
            Kind::Gauge,
            "1 if check() found the zone's pages, bitmaps and lists sound.",
        );
        for s in checked {
            t.sample(
                "shmzone_zone_consistent",
                &[("zone", &s.name)],
                u8::from(s.consistent == Some(true)),
            );
        }
    }
}

/// Writes the `shmzone_dict_*` families for dictionaries (zone name and
/// [`DictStats`]), every one labelled `zone`:
///
/// | family | type |
/// |---|---|
/// | `shmzone_dict_entries`, `shmzone_dict_bytes` | gauge |
/// | `shmzone_dict_capacity_bytes`, `shmzone_dict_free_bytes` | gauge |
/// | `shmzone_dict_{gets,hits,misses,sets,evictions,expirations}_total` | counter |
pub fn write_dicts(t: &mut PromText, dicts: &[(String, DictStats)]) {
    type Get = fn(&DictStats) -> u64;
    let families: [(&str, Kind, &str, Get); 10] = [
        (
            "shmzone_dict_entries",
            Kind::Gauge,
            "Entries stored (expired ones not yet reclaimed included).",
            |s| s.entries,
        ),
        (
            "shmzone_dict_bytes",
            Kind::Gauge,
            "Bytes of keys and values stored.",
            |s| s.bytes,
        ),
        (
            "shmzone_dict_capacity_bytes",
            Kind::Gauge,
            "The dictionary zone's size.",
            |s| s.capacity as u64,
        ),
        (
            "shmzone_dict_free_bytes",
            Kind::Gauge,
            "Bytes of whole free pages in the dictionary's zone.",
            |s| s.free_space as u64,
        ),
        (
            "shmzone_dict_gets_total",
            Kind::Counter,
            "Gets (approximate).",
            |s| s.gets,
        ),
        (
            "shmzone_dict_hits_total",
            Kind::Counter,
            "Gets that found a live value.",
            |s| s.hits,
        ),
        (
            "shmzone_dict_misses_total",
            Kind::Counter,
            "Gets that did not.",
            |s| s.misses,
        ),
        (
            "shmzone_dict_sets_total",
            Kind::Counter,
            "Stores (set, add, replace, incr, cas, push).",
            |s| s.sets,
        ),
        (
            "shmzone_dict_evictions_total",
            Kind::Counter,
            "Live entries evicted to make room.",
            |s| s.evictions,
        ),
        (
            "shmzone_dict_expirations_total",
            Kind::Counter,
            "Expired entries reclaimed.",
            |s| s.expirations,
        ),
    ];
    for (name, kind, help, get) in families {
        t.each(name, kind, help, dicts, |(zone, s)| {
            (vec![("zone", zone.clone())], get(s))
        });
    }
}

/// Writes the `shmzone_ring_*` families for log rings ([`RingStats`]),
/// every one labelled `zone`:
///
/// | family | type |
/// |---|---|
/// | `shmzone_ring_{written,bytes,overwritten,dropped,torn}_total` | counter |
/// | `shmzone_ring_producers` | gauge |
pub fn write_rings(t: &mut PromText, rings: &[RingStats]) {
    type Get = fn(&RingStats) -> u64;
    let families: [(&str, Kind, &str, Get); 6] = [
        (
            "shmzone_ring_written_total",
            Kind::Counter,
            "Records written.",
            |s| s.written,
        ),
        (
            "shmzone_ring_bytes_total",
            Kind::Counter,
            "Payload bytes written.",
            |s| s.bytes,
        ),
        (
            "shmzone_ring_overwritten_total",
            Kind::Counter,
            "Old records overwritten by new ones.",
            |s| s.overwritten,
        ),
        (
            "shmzone_ring_dropped_total",
            Kind::Counter,
            "Records refused as longer than the maximum.",
            |s| s.dropped,
        ),
        (
            "shmzone_ring_torn_total",
            Kind::Counter,
            "Records left half-written by a producer that died.",
            |s| s.torn,
        ),
        (
            "shmzone_ring_producers",
            Kind::Gauge,
            "Slots owned by a producer now.",
            |s| s.producers as u64,
        ),
    ];
    for (name, kind, help, get) in families {
        t.each(name, kind, help, rings, |s| {
            (vec![("zone", s.zone.clone())], get(s))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_labels_and_escaping() {
        let mut t = PromText::new();
        t.family("x_total", Kind::Counter, "a \\ b\nc");
        t.sample("x_total", &[("zone", "a\"b\\c\nd")], 3);
        t.sample("x_total", &[], 4);
        assert_eq!(
            t.finish(),
            "# HELP x_total a \\\\ b\\nc\n# TYPE x_total counter\n\
             x_total{zone=\"a\\\"b\\\\c\\nd\"} 3\nx_total 4\n"
        );
    }

    #[test]
    fn every_sample_belongs_to_the_family_before_it() {
        let zones = crate::Zones::builder()
            .zone("a", 64 << 10)
            .zone("b", 64 << 10)
            .build()
            .unwrap();
        zones.get("a").unwrap().alloc(100).unwrap();
        let s: Vec<ZoneSample> = zones.iter().map(|z| ZoneSample::of(&z)).collect();
        let mut t = PromText::new();
        write_zones(&mut t, &s);
        let text = t.finish();
        assert!(text.contains("shmzone_zone_class_chunks_used{zone=\"a\",size=\"104\"} 1\n"));
        assert!(text.contains("shmzone_zone_class_requests_total{zone=\"a\",size=\"104\"} 1\n"));
        assert!(text.contains("shmzone_zone_lock_holder_pid{zone=\"b\"} 0\n"));
        let mut family = String::new();
        let mut seen = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap().to_string();
                assert!(seen.insert(family.clone()), "{family} twice");
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(name, family);
            }
        }
    }

    #[test]
    fn dict_and_ring_families() {
        let mut t = PromText::new();
        let d = DictStats {
            entries: 3,
            capacity: 1 << 20,
            evictions: 2,
            ..DictStats::default()
        };
        write_dicts(&mut t, &[("kv".to_string(), d)]);
        let r = RingStats {
            zone: "log".to_string(),
            written: 7,
            producers: 2,
            ..RingStats::default()
        };
        write_rings(&mut t, &[r]);
        let text = t.finish();
        for line in [
            "shmzone_dict_entries{zone=\"kv\"} 3\n",
            "shmzone_dict_capacity_bytes{zone=\"kv\"} 1048576\n",
            "shmzone_dict_evictions_total{zone=\"kv\"} 2\n",
            "# TYPE shmzone_dict_sets_total counter\n",
            "shmzone_ring_written_total{zone=\"log\"} 7\n",
            "shmzone_ring_producers{zone=\"log\"} 2\n",
            "# TYPE shmzone_ring_producers gauge\n",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
