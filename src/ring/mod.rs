//! A log ring in a zone: worker processes write records, any number of
//! readers (in any process, even after the server died) read them, and
//! nothing is lost silently.
//!
//! ```
//! use shmzone::ring::{Ring, RingConfig, Start};
//! use shmzone::Zones;
//!
//! let cfg = RingConfig::default();
//! let zones = Zones::builder().zone("access_log", cfg.zone_size()).build()?;
//! let zone = zones.get("access_log").unwrap();
//! let ring = Ring::create(&zone, &cfg)?;
//! // A reader that starts at the newest record (in any process).
//! let mut reader = ring.reader(Start::Newest);
//! // In a worker: claim a slot once, then write records.
//! let mut log = ring.producer()?;
//! log.write(b"GET /hit 200")?;
//! let rec = reader.next_record()?.expect("one record");
//! assert_eq!(rec.data, b"GET /hit 200");
//! assert_eq!(rec.pid, std::process::id());
//! assert_eq!(reader.lost(), 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Design
//!
//! A ring is a set of **slots**, each a single-producer ring buffer (the
//! design of lttng's per-process buffers and Varnish's log). A worker
//! claims a free slot with a compare-and-swap of its pid into the slot's
//! owner word, or takes over a slot whose owner is dead; from then on it is
//! the slot's only writer, so a producer never takes a lock and never waits
//! for another process. A reader walks every slot with its own cursor, kept
//! in its own process; readers never write to shared memory, so they never
//! slow a producer (beyond sharing cache lines).
//!
//! **Records.** Up to [`RingConfig::max_record`] bytes of payload after a
//! 16-byte header (24 with a time): payload length and the producer's pid
//! in one word, then the slot's sequence number xor a key (a hash of the
//! first word, the time and the record's position), then the time if the
//! record has one (`CLOCK_REALTIME` in ns since the Unix epoch, read through
//! `std::time::SystemTime`; no time word when the ring does not stamp). A
//! reader takes a header as a record's only if the sequence number it
//! decodes to is the one it expects next, or else one the slot gave out in
//! its last lap (below the slot's `next_seq`): memory that is not a record
//! (garbage, an older lap, the wrong place) passes with odds of about
//! `slot_bytes / 2^68`. The payload is padded to 8 bytes: a 64-byte record
//! takes 80 bytes. Sequence numbers count per slot and continue across the
//! producers that use a slot one after the other.
//!
//! **Publishing.** A producer first stores the slot's `claim` (the end of
//! the record it is about to write), then writes the record's words, then
//! stores `head` (the end of the last complete record) with release.
//! Readers read only below `head`, so a record cut short by a `SIGKILL` is
//! never seen: the slot's next producer starts again at `head`, writing
//! over the torn bytes, and its sequence number is counted as lost.
//!
//! **Full ring: the oldest records are overwritten**, never the newest
//! dropped, and a producer never blocks. The producer moves the slot's
//! `tail` (its oldest intact record) past what it is about to overwrite,
//! an eighth of the slot at a time (so a slot holds between 7/8 and all of
//! its size in records), and counts those records (`overwritten`). It jumps
//! to record starts it remembers in its own memory, one per eighth; only
//! after taking a slot over does it walk the old records' headers. A reader copies records (up to
//! [`BATCH_BYTES`] at a time, into its own memory) and then
//! re-reads `claim` (seqlock-style): if the producer has claimed past the
//! copied bytes by a whole lap, the copy is discarded and the reader jumps to
//! `tail`; the records it missed show up as a gap in the sequence numbers,
//! counted in [`Reader::lost`]. A reader whose cursor the tail passed
//! while the bytes there were not written over yet (the tail runs up to an
//! eighth of the slot ahead of the writing) goes on from its cursor, if it
//! knows the sequence number due there: the same claim check decides, so
//! a reader can fall nearly a whole slot behind without losing anything,
//! not only 7/8 of it. A reader lapped on every try of a refill
//! jumps to the slot's `mark`, a complete record the producer publishes
//! once every eighth of the slot, so there is always a record after the
//! jump whose sequence number counts what was skipped (even if the producer
//! then stops). A reader is never handed a torn record.
//!
//! **Bounds.** Every position read from shared memory is reduced by the
//! slot's mask before use and checked against the others (`tail <= head <=
//! claim`, no more than one lap apart), every record header is checked
//! through its keyed sequence number, and every loop is bounded by the slot's size: corrupted memory
//! gives [`RingError::Corrupt`] or [`RingError::BadRing`], never a hang, a
//! read outside the ring or a panic.
//!
//! **Where it lives.** [`Ring::create`] allocates the ring in a zone and
//! stores its header's offset in the zone's root; [`Ring::open`] finds it
//! there by zone, in any process that mapped the region (forked workers, an
//! unrelated process after [`Zones::attach`](crate::Zones::attach), a
//! reader after the server died), since everything in it is an offset.
//! Records live in the slots' memory only: after the last process unmaps
//! an anonymous region they are gone; a POSIX or file region keeps them.
//!
//! A slot whose owner died stays owned until a producer takes it over (the
//! pid is checked with `kill(pid, 0)`); [`Ring::release_slots_of`] frees a
//! dead worker's slots at once, so a reused pid cannot keep them.

mod batch;
mod error;
mod layout;
mod marks;
mod producer;
mod reader;
mod refill;
mod stats;

use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

pub use error::RingError;
pub use producer::Producer;
pub use reader::{Reader, ReaderStats, Record, Start, BATCH_BYTES};
pub use stats::{RingStats, SlotStats};

use layout::{Geometry, RingHdr, SlotHdr, F_STAMP, MAGIC, REC_HDR_STAMPED, VERSION};

use crate::zone::{Zone, Zones};

/// The tag [`Ring::get_or_create`] gives the zones it makes ("ring").
pub const RING_TAG: u64 = 0x7269_6e67;
/// The most slots a ring can have.
pub const MAX_SLOTS: usize = 1024;
/// The smallest slot, in bytes.
pub const MIN_SLOT_BYTES: usize = 4096;
/// The largest slot, in bytes.
pub const MAX_SLOT_BYTES: usize = 1 << 30;
/// The largest record maximum a ring can be made with.
pub const MAX_RECORD_LIMIT: usize = 1 << 20;
/// Bytes of a record's header in the ring, at most: length and pid, keyed
/// sequence, time (a record without a time has no time word: 16 bytes).
pub const RECORD_HEADER: usize = REC_HDR_STAMPED as usize;

/// How to make a ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingConfig {
    /// Producer slots: at most this many processes write at once (default
    /// 16, at most [`MAX_SLOTS`]).
    pub slots: usize,
    /// Bytes of records each slot holds before overwriting its oldest: a
    /// power of two, [`MIN_SLOT_BYTES`]..=[`MAX_SLOT_BYTES`] (default
    /// 256 KiB).
    pub slot_bytes: usize,
    /// The longest record payload, in bytes: 1..=[`MAX_RECORD_LIMIT`] and
    /// at most a quarter of a slot minus the record header (default 4096).
    pub max_record: usize,
    /// Whether producers stamp records with the time (default true; a
    /// clock read costs about 20 ns per record).
    pub timestamps: bool,
}

impl Default for RingConfig {
    fn default() -> RingConfig {
        RingConfig {
            slots: 16,
            slot_bytes: 256 << 10,
            max_record: 4096,
            timestamps: true,
        }
    }
}

impl RingConfig {
    /// Checks the bounds documented on the fields.
    ///
    /// # Errors
    /// [`RingError::BadConfig`] naming the field.
    pub fn validate(&self) -> Result<(), RingError> {
        let bad = |reason: String| Err(RingError::BadConfig { reason });
        if self.slots == 0 || self.slots > MAX_SLOTS {
            return bad(format!("slots {} is not 1..={MAX_SLOTS}", self.slots));
        }
        if !self.slot_bytes.is_power_of_two()
            || !(MIN_SLOT_BYTES..=MAX_SLOT_BYTES).contains(&self.slot_bytes)
        {
            return bad(format!(
                "slot_bytes {} is not a power of two in {MIN_SLOT_BYTES}..={MAX_SLOT_BYTES}",
                self.slot_bytes
            ));
        }
        let most = (self.slot_bytes / 4 - RECORD_HEADER).min(MAX_RECORD_LIMIT);
        if self.max_record == 0 || self.max_record > most {
            return bad(format!(
                "max_record {} is not 1..={most} (a quarter of a slot, at most {MAX_RECORD_LIMIT})",
                self.max_record
            ));
        }
        Ok(())
    }

    /// Bytes of the headers before the data (whole 4 KiB pages).
    fn meta_bytes(&self) -> usize {
        let raw = self
            .slots
            .saturating_mul(std::mem::size_of::<SlotHdr>())
            .saturating_add(std::mem::size_of::<RingHdr>());
        raw.div_ceil(4096).saturating_mul(4096)
    }

    /// Bytes of the one allocation the ring takes in its zone.
    pub fn ring_bytes(&self) -> usize {
        self.meta_bytes()
            .saturating_add(self.slots.saturating_mul(self.slot_bytes))
    }

    /// A zone size that holds this ring: [`ring_bytes`](Self::ring_bytes)
    /// plus the slab's page descriptors and headers.
    pub fn zone_size(&self) -> usize {
        let ring = self.ring_bytes();
        ring.saturating_add(ring / 64).saturating_add(64 << 10)
    }
}

/// A handle on a ring in a zone, in this process. Cheap to copy.
#[derive(Clone, Copy)]
pub struct Ring<'a> {
    zone: Zone<'a>,
    /// The zone's first byte in this process.
    base: NonNull<u8>,
    geo: Geometry,
}

impl fmt::Debug for Ring<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("zone", &self.zone.name())
            .field("slots", &self.geo.nslots)
            .field("slot_bytes", &self.geo.slot_bytes)
            .field("max_record", &self.geo.max_record)
            .finish()
    }
}

impl<'a> Ring<'a> {
    /// Makes a ring in `zone` (which must have no root yet) and stores its
    /// offset in the zone's root. Call it where the zone is made: in the
    /// master before fork, in a zone init callback, or through
    /// [`Ring::get_or_create`].
    ///
    /// # Errors
    /// A bad `cfg`, a zone that already has a root, or no room.
    pub fn create(zone: &Zone<'a>, cfg: &RingConfig) -> Result<Ring<'a>, RingError> {
        cfg.validate()?;
        let name = || zone.name().to_string();
        if zone.root() != 0 {
            return Err(RingError::RootTaken { zone: name() });
        }
        let need = cfg.ring_bytes();
        let p = zone
            .calloc(need)
            .ok_or(RingError::NoRoom { zone: name(), need })?;
        let block_off = zone
            .offset_of(p.as_ptr())
            .expect("an allocation of the zone") as u64;
        let geo = Geometry {
            nslots: cfg.slots as u32,
            slot_bytes: cfg.slot_bytes as u64,
            max_record: cfg.max_record as u32,
            flags: if cfg.timestamps { F_STAMP } else { 0 },
            slots_off: block_off + std::mem::size_of::<RingHdr>() as u64,
            data_off: block_off + cfg.meta_bytes() as u64,
            block_off,
        };
        let hdr = p.as_ptr().cast::<RingHdr>();
        // SAFETY: `p` is a fresh, zeroed allocation of `need` bytes, page
        // aligned (it is larger than half a page, so a page run), which is
        // more than the header's size and alignment; no other process knows
        // of it until the root is set below.
        unsafe {
            std::ptr::addr_of_mut!((*hdr).version).write(VERSION);
            std::ptr::addr_of_mut!((*hdr).nslots).write(geo.nslots);
            std::ptr::addr_of_mut!((*hdr).slot_bytes).write(geo.slot_bytes);
            std::ptr::addr_of_mut!((*hdr).max_record).write(geo.max_record);
            std::ptr::addr_of_mut!((*hdr).flags).write(geo.flags);
            std::ptr::addr_of_mut!((*hdr).slots_off).write(geo.slots_off);
            std::ptr::addr_of_mut!((*hdr).data_off).write(geo.data_off);
            std::ptr::addr_of_mut!((*hdr).block_off).write(geo.block_off);
            std::ptr::addr_of_mut!((*hdr).check).write(geo.check(VERSION));
            // The magic last: a half-made ring never opens.
            (*hdr).magic.store(MAGIC, Ordering::Release);
        }
        zone.set_root(block_off as usize);
        Ring::open(zone)
    }

    /// The ring whose header the zone's root points at, validated: magic,
    /// layout version, check word, and every offset and size inside the
    /// zone.
    ///
    /// # Errors
    /// [`RingError::NoRing`] if the zone's root is 0, [`RingError::BadRing`]
    /// naming the zone and what is wrong otherwise.
    pub fn open(zone: &Zone<'a>) -> Result<Ring<'a>, RingError> {
        let bad = |reason: String| {
            Err(RingError::BadRing {
                zone: zone.name().to_string(),
                reason,
            })
        };
        let root = zone.root();
        if root == 0 {
            return Err(RingError::NoRing {
                zone: zone.name().to_string(),
            });
        }
        let Some(hdr) = zone.value_at::<RingHdr>(root) else {
            return bad(format!(
                "root offset {root} is outside the zone or misaligned"
            ));
        };
        let hdr = hdr.as_ptr();
        // SAFETY: `value_at` checked that a whole, aligned RingHdr lies
        // inside the zone, which stays mapped while `zone` lives; the magic
        // is an atomic.
        let magic = unsafe { (*hdr).magic.load(Ordering::Acquire) };
        if magic != MAGIC {
            return bad(format!("no ring magic at root offset {root}"));
        }
        // SAFETY: as above; the other fields are plain words written before
        // the magic was published, read without forming a reference.
        let (version, geo, check) = unsafe {
            (
                std::ptr::addr_of!((*hdr).version).read_volatile(),
                Geometry {
                    nslots: std::ptr::addr_of!((*hdr).nslots).read_volatile(),
                    slot_bytes: std::ptr::addr_of!((*hdr).slot_bytes).read_volatile(),
                    max_record: std::ptr::addr_of!((*hdr).max_record).read_volatile(),
                    flags: std::ptr::addr_of!((*hdr).flags).read_volatile(),
                    slots_off: std::ptr::addr_of!((*hdr).slots_off).read_volatile(),
                    data_off: std::ptr::addr_of!((*hdr).data_off).read_volatile(),
                    block_off: std::ptr::addr_of!((*hdr).block_off).read_volatile(),
                },
                std::ptr::addr_of!((*hdr).check).read_volatile(),
            )
        };
        if version != VERSION {
            return bad(format!(
                "ring layout version {version}, this build reads {VERSION}"
            ));
        }
        if check != geo.check(version) {
            return bad("the ring header's check word does not match".into());
        }
        if let Err(reason) = validate_geometry(&geo, root as u64, zone.size() as u64) {
            return bad(reason);
        }
        let base = zone.ptr_at(0).expect("a zone is never empty");
        Ok(Ring {
            zone: *zone,
            base,
            geo,
        })
    }

    /// The ring in zone `name` of `zones`, making the zone (sized with
    /// [`RingConfig::zone_size`], tagged [`RING_TAG`]) and the ring if the
    /// zone does not exist yet. Any process may call it; two racing make
    /// one ring.
    ///
    /// ```
    /// use shmzone::ring::{Ring, RingConfig};
    /// let zones = shmzone::Zones::builder().slack(8 << 20).build()?;
    /// let ring = Ring::get_or_create(&zones, "access_log", &RingConfig::default())?;
    /// ring.producer()?.write(b"hello")?;
    /// let again = Ring::get_or_create(&zones, "access_log", &RingConfig::default())?;
    /// assert_eq!(again.stats().written, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`Zones::get_or_create_with`] and [`Ring::create`]; a zone of
    /// that name made for something else is a tag or size conflict.
    pub fn get_or_create(
        zones: &'a Zones,
        name: &str,
        cfg: &RingConfig,
    ) -> Result<Ring<'a>, RingError> {
        cfg.validate()?;
        let zone = zones.get_or_create_with(name, cfg.zone_size(), RING_TAG, |z| {
            Ring::create(z, cfg).map(|_| ()).map_err(crate::Error::from)
        })?;
        Ring::open(&zone)
    }

    /// The ring in zone `name` of `zones` (a reader's or an inspector's
    /// way in: [`Zones::get`] then [`Ring::open`]).
    ///
    /// # Errors
    /// [`RingError::Zone`] with [`crate::Error::NoSuchZone`] if there is no
    /// such zone, else as [`Ring::open`].
    pub fn find(zones: &'a Zones, name: &str) -> Result<Ring<'a>, RingError> {
        let zone = zones.get(name).ok_or_else(|| {
            RingError::Zone(crate::Error::NoSuchZone {
                name: name.to_string(),
            })
        })?;
        Ring::open(&zone)
    }

    /// The zone the ring lives in.
    pub fn zone(&self) -> &Zone<'a> {
        &self.zone
    }

    /// How many producer slots the ring has.
    pub fn slots(&self) -> usize {
        self.geo.nslots as usize
    }

    /// Bytes of records each slot holds.
    pub fn slot_bytes(&self) -> usize {
        self.geo.slot_bytes as usize
    }

    /// The longest record payload.
    pub fn max_record(&self) -> usize {
        self.geo.max_record as usize
    }

    /// Whether producers stamp records with the time.
    pub fn timestamps(&self) -> bool {
        self.geo.flags & F_STAMP != 0
    }

    /// Claims a producer slot for this process: a free one, else one whose
    /// owner is dead (taking over its torn last record, if any). The
    /// slot's pages are mapped into this process now (Linux 5.14 and
    /// later: `MADV_POPULATE_WRITE`), so that `write` takes no page fault
    /// in the slot's first lap.
    ///
    /// # Errors
    /// [`RingError::NoFreeSlot`] when every slot's owner is alive.
    pub fn producer(&self) -> Result<Producer<'a>, RingError> {
        Producer::claim(*self)
    }

    /// A reader starting at the oldest record each slot still holds, or at
    /// the newest (only records written from now on). Every slot's pages
    /// are mapped into this process now (`MADV_POPULATE_READ`, Linux 5.14
    /// and later), so that a reader following a producer takes no page
    /// fault per 4 KiB on its first pass: make a reader in the process
    /// that reads with it (one made before a `fork` maps them into the
    /// parent only; it still works in the child, page faults and all).
    pub fn reader(&self, start: Start) -> Reader<'a> {
        Reader::new(*self, start)
    }

    /// Frees every slot owned by `pid` (a master calls it for a worker it
    /// has seen die, before reaping it, so a reused pid cannot hold the
    /// slots); returns how many. A live `pid`'s slots are left alone.
    pub fn release_slots_of(&self, pid: u32) -> usize {
        if pid == 0 || crate::os::process::pid_alive(pid) {
            return 0;
        }
        (0..self.slots())
            .filter(|&i| {
                self.slot(i)
                    .owner
                    .compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            })
            .count()
    }

    /// Every slot's counters and positions, read without a lock (each
    /// counter is exact; together they are a moment's view).
    ///
    /// ```
    /// use shmzone::ring::{Ring, RingConfig};
    /// let cfg = RingConfig { max_record: 8, ..RingConfig::default() };
    /// let zones = shmzone::Zones::builder().zone("log", cfg.zone_size()).build()?;
    /// let ring = Ring::create(&zones.get("log").unwrap(), &cfg)?;
    /// let mut p = ring.producer()?;
    /// p.write(b"12345678")?;
    /// assert!(p.write(b"123456789").is_err()); // over max_record: dropped
    /// let st = ring.stats();
    /// assert_eq!((st.written, st.bytes, st.dropped, st.producers), (1, 8, 1, 1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> RingStats {
        RingStats::collect(self)
    }

    /// Slot `i`'s header (`i < slots()`).
    pub(crate) fn slot(&self, i: usize) -> &'a SlotHdr {
        assert!(i < self.slots());
        let off = self.geo.slots_off as usize + i * std::mem::size_of::<SlotHdr>();
        // SAFETY: `open` checked that every slot header lies inside the
        // zone, aligned; the zone stays mapped for 'a; SlotHdr holds only
        // atomics (and padding), so a shared reference is sound.
        unsafe { &*self.base.as_ptr().add(off).cast::<SlotHdr>() }
    }

    /// Slot `i`'s data words (`i < slots()`); index with `& mask`.
    pub(crate) fn data(&self, i: usize) -> &'a [AtomicU64] {
        assert!(i < self.slots());
        let off = self.geo.data_off as usize + i * self.slot_bytes();
        // SAFETY: `open` checked that every slot's data lies inside the
        // zone, 8-aligned; the zone stays mapped for 'a; the words are only
        // ever accessed as atomics.
        unsafe {
            std::slice::from_raw_parts(
                self.base.as_ptr().add(off).cast::<AtomicU64>(),
                self.slot_bytes() / 8,
            )
        }
    }

    pub(crate) fn geo(&self) -> &Geometry {
        &self.geo
    }
}

/// Checks that a ring header's fields describe a ring inside a zone of
/// `zone_len` bytes whose header is at `root`.
fn validate_geometry(g: &Geometry, root: u64, zone_len: u64) -> Result<(), String> {
    let cfg = RingConfig {
        slots: g.nslots as usize,
        slot_bytes: usize::try_from(g.slot_bytes).unwrap_or(0),
        max_record: g.max_record as usize,
        timestamps: false,
    };
    cfg.validate().map_err(|e| match e {
        RingError::BadConfig { reason } => reason,
        e => e.to_string(),
    })?;
    if g.block_off != root {
        return Err(format!(
            "the header says it is at offset {}, the root says {root}",
            g.block_off
        ));
    }
    let slots_len = g.nslots as u64 * std::mem::size_of::<SlotHdr>() as u64;
    let data_len = g.nslots as u64 * g.slot_bytes;
    let ok = g.slots_off == root + std::mem::size_of::<RingHdr>() as u64
        && g.slots_off.saturating_add(slots_len) <= g.data_off
        && g.data_off % 64 == 0
        && g.data_off
            .checked_add(data_len)
            .is_some_and(|end| end <= zone_len);
    if !ok {
        return Err(format!(
            "slot headers at {}, data at {} + {data_len} do not fit a zone of {zone_len} bytes",
            g.slots_off, g.data_off
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
