//! The writing side: one process, one slot, no lock.

use std::fmt;
use std::sync::atomic::{fence, AtomicU64, Ordering};

use super::layout::{rec_size, seq_window, RecHdr, SlotHdr, F_STAMP, REC_HDR};
use super::marks::Marks;
use super::{Ring, RingError};
use crate::os::process::{current_pid, is_current_pid, pid_alive};

/// A claimed producer slot: the only writer of its slot, in the process
/// that claimed it ([`Ring::producer`]). Dropping it frees the slot.
///
/// A handle inherited through `fork` refuses to write
/// ([`RingError::NotOwner`]); the child claims its own.
pub struct Producer<'a> {
    ring: Ring<'a>,
    slot: usize,
    hdr: &'a SlotHdr,
    data: &'a [AtomicU64],
    mask: u64,
    pid: u32,
    stamp: bool,
    /// This producer's copies of the slot's positions (it is their only
    /// writer, so they never need reading back).
    head: u64,
    claim: u64,
    tail: u64,
    seq: u64,
    /// Copies of the slot's `written` and `bytes` counters.
    written: u64,
    bytes: u64,
    /// The slot's size in bytes.
    cap: u64,
    /// The ring's longest record payload.
    max_record: usize,
    overwritten: u64,
    /// Where some of this producer's records start.
    marks: Marks,
    /// The sequence number of the record at `tail`, when known.
    tail_seq: Option<u64>,
}

impl fmt::Debug for Producer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("zone", &self.ring.zone().name())
            .field("slot", &self.slot)
            .field("pid", &self.pid)
            .field("head", &self.head)
            .field("seq", &self.seq)
            .finish()
    }
}

impl<'a> Producer<'a> {
    /// Claims a free slot, else a dead owner's.
    pub(super) fn claim(ring: Ring<'a>) -> Result<Producer<'a>, RingError> {
        let me = current_pid();
        for i in 0..ring.slots() {
            let owner = &ring.slot(i).owner;
            if owner.load(Ordering::Relaxed) == 0
                && owner
                    .compare_exchange(0, me, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                return Ok(Producer::take(ring, i, me));
            }
        }
        for i in 0..ring.slots() {
            let owner = &ring.slot(i).owner;
            let was = owner.load(Ordering::Relaxed);
            if was != 0
                && was != me
                && !pid_alive(was)
                && owner
                    .compare_exchange(was, me, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                log::info!(
                    "log ring in zone \"{}\": slot {i} taken over from dead process {was}",
                    ring.zone().name()
                );
                return Ok(Producer::take(ring, i, me));
            }
        }
        Err(RingError::NoFreeSlot {
            zone: ring.zone().name().to_string(),
            slots: ring.slots(),
        })
    }

    /// Starts writing in slot `i`, now owned by `me`: picks up the slot's
    /// positions, repairing them if they are inconsistent, and counts a
    /// record the previous owner left half-written.
    fn take(ring: Ring<'a>, i: usize, me: u32) -> Producer<'a> {
        let hdr = ring.slot(i);
        let cap = ring.geo().slot_bytes;
        hdr.claims.fetch_add(1, Ordering::Relaxed);
        let head = hdr.head.load(Ordering::Acquire);
        let claim = hdr.claim.load(Ordering::Relaxed);
        let tail = hdr.tail.load(Ordering::Relaxed);
        let seq = hdr.next_seq.load(Ordering::Relaxed);
        let max_rec = rec_size(ring.geo().max_record as u64, true);
        let sound = tail <= head
            && head <= claim
            && head - tail <= cap
            && claim - head <= max_rec
            && (head | claim | tail) % 8 == 0
            && claim.checked_add(cap << 1).is_some();
        let mut p = Producer {
            ring,
            slot: i,
            hdr,
            data: ring.data(i),
            mask: cap / 8 - 1,
            pid: me,
            stamp: ring.geo().flags & F_STAMP != 0,
            head,
            claim,
            tail,
            seq,
            written: hdr.written.load(Ordering::Relaxed),
            bytes: hdr.bytes.load(Ordering::Relaxed),
            cap,
            max_record: ring.geo().max_record as usize,
            overwritten: hdr.overwritten.load(Ordering::Relaxed),
            marks: Marks::new(cap / 8, head),
            tail_seq: None,
        };
        if !sound {
            log::warn!(
                "log ring in zone \"{}\", slot {i}: positions head {head} claim {claim} \
                 tail {tail} are inconsistent: slot reset",
                ring.zone().name()
            );
            // Start past everything: old readers' cursors are behind the
            // new tail and resynchronise; nothing old is handed out.
            let restart = (head.max(claim).max(tail).saturating_add(7) & !7).min(u64::MAX >> 2);
            p.head = restart;
            p.claim = restart;
            p.tail = restart;
            hdr.claim.store(restart, Ordering::Relaxed);
            hdr.tail.store(restart, Ordering::Relaxed);
            hdr.head.store(restart, Ordering::Release);
            hdr.mark.store(restart, Ordering::Release);
            SlotHdr::bump(&hdr.repaired, 1);
        } else if claim > head {
            // The previous owner died between claiming and publishing: its
            // record is torn and will be written over; its sequence number
            // was already taken, so readers count it as lost.
            SlotHdr::bump(&hdr.torn, 1);
        }
        p.marks = Marks::new(cap / 8, p.head);
        p.tail_seq = p.seq_at_tail();
        // Map the slot's pages into this process now, not one page fault
        // per 4 KiB inside `write` during the first lap.
        crate::os::populate(p.data.as_ptr().cast(), cap as usize, true);
        p
    }

    /// The sequence number of the record at `tail`: the next one written
    /// if the slot holds nothing, else read from its header.
    fn seq_at_tail(&self) -> Option<u64> {
        if self.tail == self.head {
            return Some(self.seq);
        }
        let w = self.tail / 8;
        let words: [u64; 3] = std::array::from_fn(|k| {
            self.data[((w + k as u64) & self.mask) as usize].load(Ordering::Relaxed)
        });
        let seqs = seq_window(self.seq, self.cap);
        RecHdr::decode(words, self.tail, self.ring.geo().max_record, seqs).map(|h| h.seq)
    }

    /// The pid that claimed the slot (this process).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The slot this producer writes.
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// The sequence number the next record will carry.
    pub fn next_seq(&self) -> u64 {
        self.seq
    }

    /// Stamps records with the time, or not (the ring's setting by
    /// default). Unstamped records read back with `time_ns == None`.
    pub fn set_timestamps(&mut self, on: bool) {
        self.stamp = on;
    }

    /// Writes one record; returns its sequence number. Never blocks: when
    /// the slot is full its oldest records are overwritten (and counted).
    ///
    /// # Errors
    /// [`RingError::TooLong`] over [`Ring::max_record`] (counted as
    /// dropped); [`RingError::NotOwner`] in a process that did not claim
    /// the slot.
    #[inline]
    pub fn write(&mut self, data: &[u8]) -> Result<u64, RingError> {
        if self.stamp {
            self.write_stamped(data)
        } else {
            self.put::<false>(data, 0)
        }
    }

    /// [`write`](Self::write) with the time: out of line, so that a
    /// caller's loop holds only the unstamped path (the clock read costs
    /// far more than the call).
    #[inline(never)]
    fn write_stamped(&mut self, data: &[u8]) -> Result<u64, RingError> {
        let time = now_ns();
        self.write_at(data, time)
    }

    /// As [`write`](Self::write) with a time of the caller's choosing (ns
    /// since the Unix epoch; 0 reads back as no time).
    ///
    /// # Errors
    /// As [`write`](Self::write).
    #[inline(always)]
    pub fn write_at(&mut self, data: &[u8], time_ns: u64) -> Result<u64, RingError> {
        if time_ns != 0 {
            self.put::<true>(data, time_ns)
        } else {
            self.put::<false>(data, 0)
        }
    }

    /// [`write_at`](Self::write_at) for a record with a time word
    /// (`STAMPED`, `time_ns != 0`) or without (`time_ns == 0`): each path
    /// compiled with its header size known.
    #[inline(always)]
    fn put<const STAMPED: bool>(&mut self, data: &[u8], time_ns: u64) -> Result<u64, RingError> {
        debug_assert_eq!(STAMPED, time_ns != 0);
        let time_ns = if STAMPED { time_ns } else { 0 };
        if !is_current_pid(self.pid) {
            return Err(self.not_owner());
        }
        let len = data.len();
        if len > self.max_record {
            return Err(self.too_long(len));
        }
        let pos = self.head;
        let end = pos + rec_size(len as u64, STAMPED);
        // Whatever lies before `end - cap` is about to be written over:
        // drop the oldest records in steps of an eighth of the slot, so
        // the walk over their headers runs once per step, not per record.
        if end - self.tail > self.cap {
            self.make_room(end);
        }
        let seq = self.seq;
        self.seq = seq.wrapping_add(1);
        // Only this producer writes these words, and readers load them once
        // per refill, not per record: the stores stay in this core's cache.
        let hdr = self.hdr;
        hdr.next_seq.store(self.seq, Ordering::Relaxed);
        if end > self.claim {
            self.claim = end;
        }
        hdr.claim.store(self.claim, Ordering::Relaxed);
        // The claim is visible before any word it covers changes: a reader
        // that sees a new word (after its acquire fence) sees this claim.
        fence(Ordering::Release);
        let h = RecHdr {
            len: len as u32,
            pid: self.pid,
            seq,
            time: time_ns,
        }
        .encode(pos);
        let nh = 2 + STAMPED as usize;
        let first = ((pos / 8) & self.mask) as usize;
        if first + ((end - pos) / 8) as usize <= self.data.len() {
            // SAFETY: the record's words, `first..first + nh + ceil(len /
            // 8)`, were just checked to lie in the slot's words.
            unsafe { store_record(self.data.as_ptr().add(first), h, nh, data) };
        } else {
            self.store_wrapped(first, h[0], h[1], h[2], nh, data);
        }
        self.written = self.written.wrapping_add(1);
        self.bytes = self.bytes.wrapping_add(len as u64);
        hdr.written.store(self.written, Ordering::Relaxed);
        hdr.bytes.store(self.bytes, Ordering::Relaxed);
        self.head = end;
        hdr.head.store(end, Ordering::Release);
        if self.marks.due(pos) {
            self.mark(pos, seq);
        }
        Ok(seq)
    }

    /// Remembers the record just published at `pos` as a mark, here and
    /// in the slot's `mark`: after the head, so that a reader that loads
    /// the mark finds the record complete.
    #[cold]
    fn mark(&mut self, pos: u64, seq: u64) {
        self.marks.push(pos, seq);
        self.hdr.mark.store(pos, Ordering::Release);
    }

    #[cold]
    fn not_owner(&self) -> RingError {
        RingError::NotOwner {
            owner: self.pid,
            pid: current_pid(),
        }
    }

    #[cold]
    fn too_long(&self, len: usize) -> RingError {
        SlotHdr::bump(&self.hdr.dropped, 1);
        RingError::TooLong {
            len,
            max: self.max_record,
        }
    }

    /// Moves the tail past what a record ending at `end` overwrites, and
    /// publishes it.
    #[cold]
    #[inline(never)]
    fn make_room(&mut self, end: u64) {
        self.advance_tail(end - self.cap + self.cap / 8);
        // Release: a reader that sees this tail sees a head past it.
        self.hdr.tail.store(self.tail, Ordering::Release);
    }

    /// A record that runs past the end of the slot's words: word by word.
    /// The header words come as scalars, not as an array the caller would
    /// have to keep in memory on the common path.
    #[cold]
    #[inline(never)]
    fn store_wrapped(&self, first: usize, h0: u64, h1: u64, h2: u64, nh: usize, data: &[u8]) {
        let h = [h0, h1, h2];
        let n = self.data.len();
        let payload = data.chunks(8).map(|c| {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(b)
        });
        for (k, w) in h[..nh].iter().copied().chain(payload).enumerate() {
            self.data[(first + k) % n].store(w, Ordering::Relaxed);
        }
    }

    /// Moves `tail` to a record at or after `limit` (the ones before are
    /// about to be overwritten), counting the records it passes: to the
    /// oldest of this producer's marks past `limit`, or else (after a
    /// takeover) by walking the headers. A header that does not check
    /// (memory corrupted by someone else) drops everything up to `head`.
    /// At most one slot's worth of records is walked.
    #[cold]
    fn advance_tail(&mut self, limit: u64) {
        if let (Some((pos, seq)), Some(ts)) = (self.marks.first_from(limit), self.tail_seq) {
            if pos <= self.head && seq >= ts {
                self.tail = pos;
                self.tail_seq = Some(seq);
                self.overwritten = self.overwritten.wrapping_add(seq - ts);
                self.hdr
                    .overwritten
                    .store(self.overwritten, Ordering::Relaxed);
                return;
            }
        }
        let max = self.ring.geo().max_record;
        let mut n = 0u64;
        let most = self.cap / REC_HDR + 1;
        while self.tail < limit {
            if self.tail >= self.head || n >= most {
                self.tail = self.head;
                SlotHdr::bump(&self.hdr.repaired, 1);
                break;
            }
            let w = self.tail / 8;
            let words: [u64; 3] = std::array::from_fn(|k| {
                self.data[((w + k as u64) & self.mask) as usize].load(Ordering::Relaxed)
            });
            match RecHdr::decode(words, self.tail, max, seq_window(self.seq, self.cap)) {
                Some(h) => {
                    self.tail += h.size();
                    n += 1;
                }
                None => {
                    log::warn!(
                        "log ring in zone \"{}\", slot {}: bad record header at {}: \
                         dropping the slot's old records",
                        self.ring.zone().name(),
                        self.slot,
                        self.tail
                    );
                    self.tail = self.head;
                    SlotHdr::bump(&self.hdr.repaired, 1);
                    break;
                }
            }
        }
        self.overwritten = self.overwritten.wrapping_add(n);
        self.hdr
            .overwritten
            .store(self.overwritten, Ordering::Relaxed);
        self.tail_seq = self.seq_at_tail();
    }
}

impl Drop for Producer<'_> {
    fn drop(&mut self) {
        // Only the claiming process gives the slot back (a forked copy of
        // this handle must not free its parent's slot).
        if current_pid() == self.pid {
            let _ =
                self.hdr
                    .owner
                    .compare_exchange(self.pid, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}

/// `CLOCK_REALTIME` in ns since the Unix epoch (0 before it).
fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Stores a record's `nh` (2 or 3) header words `h` and its payload into
/// the words from `dst` on (not wrapping).
///
/// # Safety
/// `dst` points into a slot's words with `nh + ceil(data.len() / 8)` of
/// them from there; `nh` is 2 or 3.
#[inline(always)]
unsafe fn store_record(dst: *const AtomicU64, h: [u64; 3], nh: usize, data: &[u8]) {
    // SAFETY: the header words `dst.add(k)`, `k < nh`, are in bounds by
    // the caller's promise (they are atomics, shared with readers), and so
    // are the `ceil(len / 8)` words from `dst.add(nh)` that
    // `store_payload` is given.
    unsafe {
        (*dst).store(h[0], Ordering::Relaxed);
        (*dst.add(1)).store(h[1], Ordering::Relaxed);
        if nh == 3 {
            (*dst.add(2)).store(h[2], Ordering::Relaxed);
        }
        store_payload(dst.add(nh), data);
    }
}

/// Stores `data` into the `ceil(data.len() / 8)` words from `dst` on, as
/// `u64::from_le_bytes` of each 8 bytes, the last word zero-padded.
///
/// On x86-64 the whole 16-byte pieces go with one SSE store each (a
/// 64-byte payload in four stores instead of eight; the loads are plain
/// reads of `data`), through `asm!`: a store of the compiler's own would
/// be a data race with the readers' loads of the same words, which the
/// opaque `asm!` block is not, as the readers' `rep movsb` copy is not
/// (see `refill.rs`). What is left (an 8-byte word, then a short one) is
/// stored as atomics.
///
/// # Safety
/// `dst` points into a slot's words with `ceil(data.len() / 8)` of them
/// from there.
#[inline(always)]
unsafe fn store_payload(dst: *const AtomicU64, data: &[u8]) {
    let src = data.as_ptr();
    let mut k = 0;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::_mm_loadu_si128;
        // The asm blocks below may touch memory (no `nomem`), so the
        // compiler keeps them after the claim's fence and before the
        // head's release store; x86-64 keeps their ordinary (not
        // streaming) stores in program order with the other stores, so
        // readers see them as they see the atomic stores they stand for
        // (a word torn by the reader's copy lies below a claim it checks).
        // `movdqu` needs no alignment (the words are 8-aligned).
        while k + 8 <= data.len() / 8 {
            // SAFETY: bytes `8k..8k + 64` of `data` lie in it (`k + 8 <=
            // len / 8`); SSE2 is part of x86-64; the loads are unaligned.
            let v: [_; 4] =
                std::array::from_fn(|i| unsafe { _mm_loadu_si128(src.add(8 * k + 16 * i).cast()) });
            // SAFETY: words `k..k + 8` from `dst` are in bounds by the
            // caller's promise (`k + 8 <= len / 8`); they are atomics, so
            // writing them through a pointer from a shared slice is
            // allowed; see above for the ordering.
            unsafe {
                std::arch::asm!(
                    "movdqu xmmword ptr [{d}], {v0}",
                    "movdqu xmmword ptr [{d} + 16], {v1}",
                    "movdqu xmmword ptr [{d} + 32], {v2}",
                    "movdqu xmmword ptr [{d} + 48], {v3}",
                    d = in(reg) dst.add(k),
                    v0 = in(xmm_reg) v[0],
                    v1 = in(xmm_reg) v[1],
                    v2 = in(xmm_reg) v[2],
                    v3 = in(xmm_reg) v[3],
                    options(nostack, preserves_flags)
                );
            }
            k += 8;
        }
        while k + 2 <= data.len() / 8 {
            // SAFETY: bytes `8k..8k + 16` of `data` lie in it (`k + 2 <=
            // len / 8`); SSE2 is part of x86-64; the load is unaligned.
            let v = unsafe { _mm_loadu_si128(src.add(8 * k).cast()) };
            // SAFETY: words `k` and `k + 1` from `dst` are in bounds by the
            // caller's promise (`k + 2 <= len / 8`); atomics, as above.
            unsafe {
                std::arch::asm!(
                    "movdqu xmmword ptr [{d}], {v}",
                    d = in(reg) dst.add(k),
                    v = in(xmm_reg) v,
                    options(nostack, preserves_flags)
                );
            }
            k += 2;
        }
    }
    // SAFETY: words `k..ceil(len / 8)` from `dst` are in bounds by the
    // caller's promise (atomics shared with readers); the payload reads
    // are bytes `8k..8k + 8` of `data` with `k < len / 8`.
    unsafe {
        let full = data.len() / 8;
        while k < full {
            let w = src.add(8 * k).cast::<u64>().read_unaligned();
            (*dst.add(k)).store(u64::from_le(w), Ordering::Relaxed);
            k += 1;
        }
        let rest = &data[full * 8..];
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            (*dst.add(full)).store(u64::from_le_bytes(b), Ordering::Relaxed);
        }
    }
}
