//! Refilling a reader's copy from a slot: the copy, its validation
//! against the producer's claim, and where a reader lapped again and again
//! goes on.

use std::sync::atomic::{fence, AtomicU64, Ordering};

use super::reader::{Reader, SLACK};
use super::RingError;

/// Bytes of a cache line (positions are line-aligned in a slot: its data
/// starts on a page and its size is a power of two of at least a page).
pub(super) const LINE: u64 = 64;

/// How many times a refill retries after being lapped mid-copy before it
/// skips ahead (to the producer's mark, see `Reader::landing`).
const LAPPED_TRIES: usize = 4;

/// How far ahead of the words being copied a refill asks for the slot's
/// cache lines, in words (never past the end of the copy).
const PREFETCH_WORDS: usize = 128;

impl Reader<'_> {
    /// Copies the unread records of `slot` (up to a batch) and validates
    /// the copy against the producer's claim. `Ok(false)` if there is
    /// nothing new.
    pub(super) fn fill(&mut self, slot: usize) -> Result<bool, RingError> {
        let s = self.ring.slot(slot);
        let data = self.ring.data(slot);
        let cap = self.ring.geo().slot_bytes;
        let mask = cap / 8 - 1;
        self.bslot = slot;
        self.bpos = self.cursors[slot].pos;
        self.bvalid = 0;
        self.bnext = self.bpos;
        for _ in 0..LAPPED_TRIES {
            // The tail first: the producer stores it (release) after the
            // head that is past it, so the head loaded next is not behind.
            let tail = s.tail.load(Ordering::Acquire);
            let head = s.head.load(Ordering::Acquire);
            let c = self.cursors[slot];
            if head == c.pos || c.bad_head == Some(head) {
                return Ok(false);
            }
            self.cursors[slot].bad_head = None;
            if head < c.pos || tail > head || (head | tail | c.pos) % 8 != 0 {
                let reason = format!(
                    "positions out of order (tail {tail}, head {head}, this reader at {})",
                    c.pos
                );
                self.skip_to_head(slot);
                return Err(RingError::Corrupt {
                    zone: self.ring.zone().name().to_string(),
                    slot,
                    reason,
                });
            }
            let from = c.pos.max(tail);
            if from > c.pos {
                self.cursors[slot].lapped = true;
            }
            if head - from > cap {
                // The producer went on a lap between the two loads.
                self.cursors[slot].pos = from;
                self.cursors[slot].lapped = true;
                continue;
            }
            let settled = head == self.cursors[slot].seen_head;
            self.cursors[slot].seen_head = head;
            let room = (self.batch.len() - SLACK) as u64 * 8;
            let mut to = head.min(from.saturating_add(room));
            if self.keep_off != 0 && to == head && !settled {
                // Batching, and the producer is still writing: stay off the
                // cache line it writes; a whole record (at most `keep_off`
                // bytes) lies below the line, so this copy has one.
                let below = head & !(LINE - 1);
                if below < from.saturating_add(self.keep_off) {
                    return Ok(false);
                }
                to = below;
            }
            let words = ((to - from) / 8) as usize;
            let first = ((from / 8) & mask) as usize;
            copy_words(&mut self.batch[..words], data, first);
            #[cfg(test)]
            if let Some(f) = self.mid_copy.as_mut() {
                f();
            }
            // Any word the producer changed after claiming past it makes
            // this load see that claim.
            fence(Ordering::Acquire);
            let claim = s.claim.load(Ordering::Relaxed);
            if claim <= from.saturating_add(cap) {
                self.cursors[slot].pos = from;
                self.bpos = from;
                self.bnext = from;
                self.bvalid = to - from;
                self.bfull = to == head;
                return Ok(true);
            }
            // Lapped while copying: start again from the new tail.
            self.cursors[slot].lapped = true;
            self.cursors[slot].pos = s.tail.load(Ordering::Acquire).max(c.pos);
        }
        // The producer laps us faster than we copy: skip ahead.
        self.cursors[slot].pos = self.landing(slot, self.cursors[slot].pos);
        self.cursors[slot].lapped = true;
        Ok(false)
    }

    /// Where a reader lapped on every try of a refill goes on in `slot`:
    /// the producer's mark (a complete record at most about an eighth of
    /// the slot behind its head), so that the reader has most of a lap to
    /// copy in and, above all, reads a record there whose sequence number
    /// counts what it skipped as lost, even if the producer writes nothing
    /// more. Never behind `at` (a record start this reader knows: it stays
    /// there if the mark is behind it); the head only when neither is sound
    /// (a corrupted slot).
    fn landing(&self, slot: usize, at: u64) -> u64 {
        let s = self.ring.slot(slot);
        let cap = self.ring.geo().slot_bytes;
        let mut head = 0;
        for _ in 0..LAPPED_TRIES {
            // The mark first: it is stored after the head that passed its
            // record, and the tail before the head past it.
            let mark = s.mark.load(Ordering::Acquire);
            let tail = s.tail.load(Ordering::Acquire);
            head = s.head.load(Ordering::Acquire);
            if tail > head || head - tail > cap {
                continue;
            }
            let sound = |p: u64| tail <= p && p < head && p % 8 == 0;
            if sound(mark) && mark >= at {
                return mark;
            }
            if sound(at) {
                return at;
            }
        }
        head
    }
}

/// Copies `dst.len()` (at most a slot's) words of a slot's `data` from
/// word `first` on, wrapping at its end, with relaxed loads (the producer
/// may be writing them: the caller validates the copy afterwards). Asks
/// for the lines `PREFETCH_WORDS` ahead as it goes, but never past the
/// copy's end: the lines past the head are the ones the producer is
/// about to write, and taking them away would slow it.
#[inline]
fn copy_words(dst: &mut [u64], data: &[AtomicU64], first: usize) {
    let ahead = dst.len().saturating_sub(PREFETCH_WORDS);
    let (near, far) = dst.split_at_mut(ahead);
    copy_span::<true>(near, data, first);
    copy_span::<false>(far, data, (first + ahead) & (data.len() - 1));
}

/// Copies `dst.len()` words of `data` from word `first` on, wrapping;
/// with `PREFETCH`, asks for the line `PREFETCH_WORDS` ahead of each.
#[inline(always)]
fn copy_span<const PREFETCH: bool>(dst: &mut [u64], data: &[AtomicU64], first: usize) {
    let mask = data.len() - 1;
    let split = dst.len().min(data.len() - first);
    let (d1, d2) = dst.split_at_mut(split);
    for (d, at) in [(d1, first), (d2, 0)] {
        let src = &data[at..at + d.len()];
        let mut dc = d.chunks_exact_mut(8);
        let mut sc = src.chunks_exact(8);
        for (i, (d, s)) in (&mut dc).zip(&mut sc).enumerate() {
            if PREFETCH {
                prefetch_read(&data[(at + 8 * i + PREFETCH_WORDS) & mask]);
            }
            let d: &mut [u64; 8] = d.try_into().expect("chunks of 8");
            let s: &[AtomicU64; 8] = s.try_into().expect("chunks of 8");
            for k in 0..8 {
                d[k] = s[k].load(Ordering::Relaxed);
            }
        }
        for (b, w) in dc.into_remainder().iter_mut().zip(sc.remainder()) {
            *b = w.load(Ordering::Relaxed);
        }
    }
}

/// Asks for the cache line of `w`, to be read soon.
#[inline(always)]
fn prefetch_read(w: &AtomicU64) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch only hints the cache; `w` is a valid address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(w.as_ptr().cast::<i8>().cast_const()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = w;
}
