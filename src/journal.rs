//! Crash-atomic sections: an undo journal that lives beside a lock.
//!
//! A worker can be SIGKILLed at any instruction, also inside a locked
//! section. Every write that a section makes to shared state goes through
//! the journal first: the journal appends *(where, old bytes)* to a record
//! area in shared memory, publishes the new length with one store, and only
//! then is the write made. A clean unlock empties the journal with one
//! store (commit). A process that takes a lock over from a dead holder finds
//! the journal non-empty and undoes the records newest first: the dead
//! holder's section is rolled back as a whole, so every section is
//! all-or-nothing. Memory taken fresh inside a section (a chunk just
//! allocated) needs no record: undoing its allocation makes its bytes
//! irrelevant.
//!
//! This layer knows nothing of slabs, zones or processes: its owner (a slab
//! pool) places a [`JournalHeader`] and a record area in shared memory and
//! tells each process's [`Journal`] handle which byte range
//! ([`Journal::new`]'s `origin` and `span`) records may name. Every record
//! is checked against that range again before it is undone, so a journal
//! that garbage was written over undoes nothing outside it.
//!
//! # The shared words
//!
//! | word | meaning |
//! |---|---|
//! | `used` | words of records in the open section; `0`: no section open |
//! | `fenced` | non-zero: the state this journal guards failed its check after a rollback; its owner refuses to use it until it is re-initialised |
//! | `cap` | the record area's length, in words (fixed at init) |
//! | `overflow` | sections that outgrew the record area (a bug in a budget: such a section was not crash-atomic), counted |
//! | `rollbacks` | rollbacks begun; bumped *before* any byte is undone, so an optimistic reader that saw the same value before and after its read knows no rollback ran meanwhile |
//! | `last_words`, `last_pid` | the last rollback's size and the holder it undid |
//! | `undone` | words undone over all rollbacks |
//!
//! # Records
//!
//! A record starts with a header word: bits 48..64 the length of the saved
//! bytes (1..=[`MAX_RECORD`]), or `FILL` for a fill record; bits 0..48 the
//! offset from `origin`. A bytes record is followed by the old bytes, padded
//! to whole words. A fill record says "`count` items of `stride` bytes, all
//! equal to this pattern, start here" in three or four words: the
//! header, `count << 8 | stride`, and the pattern (`stride` is 8 or 16).
//!
//! # Ordering
//!
//! The record's words are stored before `used`, and `used` before the
//! write the record covers, with compiler fences in between: a SIGKILL
//! stops a process between two instructions, and the stores it already
//! made reach memory in program order as far as the process that later
//! sees its death is concerned (the death is observed through the kernel,
//! which orders everything before it). The ordering needed is the
//! compiler's, not the CPU's.

use std::fmt;
use std::sync::atomic::{compiler_fence, AtomicU32, AtomicU64, Ordering};

use static_assertions::{assert_eq_size, const_assert_eq};

use crate::killpoint;

/// The most bytes one bytes record saves.
pub const MAX_RECORD: usize = 0x7fff;
/// Header length value that marks a fill record.
const FILL: u64 = 0xffff;
const OFF_MASK: u64 = (1 << 48) - 1;
/// The most records one rollback walks (each record is at least two words).
const MAX_WORDS: usize = 1 << 16;

/// The journal's shared words, on a cache line of their own.
#[repr(C, align(64))]
pub struct JournalHeader {
    used: AtomicU32,
    fenced: AtomicU32,
    cap: u32,
    overflow: AtomicU32,
    rollbacks: AtomicU64,
    last_words: AtomicU32,
    last_pid: AtomicU32,
    undone: AtomicU64,
    fence_logged: AtomicU32,
    _pad: [u32; 5],
}

assert_eq_size!(JournalHeader, [u8; 64]);
const_assert_eq!(std::mem::align_of::<JournalHeader>(), 64);

impl JournalHeader {
    /// An empty journal whose record area holds `cap` words.
    pub const fn new(cap: u32) -> JournalHeader {
        JournalHeader {
            used: AtomicU32::new(0),
            fenced: AtomicU32::new(0),
            cap,
            overflow: AtomicU32::new(0),
            rollbacks: AtomicU64::new(0),
            last_words: AtomicU32::new(0),
            last_pid: AtomicU32::new(0),
            undone: AtomicU64::new(0),
            fence_logged: AtomicU32::new(0),
            _pad: [0; 5],
        }
    }

    /// The record area's capacity in words, as recorded at init.
    pub fn cap(&self) -> u32 {
        self.cap
    }
}

/// The owner's fast append for its own writes: a record of the `W`
/// words at `dst` at word `*at` of the record area `recs`, where `*at` is
/// the caller's copy of `used` (read once per operation) and offsets are
/// from `anchor` (the same anchor as the owner's [`Journal`] handle).
/// Returns false, recording nothing, when the record does not fit.
///
/// # Safety
/// The caller holds the lock; `recs` is `hdr`'s record area; `dst..dst+W`
/// words are readable, 8-aligned and inside the journal's range; `*at` is
/// the current `used`.
#[inline(always)]
pub(crate) unsafe fn record_words<const W: usize>(
    hdr: &JournalHeader,
    recs: *mut u64,
    anchor: *const u8,
    at: &mut u32,
    dst: *const u64,
) -> bool {
    killpoint::point();
    let used = *at as usize;
    if used + 1 + W > hdr.cap as usize {
        return false;
    }
    let off = ((dst as usize).wrapping_sub(anchor as usize) as u64) & OFF_MASK;
    // SAFETY: `used + 1 + W <= cap`: inside the record area; `dst` is
    // readable for W words (caller).
    unsafe {
        let r = recs.add(used);
        for k in 0..W {
            r.add(1 + k).write(dst.add(k).read());
        }
        r.write(((W as u64 * 8) << 48) | off);
    }
    *at = (used + 1 + W) as u32;
    compiler_fence(Ordering::Release);
    hdr.used.store(*at, Ordering::Relaxed);
    compiler_fence(Ordering::Release);
    true
}

/// What one rollback undid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Rollback {
    /// Records undone.
    pub records: u32,
    /// Bytes of shared state restored.
    pub bytes: u64,
    /// Words of journal the dead holder's section had written.
    pub words: u32,
    /// The journal itself was damaged: records after the first bad one
    /// were not undone (the owner should check, and fence if broken).
    pub corrupt: bool,
}

/// Counters of a journal, for stats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct JournalStats {
    /// Rollbacks of dead holders' sections so far.
    pub rollbacks: u64,
    /// Words undone over all rollbacks.
    pub words_undone: u64,
    /// The pid whose section the last rollback undid (0: none yet).
    pub last_pid: u32,
    /// The record area's size in bytes.
    pub capacity: usize,
    /// Sections that outgrew the record area (should stay 0).
    pub overflows: u32,
    /// The guarded state is fenced off.
    pub fenced: bool,
}

/// A record did not fit in what is left of the journal: nothing was
/// recorded and nothing may be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalFull {
    /// Bytes the record needed (header included).
    pub needed: usize,
    /// Bytes that were left.
    pub left: usize,
}

impl fmt::Display for JournalFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the section's undo journal is full ({} bytes needed, {} left): \
             commit (unlock) before writing more",
            self.needed, self.left
        )
    }
}

impl std::error::Error for JournalFull {}

/// A process's handle on one journal: where its header, its records and
/// the range its records may name are in this process.
#[derive(Clone, Copy)]
pub(crate) struct Journal {
    hdr: *const JournalHeader,
    recs: *mut u64,
    cap: u32,
    /// Records name offsets from here, in `-lo..hi`.
    anchor: *mut u8,
    lo: usize,
    hi: usize,
}

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Journal")
            .field("used", &self.used())
            .field("cap", &self.cap)
            .field("lo", &self.lo)
            .field("hi", &self.hi)
            .finish()
    }
}

impl Journal {
    /// A handle.
    ///
    /// # Safety
    /// `hdr` points to an initialised header, valid while the handle is
    /// used; `recs` to `cap` writable, 8-aligned words that nothing else
    /// uses; `anchor - lo..anchor + hi` is writable memory whose bytes are
    /// only written by holders of the lock this journal belongs to (records
    /// may name any of it). `cap <= hdr.cap`.
    #[inline]
    pub unsafe fn new(
        hdr: *const JournalHeader,
        recs: *mut u64,
        cap: u32,
        anchor: *mut u8,
        lo: usize,
        hi: usize,
    ) -> Journal {
        Journal {
            hdr,
            recs,
            cap,
            anchor,
            lo,
            hi,
        }
    }

    #[inline]
    fn h(&self) -> &JournalHeader {
        // SAFETY: `new`'s contract: valid while the handle is used.
        unsafe { &*self.hdr }
    }

    /// Words in use by the open section (0: none open).
    #[inline]
    pub fn used(&self) -> u32 {
        self.h().used.load(Ordering::Relaxed)
    }

    /// Whether the lock holder must look at the journal before using the
    /// state: a section left open (its holder died) or a fence.
    #[inline]
    pub fn needs_attention(&self) -> bool {
        let h = self.h();
        (h.used.load(Ordering::Relaxed) | h.fenced.load(Ordering::Relaxed)) != 0
    }

    /// The record area's capacity in words.
    #[inline]
    pub fn cap(&self) -> u32 {
        self.cap
    }

    /// Bytes left for records in the open section.
    #[inline]
    pub fn room(&self) -> usize {
        (self.cap.saturating_sub(self.used()) as usize) * 8
    }

    /// Whether `words` more words fit.
    #[inline]
    pub fn fits(&self, words: u32) -> bool {
        self.used().saturating_add(words) <= self.cap
    }

    /// The offset of `dst..dst+n` from `anchor`, as a record stores it
    /// (48-bit two's complement), if the range is inside `-lo..hi`.
    #[inline]
    fn offset_of(&self, dst: *const u8, n: usize) -> Option<u64> {
        let from_lo = (dst as usize)
            .wrapping_sub(self.anchor as usize)
            .wrapping_add(self.lo);
        let span = self.lo + self.hi;
        (from_lo <= span && n <= span - from_lo)
            .then(|| (from_lo.wrapping_sub(self.lo) as u64) & OFF_MASK)
    }

    /// The address a record's offset names (not checked).
    #[inline]
    fn target(&self, off: u64) -> *mut u8 {
        // Sign-extend 48 bits.
        let signed = ((off << 16) as i64) >> 16;
        self.anchor.wrapping_offset(signed as isize)
    }

    /// Appends a record of the `n` bytes at `dst` as they are now.
    ///
    /// # Safety
    /// The caller holds the journal's lock, and `dst..dst+n` is readable.
    ///
    /// # Errors
    /// [`JournalFull`] when the record does not fit; an out-of-range `dst`
    /// also gives it (with `left` 0): nothing is recorded then.
    #[inline]
    pub unsafe fn record(&self, dst: *const u8, n: usize) -> Result<(), JournalFull> {
        killpoint::point();
        let words = 1 + n.div_ceil(8);
        let used = self.used() as usize;
        let off = match self.offset_of(dst, n) {
            Some(off) if n != 0 && n <= MAX_RECORD && used + words <= self.cap as usize => off,
            _ => return Err(self.full(words, n, dst)),
        };
        // SAFETY: `used + words <= cap`, so the words are in the record
        // area; `dst..dst+n` is readable (caller) and inside the span.
        unsafe {
            let r = self.recs.add(used);
            if n == 8 && dst as usize % 8 == 0 {
                r.add(1).write(dst.cast::<u64>().read());
            } else {
                r.add(words - 1).write(0);
                std::ptr::copy_nonoverlapping(dst, r.add(1).cast::<u8>(), n);
            }
            r.write(((n as u64) << 48) | off);
        }
        self.publish(used + words);
        Ok(())
    }

    /// Appends a record saying that `count` items of `pattern.len() * 8`
    /// bytes starting at `dst` all hold `pattern` now (cheaper than saving
    /// them one by one). The caller guarantees they do.
    ///
    /// # Safety
    /// As [`Journal::record`]; `pattern` has 1 or 2 words.
    ///
    /// # Errors
    /// As [`Journal::record`].
    pub unsafe fn record_fill(
        &self,
        dst: *const u8,
        count: usize,
        pattern: &[u64],
    ) -> Result<(), JournalFull> {
        killpoint::point();
        let stride = pattern.len() * 8;
        let words = 2 + pattern.len();
        let used = self.used() as usize;
        let n = count.saturating_mul(stride);
        let off = match self.offset_of(dst, n) {
            Some(off)
                if (1..=2).contains(&pattern.len())
                    && count != 0
                    && count < 1 << 48
                    && used + words <= self.cap as usize =>
            {
                off
            }
            _ => return Err(self.full(words, n, dst)),
        };
        // SAFETY: the words are inside the record area (checked above).
        unsafe {
            let r = self.recs.add(used);
            r.add(1).write(((count as u64) << 8) | stride as u64);
            for (i, &w) in pattern.iter().enumerate() {
                r.add(2 + i).write(w);
            }
            r.write((FILL << 48) | off);
        }
        self.publish(used + words);
        Ok(())
    }

    #[cold]
    fn full(&self, words: usize, n: usize, dst: *const u8) -> JournalFull {
        let left = self.room();
        if self.offset_of(dst, n).is_none() {
            log::error!(
                "journal: a write of {n} bytes at {dst:p} is outside the guarded range; refused"
            );
            return JournalFull {
                needed: words * 8,
                left: 0,
            };
        }
        JournalFull {
            needed: words * 8,
            left,
        }
    }

    /// Counts a section that outgrew the journal (a budget bug).
    #[cold]
    pub fn overflowed(&self) {
        let n = self.h().overflow.fetch_add(1, Ordering::Relaxed);
        if n == 0 {
            log::error!("journal: a section outgrew its undo journal; it was not crash-atomic");
        }
    }

    #[inline]
    fn publish(&self, used: usize) {
        compiler_fence(Ordering::Release);
        self.h().used.store(used as u32, Ordering::Relaxed);
        compiler_fence(Ordering::Release);
    }

    /// Ends the open section: its writes stand.
    #[inline]
    pub fn commit(&self) {
        let h = self.h();
        if h.used.load(Ordering::Relaxed) != 0 {
            killpoint::point();
            compiler_fence(Ordering::Release);
            h.used.store(0, Ordering::Relaxed);
            compiler_fence(Ordering::Release);
            killpoint::point();
        }
    }

    /// Where the open section is now, to undo back to with
    /// [`Journal::rollback_to`].
    #[inline]
    pub fn savepoint(&self) -> u32 {
        self.used()
    }

    /// Undoes the records after `savepoint` (newest first) and drops them.
    ///
    /// # Safety
    /// The caller holds the lock and `savepoint` came from
    /// [`Journal::savepoint`] in this section.
    pub unsafe fn rollback_to(&self, savepoint: u32) -> Rollback {
        // SAFETY: passed on.
        let r = unsafe { self.undo(savepoint as usize) };
        compiler_fence(Ordering::Release);
        self.h().used.store(savepoint, Ordering::Relaxed);
        r
    }

    /// Rolls back a section left open by `dead` (a holder that died):
    /// bumps `rollbacks` first, undoes every record newest first, then
    /// empties the journal. `None` when no section was open. Running it
    /// again after being killed half-way gives the same result: records are
    /// dropped only at the end, and undoing a record twice restores the
    /// same bytes.
    ///
    /// # Safety
    /// The caller holds the lock, taken over from `dead`.
    pub unsafe fn rollback(&self, dead: u32) -> Option<Rollback> {
        let h = self.h();
        if h.used.load(Ordering::Relaxed) == 0 {
            return None;
        }
        h.rollbacks.fetch_add(1, Ordering::SeqCst);
        // SAFETY: passed on; from the start of the section.
        let r = unsafe { self.undo(0) };
        h.last_words.store(r.words, Ordering::Relaxed);
        h.last_pid.store(dead, Ordering::Relaxed);
        h.undone.fetch_add(r.words as u64, Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::SeqCst);
        h.used.store(0, Ordering::Release);
        Some(r)
    }

    /// Undoes the records from word `from` to `used`, newest first.
    ///
    /// # Safety
    /// The caller holds the lock.
    unsafe fn undo(&self, from: usize) -> Rollback {
        let used = (self.used() as usize).min(self.cap as usize).min(MAX_WORDS);
        let mut out = Rollback {
            words: (used.saturating_sub(from)) as u32,
            ..Rollback::default()
        };
        // Record starts, found walking forward (records are variable
        // length); at most MAX_WORDS / 2 of them.
        let mut starts = [0u16; MAX_WORDS / 2];
        let mut n = 0;
        let mut at = from;
        while at < used {
            match self.parse(at, used) {
                Some(len) => {
                    starts[n] = at as u16;
                    n += 1;
                    at += len;
                }
                None => {
                    out.corrupt = true;
                    break;
                }
            }
        }
        for &s in starts[..n].iter().rev() {
            killpoint::point();
            // SAFETY: `parse` checked this record; we hold the lock.
            out.bytes += unsafe { self.undo_one(s as usize) } as u64;
            out.records += 1;
        }
        out
    }

    /// The length in words of the record at word `at`, if it is well
    /// formed, ends by `used`, and names bytes inside the span.
    fn parse(&self, at: usize, used: usize) -> Option<usize> {
        // SAFETY: at < used <= cap: inside the record area.
        let hdr = unsafe { self.recs.add(at).read() };
        let len = hdr >> 48;
        let off = (hdr & OFF_MASK) as usize;
        if len == FILL {
            if at + 2 >= used {
                return None;
            }
            // SAFETY: at + 1 < used: inside the record area.
            let cs = unsafe { self.recs.add(at + 1).read() };
            let stride = (cs & 0xff) as usize;
            let count = (cs >> 8) as usize;
            let words = 2 + stride / 8;
            if !(stride == 8 || stride == 16) || at + words > used {
                return None;
            }
            let n = count.checked_mul(stride)?;
            self.offset_of(self.target(off as u64), n)?;
            Some(words)
        } else {
            let n = len as usize;
            let words = 1 + n.div_ceil(8);
            if n == 0 || at + words > used {
                return None;
            }
            self.offset_of(self.target(off as u64), n)?;
            Some(words)
        }
    }

    /// Undoes one record checked by `parse`; the bytes restored.
    ///
    /// # Safety
    /// The caller holds the lock; `parse(at, ..)` returned `Some`.
    unsafe fn undo_one(&self, at: usize) -> usize {
        // SAFETY: (all reads) the record's words are inside the area, as
        // `parse` checked; (all writes) its target range is inside the span.
        unsafe {
            let hdr = self.recs.add(at).read();
            let len = hdr >> 48;
            let dst = self.target(hdr & OFF_MASK);
            if len == FILL {
                let cs = self.recs.add(at + 1).read();
                let stride = (cs & 0xff) as usize;
                let count = (cs >> 8) as usize;
                let pat = self.recs.add(at + 2).cast::<u8>();
                for k in 0..count {
                    std::ptr::copy_nonoverlapping(pat, dst.add(k * stride), stride);
                }
                count * stride
            } else {
                let n = len as usize;
                std::ptr::copy_nonoverlapping(self.recs.add(at + 1).cast::<u8>(), dst, n);
                n
            }
        }
    }

    /// The counters.
    pub fn stats(&self) -> JournalStats {
        let h = self.h();
        JournalStats {
            rollbacks: h.rollbacks.load(Ordering::Relaxed),
            words_undone: h.undone.load(Ordering::Relaxed),
            last_pid: h.last_pid.load(Ordering::Relaxed),
            capacity: self.cap as usize * 8,
            overflows: h.overflow.load(Ordering::Relaxed),
            fenced: h.fenced.load(Ordering::Relaxed) != 0,
        }
    }

    /// Rollbacks begun so far (see the module docs: an epoch for
    /// optimistic readers).
    #[inline]
    pub fn rollbacks(&self) -> u64 {
        self.h().rollbacks.load(Ordering::Acquire)
    }

    /// Whether the guarded state is fenced off.
    #[inline]
    pub fn is_fenced(&self) -> bool {
        self.h().fenced.load(Ordering::Relaxed) != 0
    }

    /// Fences the state off (or lifts the fence).
    pub fn set_fenced(&self, on: bool) {
        let h = self.h();
        h.fenced.store(on as u32, Ordering::Release);
        if !on {
            h.fence_logged.store(0, Ordering::Relaxed);
        }
    }

    /// True the first time it is called after a fence went up: so that a
    /// fenced zone logs its error once, not on every refused call.
    pub fn first_fence_report(&self) -> bool {
        self.h().fence_logged.swap(1, Ordering::Relaxed) == 0
    }

    /// Empties the journal without undoing (for re-initialisation).
    pub fn discard(&self) {
        self.h().used.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        hdr: Box<JournalHeader>,
        recs: Vec<u64>,
        state: Vec<u64>,
    }

    impl Fixture {
        fn new(cap: u32) -> Fixture {
            Fixture {
                hdr: Box::new(JournalHeader::new(cap)),
                recs: vec![0; cap as usize],
                state: (0..64).collect(),
            }
        }
        fn j(&mut self) -> Journal {
            // SAFETY: every pointer is into this fixture, which outlives the
            // handle in each test.
            unsafe {
                Journal::new(
                    &*self.hdr,
                    self.recs.as_mut_ptr(),
                    self.hdr.cap(),
                    self.state.as_mut_ptr().cast(),
                    0,
                    self.state.len() * 8,
                )
            }
        }
    }

    #[test]
    fn rollback_restores_every_byte_newest_first() {
        let mut f = Fixture::new(64);
        let j = f.j();
        let before = f.state.clone();
        let s = f.state.as_mut_ptr();
        // SAFETY: s..s+64 words are the fixture's state.
        unsafe {
            j.record(s.add(3).cast(), 8).unwrap();
            *s.add(3) = 1000;
            j.record(s.add(3).cast(), 8).unwrap();
            *s.add(3) = 2000;
            j.record(s.add(10).cast::<u8>().add(3), 13).unwrap();
            s.add(10).cast::<u8>().add(3).write_bytes(0xee, 13);
        }
        // SAFETY: the test holds the "lock".
        let r = unsafe { j.rollback(77) }.expect("open section");
        assert_eq!(r.records, 3);
        assert!(!r.corrupt);
        assert_eq!(f.state, before);
        assert_eq!(j.used(), 0);
        assert_eq!(j.stats().rollbacks, 1);
        assert_eq!(j.stats().last_pid, 77);
        // SAFETY: nothing open.
        assert!(unsafe { j.rollback(77) }.is_none());
    }

    #[test]
    fn fill_records_and_savepoints() {
        let mut f = Fixture::new(64);
        let j = f.j();
        let s = f.state.as_mut_ptr();
        // SAFETY: inside the fixture.
        unsafe {
            for k in 0..8 {
                *s.add(40 + k) = 5;
            }
            let before = f.state.clone();
            j.record_fill(s.add(40).cast(), 8, &[5]).unwrap();
            for k in 0..8 {
                *s.add(40 + k) = k as u64;
            }
            let sp = j.savepoint();
            j.record(s.cast(), 8).unwrap();
            *s = 99;
            j.rollback_to(sp);
            assert_eq!(*s, 0);
            assert_eq!(j.used(), sp);
            j.rollback(1).unwrap();
            assert_eq!(f.state, before);
        }
    }

    #[test]
    fn full_and_out_of_range_records_are_refused() {
        let mut f = Fixture::new(4);
        let j = f.j();
        let s = f.state.as_mut_ptr();
        let mut outside = 0u64;
        // SAFETY: reads of valid memory; refused records write nothing.
        unsafe {
            assert!(j.record(s.cast(), 8).is_ok());
            let e = j.record(s.cast(), 16).unwrap_err();
            assert_eq!(e.left, 16);
            assert_eq!(
                j.record((&mut outside as *mut u64).cast(), 8)
                    .unwrap_err()
                    .left,
                0
            );
            assert!(j.record(s.add(63).cast(), 16).is_err()); // runs past the end
        }
        j.commit();
        assert_eq!(j.used(), 0);
    }

    #[test]
    fn a_corrupt_journal_undoes_only_its_valid_prefix() {
        let mut f = Fixture::new(64);
        let j = f.j();
        let s = f.state.as_mut_ptr();
        // SAFETY: inside the fixture.
        unsafe {
            j.record(s.add(1).cast(), 8).unwrap();
            *s.add(1) = 111;
            j.record(s.add(2).cast(), 8).unwrap();
            *s.add(2) = 222;
        }
        // Garbage over the second record's header: an offset far outside.
        f.recs[2] = (8 << 48) | 0xffff_ffff;
        // SAFETY: lock "held" by this test.
        let r = unsafe { j.rollback(5) }.unwrap();
        assert!(r.corrupt);
        assert_eq!(r.records, 1);
        assert_eq!(f.state[1], 1);
        assert_eq!(f.state[2], 222);
    }
}
