//! Refilling a reader's copy from a slot: the copy, its validation
//! against the producer's claim, and where a reader lapped again and again
//! goes on.

use std::sync::atomic::{fence, AtomicU64, Ordering};

use super::layout::rec_size;
use super::reader::{Cursor, Reader, SLACK};
use super::RingError;

/// Bytes of a cache line (positions are line-aligned in a slot: its data
/// starts on a page and its size is a power of two of at least a page).
pub(super) const LINE: u64 = 64;

/// How many times a refill retries after being lapped mid-copy before it
/// skips ahead (to the producer's mark, see `Reader::landing`).
const LAPPED_TRIES: usize = 4;

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
            let from = if c.pos < tail && self.intact(c, head, cap) {
                // Dropped by the producer but not written over yet.
                c.pos
            } else {
                c.pos.max(tail)
            };
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
            if self.distance != 0 && !settled {
                // Following at a distance: the copy ends at least
                // `distance` behind the moving head (records closer to it
                // are still in the producer's core's caches), and it waits
                // until a copy's worth (a quarter of the slot in a small
                // one), and at least one largest record, lies that far back.
                let largest = rec_size(self.ring.geo().max_record as u64, true);
                let need = self.distance + room.min(cap / 4).max(largest);
                if head - from < need {
                    return Ok(false);
                }
                to = to.min(head - self.distance);
            }
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
                // Not behind the copied records' numbers: the producer
                // stored it before the head that covers them.
                self.bseq = s.next_seq.load(Ordering::Relaxed);
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

    /// Whether this reader can go on reading at its cursor `c` although
    /// the slot's tail has passed it: the producer moves the tail up to an
    /// eighth of the slot ahead of what it writes over (see
    /// `Producer::make_room`), so the records between the cursor and the
    /// tail may still be whole. They are while the producer has not
    /// claimed a lap past them, which the claim check after the copy
    /// decides as for any copy; this only keeps the reader from trying
    /// where that check would likely fail: the head must be a copy's
    /// length (twice, for the producer's progress during the copy), and at
    /// most a sixteenth of the slot, short of a lap ahead of the cursor.
    /// Only for a cursor at a record whose sequence number the reader
    /// knows (it has read the one before, or the slot was never
    /// overwritten): a record start, where a header that is not the one
    /// expected is caught as after any refill.
    fn intact(&self, c: Cursor, head: u64, cap: u64) -> bool {
        let room = (self.batch.len() - SLACK) as u64 * 8;
        let margin = (2 * room).min(cap / 16);
        // `head` and `tail` come from shared memory: a head behind the
        // cursor (garbage) is no reason to read on.
        c.expect.is_some() && head.checked_sub(c.pos).is_some_and(|d| d <= cap - margin)
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
/// word `first` on, wrapping at its end (the producer may be writing them:
/// the caller validates the copy afterwards). On x86-64 one `rep movsb`
/// per span: fast strings stream the lines in at a few instructions per
/// copy instead of two per word (`reader-alone-hot` in `benches/ring.rs`
/// went from 8.8 to 6.9 ns per 64-byte record); elsewhere relaxed loads.
/// No software prefetch: it gained nothing measurable in R1, and asking
/// for lines past the copy's end would take from the producer the lines
/// it is about to write.
#[inline]
fn copy_words(dst: &mut [u64], data: &[AtomicU64], first: usize) {
    let split = dst.len().min(data.len() - first);
    let (d1, d2) = dst.split_at_mut(split);
    for (d, at) in [(d1, first), (d2, 0)] {
        copy_span(d, &data[at..at + d.len()]);
    }
}

/// Copies `src` into `dst` (as long).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn copy_span(dst: &mut [u64], src: &[AtomicU64]) {
    assert_eq!(dst.len(), src.len());
    // SAFETY: `rep movsb` copies `8 * dst.len()` bytes from `src` (shared
    // words, as many) to `dst` (this reader's own buffer, as long; the two
    // do not overlap). It reads words the producer may be storing to at
    // the same time, as the relaxed loads it stands for would: a word torn
    // by such a store lies in a part of the copy that the claim check
    // after it rejects. The direction flag is clear on entry to asm (the
    // ABI), so the copy goes upwards; rcx, rsi and rdi are declared
    // clobbered.
    unsafe {
        std::arch::asm!(
            "rep movsb",
            inout("rcx") 8 * dst.len() => _,
            inout("rsi") src.as_ptr() => _,
            inout("rdi") dst.as_mut_ptr() => _,
            options(nostack, preserves_flags)
        );
    }
}

/// Copies `src` into `dst` (as long), a relaxed load per word.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn copy_span(dst: &mut [u64], src: &[AtomicU64]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.load(Ordering::Relaxed);
    }
}

/// Asks for the cache line of word `i` (taken modulo the slot's words) of
/// a slot's `data`, to be read soon (nothing on targets other than
/// x86-64).
#[inline(always)]
pub(super) fn prefetch_word(data: &[AtomicU64], i: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let w = &data[i & (data.len() - 1)];
        // SAFETY: a prefetch only hints the cache; `w` is a valid address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(w.as_ptr().cast::<i8>().cast_const()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (data, i);
}
