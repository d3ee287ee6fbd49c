//! The writing side: one process, one slot, no lock.

use std::fmt;
use std::sync::atomic::{fence, AtomicU64, Ordering};

use super::layout::{rec_size, RecHdr, SlotHdr, F_STAMP, REC_HDR};
use super::{Ring, RingError};
use crate::os::process::{current_pid, pid_alive};

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
        let max_rec = rec_size(ring.geo().max_record as u64);
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
            SlotHdr::bump(&hdr.repaired, 1);
        } else if claim > head {
            // The previous owner died between claiming and publishing: its
            // record is torn and will be written over; its sequence number
            // was already taken, so readers count it as lost.
            SlotHdr::bump(&hdr.torn, 1);
        }
        p
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
        let time = if self.stamp { now_ns() } else { 0 };
        self.write_at(data, time)
    }

    /// As [`write`](Self::write) with a time of the caller's choosing (ns
    /// since the Unix epoch; 0 reads back as no time).
    ///
    /// # Errors
    /// As [`write`](Self::write).
    #[inline]
    pub fn write_at(&mut self, data: &[u8], time_ns: u64) -> Result<u64, RingError> {
        if current_pid() != self.pid {
            return Err(RingError::NotOwner {
                owner: self.pid,
                pid: current_pid(),
            });
        }
        let max = self.ring.geo().max_record;
        if data.len() > max as usize {
            SlotHdr::bump(&self.hdr.dropped, 1);
            return Err(RingError::TooLong {
                len: data.len(),
                max: max as usize,
            });
        }
        let pos = self.head;
        let end = pos + rec_size(data.len() as u64);
        let cap = self.ring.geo().slot_bytes;
        // Whatever lies before `end - cap` is about to be written over.
        if end - self.tail > cap {
            self.advance_tail(end - cap);
            self.hdr.tail.store(self.tail, Ordering::Relaxed);
        }
        let seq = self.seq;
        self.seq += 1;
        self.hdr.next_seq.store(self.seq, Ordering::Relaxed);
        if end > self.claim {
            self.claim = end;
        }
        self.hdr.claim.store(self.claim, Ordering::Relaxed);
        // The claim is visible before any word it covers changes: a reader
        // that sees a new word (after its acquire fence) sees this claim.
        fence(Ordering::Release);
        let h = RecHdr {
            len: data.len() as u32,
            pid: self.pid,
            seq,
            time: time_ns,
        };
        let mut w = pos / 8;
        for word in h.encode(pos) {
            self.data[(w & self.mask) as usize].store(word, Ordering::Relaxed);
            w += 1;
        }
        let mut chunks = data.chunks_exact(8);
        for c in &mut chunks {
            let word = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            self.data[(w & self.mask) as usize].store(word, Ordering::Relaxed);
            w += 1;
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.data[(w & self.mask) as usize].store(u64::from_le_bytes(b), Ordering::Relaxed);
        }
        SlotHdr::bump(&self.hdr.written, 1);
        SlotHdr::bump(&self.hdr.bytes, data.len() as u64);
        self.head = end;
        self.hdr.head.store(end, Ordering::Release);
        Ok(seq)
    }

    /// Moves `tail` past every record that starts before `limit` (they are
    /// about to be overwritten), counting them. A header that does not
    /// check (memory corrupted by someone else) drops everything up to
    /// `head`. At most one slot's worth of records is walked.
    #[cold]
    fn advance_tail(&mut self, limit: u64) {
        let max = self.ring.geo().max_record;
        let mut n = 0u64;
        let most = self.ring.geo().slot_bytes / REC_HDR + 1;
        while self.tail < limit {
            if self.tail >= self.head || n >= most {
                self.tail = self.head;
                SlotHdr::bump(&self.hdr.repaired, 1);
                break;
            }
            let w = self.tail / 8;
            let words: [u64; 4] = std::array::from_fn(|k| {
                self.data[((w + k as u64) & self.mask) as usize].load(Ordering::Relaxed)
            });
            match RecHdr::decode(words, self.tail, max) {
                Some(h) => {
                    self.tail += rec_size(h.len as u64);
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
        SlotHdr::bump(&self.hdr.overwritten, n);
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
