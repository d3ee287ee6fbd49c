//! The reading side: a cursor per slot, in the reader's own process.

use std::fmt;
use std::sync::atomic::{fence, Ordering};

use super::layout::{rec_size, RecHdr, REC_HDR, REC_HDR_STAMPED};
use super::{Ring, RingError};

/// Where a new [`Reader`] starts in each slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// At the oldest record each slot still holds (`tail -n +1`, a post
    /// mortem dump).
    Oldest,
    /// After the newest record: only records written from now on (`tail
    /// -f`).
    Newest,
}

/// One record, as a [`Reader`] hands it out (borrowing the reader's copy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'r> {
    /// The slot it was written in.
    pub slot: usize,
    /// The producer's pid.
    pub pid: u32,
    /// Its sequence number in the slot.
    pub seq: u64,
    /// When it was written, ns since the Unix epoch (`CLOCK_REALTIME`), if
    /// the producer stamped it.
    pub time_ns: Option<u64>,
    /// The payload.
    pub data: &'r [u8],
}

/// A reader's own position in one slot.
#[derive(Clone, Copy, Debug)]
struct Cursor {
    /// Byte position of the next record to read.
    pos: u64,
    /// The sequence number the next record should carry, once known.
    expect: Option<u64>,
    /// The slot's head when it was last found corrupted: the slot is
    /// skipped (silently) until its head moves.
    bad_head: Option<u64>,
    /// The slot's head at the last refill (batching: a head that has not
    /// moved since is read up to).
    seen_head: u64,
    /// The reader was lapped in this slot since its last record.
    lapped: bool,
}

/// What a reader has read and missed so far (see [`Reader::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReaderStats {
    /// Records handed out.
    pub read: u64,
    /// Records missed: overwritten before this reader got to them, or
    /// torn by a producer's death (gaps in the sequence numbers).
    pub lost: u64,
    /// The part of `lost` this reader missed by falling a whole slot
    /// behind (the gaps found right after it was lapped); `lost - overrun`
    /// are records torn by producers that died mid-write.
    pub overrun: u64,
    /// Times the reader found a slot corrupted and skipped ahead.
    pub corrupt: u64,
    /// Records a slot's sequence numbers went backwards on (a slot reset).
    pub reordered: u64,
    /// Records written but not yet read, summed over slots (known once a
    /// record of the slot was read, or the slot started empty).
    pub lag_records: u64,
    /// Bytes written but not yet read, summed over slots.
    pub lag_bytes: u64,
}

/// Reads every slot of a ring with its own cursors; any number of readers,
/// in any processes, each sees every record (unless it falls a whole slot
/// behind, which it is told through [`lost`](Self::lost)).
///
/// Non-blocking: [`next_record`](Self::next_record) returns `Ok(None)` when nothing new
/// is there; poll it (`shmzone-tail` sleeps a few ms between polls).
pub struct Reader<'a> {
    ring: Ring<'a>,
    cursors: Vec<Cursor>,
    /// A copy of consecutive words of slot `bslot` from position `bpos`;
    /// `bvalid` bytes of it were validated; `bnext` is the next record's
    /// position; `bfull` says the copy reaches the slot's head.
    batch: Vec<u64>,
    bslot: usize,
    bpos: u64,
    bvalid: u64,
    bnext: u64,
    bfull: bool,
    /// With batching on, the bytes a refill leaves below a moving head
    /// (see [`set_batching`](Self::set_batching)); 0 when off.
    keep_off: u64,
    /// The slot to refill from next (round robin).
    turn: usize,
    stats: ReaderStats,
    /// Tests only: runs between a refill's copy and its check, so a test
    /// can make the producer lap the reader at that moment.
    #[cfg(test)]
    pub(super) mid_copy: Option<Box<dyn FnMut() + 'a>>,
}

impl fmt::Debug for Reader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("zone", &self.ring.zone().name())
            .field("stats", &self.stats)
            .finish()
    }
}

/// Bytes of a cache line (positions are line-aligned in a slot: its data
/// starts on a page and its size is a power of two of at least a page).
const LINE: u64 = 64;

/// How many times a refill retries after being lapped mid-copy before it
/// skips ahead (to the producer's mark, see `Reader::landing`).
const LAPPED_TRIES: usize = 4;

/// The batch copied at once: at least one largest record, at most a slot.
fn batch_bytes(ring: &Ring<'_>) -> u64 {
    (64 << 10)
        .max(2 * rec_size(ring.geo().max_record as u64, true))
        .min(ring.geo().slot_bytes)
}

impl<'a> Reader<'a> {
    pub(super) fn new(ring: Ring<'a>, start: Start) -> Reader<'a> {
        let cursors = (0..ring.slots())
            .map(|i| {
                let s = ring.slot(i);
                match start {
                    Start::Newest => Cursor {
                        pos: s.head.load(Ordering::Acquire),
                        expect: None,
                        bad_head: None,
                        lapped: false,
                        seen_head: 0,
                    },
                    Start::Oldest => {
                        let tail = s.tail.load(Ordering::Acquire);
                        Cursor {
                            pos: tail,
                            // A slot never overwritten starts at sequence 0.
                            expect: (tail == 0).then_some(0),
                            bad_head: None,
                            lapped: false,
                            seen_head: 0,
                        }
                    }
                }
            })
            .collect();
        Reader {
            cursors,
            batch: vec![0; (batch_bytes(&ring) / 8) as usize],
            bslot: 0,
            bpos: 0,
            bvalid: 0,
            bnext: 0,
            bfull: false,
            keep_off: 0,
            turn: 0,
            stats: ReaderStats::default(),
            #[cfg(test)]
            mid_copy: None,
            ring,
        }
    }

    /// The next record from any slot, or `Ok(None)` when every slot is
    /// read up to its head. Records of one slot come in order; slots take
    /// turns.
    ///
    /// # Errors
    /// [`RingError::Corrupt`] when a slot's words or a record fail their
    /// checks; the reader has then skipped past, and the next call goes on.
    #[inline]
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>, RingError> {
        let found = match self.parse_fast() {
            Some(h) => Some(h),
            None => self.next_slow()?,
        };
        Ok(found.map(|(h, off): (RecHdr, usize)| {
            // SAFETY: `parse` checked that `len` bytes from word `off` lie in
            // the batch; u64s are readable as bytes.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    self.batch.as_ptr().add(off).cast::<u8>(),
                    h.len as usize,
                )
            };
            Record {
                slot: self.bslot,
                pid: h.pid,
                seq: h.seq,
                time_ns: (h.time != 0).then_some(h.time),
                data: bytes,
            }
        }))
    }

    /// The common case of [`parse`](Self::parse): a whole, sound record in
    /// the batch. `None` for anything else, which the slow path sorts out.
    #[inline]
    fn parse_fast(&mut self) -> Option<(RecHdr, usize)> {
        let pos = self.bnext;
        let end = self.bpos + self.bvalid;
        // Four words (a stamped header) in the copy; a shorter rest is
        // left to the slow path.
        if end.saturating_sub(pos) < REC_HDR_STAMPED || cfg!(target_endian = "big") {
            return None;
        }
        let off = ((pos - self.bpos) / 8) as usize;
        let w: [u64; 4] = self.batch.get(off..off + 4)?.try_into().ok()?;
        let h = RecHdr::decode(w, pos, self.ring.geo().max_record)?;
        let size = h.size();
        if end - pos < size {
            return None;
        }
        self.accept(&h, pos + size);
        Some((h, off + h.words()))
    }

    /// Moves past a record read from the batch: cursor, sequence and
    /// counters.
    #[inline]
    fn accept(&mut self, h: &RecHdr, next: u64) {
        self.bnext = next;
        let c = &mut self.cursors[self.bslot];
        c.pos = next;
        match c.expect {
            Some(e) if h.seq == e => {}
            Some(e) if h.seq > e => {
                self.stats.lost = self.stats.lost.saturating_add(h.seq - e);
                if c.lapped {
                    self.stats.overrun = self.stats.overrun.saturating_add(h.seq - e);
                }
            }
            Some(_) => self.stats.reordered += 1,
            None => {}
        }
        c.expect = Some(h.seq.wrapping_add(1));
        c.lapped = false;
        self.stats.read += 1;
    }

    /// Refills from the slots in turn until a record turns up or every
    /// slot is read up to its head.
    #[inline(never)]
    fn next_slow(&mut self) -> Result<Option<(RecHdr, usize)>, RingError> {
        let n = self.ring.slots();
        let mut empty = 0;
        for _ in 0..4 * n + 4 {
            if let Some(h) = self.parse()? {
                return Ok(Some(h));
            }
            let slot = self.turn;
            self.turn = (self.turn + 1) % n;
            if self.fill(slot)? {
                empty = 0;
            } else {
                empty += 1;
                if empty >= n {
                    break;
                }
            }
        }
        Ok(None)
    }

    /// The next record of the batch: its header and the word index of its
    /// payload in `batch`. `None` when the batch is used up.
    fn parse(&mut self) -> Result<Option<(RecHdr, usize)>, RingError> {
        let end = self.bpos + self.bvalid;
        if self.bnext >= end {
            return Ok(None);
        }
        let pos = self.bnext;
        let off = ((pos - self.bpos) / 8) as usize;
        let max = self.ring.geo().max_record;
        let cut = |this: &mut Self| {
            // The record goes on past the copy: read it with the next one.
            this.bvalid = 0;
            this.bnext = this.bpos;
        };
        if end - pos < REC_HDR {
            if self.bfull {
                return self.corrupt(format!("head at {end} cuts a record header at {pos}"));
            }
            cut(self);
            return Ok(None);
        }
        let nh = RecHdr::words_for(self.batch[off]);
        if end - pos < 8 * nh as u64 {
            if self.bfull {
                return self.corrupt(format!("head at {end} cuts a record header at {pos}"));
            }
            cut(self);
            return Ok(None);
        }
        let mut w = [0; 4];
        w[..nh].copy_from_slice(&self.batch[off..off + nh]);
        let Some(h) = RecHdr::decode(w, pos, max) else {
            return self.corrupt(format!("bad record header at {pos}"));
        };
        let size = h.size();
        if end - pos < size {
            if self.bfull {
                return self.corrupt(format!("head at {end} cuts the record at {pos}"));
            }
            cut(self);
            return Ok(None);
        }
        self.accept(&h, pos + size);
        // The producer stored `u64::from_le_bytes` of the payload: back to
        // bytes in memory order (nothing to do on little-endian targets).
        if cfg!(target_endian = "big") {
            for w in &mut self.batch[off + nh..off + nh + (h.len as usize).div_ceil(8)] {
                *w = w.to_le();
            }
        }
        Ok(Some((h, off + nh)))
    }

    /// Counts a corruption in the batch's slot, moves its cursor to the
    /// slot's head and empties the batch.
    fn corrupt<T>(&mut self, reason: String) -> Result<Option<T>, RingError> {
        let slot = self.bslot;
        self.skip_to_head(slot);
        Err(RingError::Corrupt {
            zone: self.ring.zone().name().to_string(),
            slot,
            reason,
        })
    }

    fn skip_to_head(&mut self, slot: usize) {
        self.stats.corrupt += 1;
        let head = self.ring.slot(slot).head.load(Ordering::Acquire);
        let c = &mut self.cursors[slot];
        c.pos = head;
        c.expect = None;
        c.bad_head = Some(head);
        self.bvalid = 0;
        self.bnext = self.bpos;
    }

    /// Copies the unread records of `slot` (up to a batch) and validates
    /// the copy against the producer's claim. `Ok(false)` if there is
    /// nothing new.
    fn fill(&mut self, slot: usize) -> Result<bool, RingError> {
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
            let mut to = head.min(from.saturating_add(self.batch.len() as u64 * 8));
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
            let split = words.min(data.len() - first);
            let (b1, b2) = self.batch[..words].split_at_mut(split);
            for (b, d) in b1.iter_mut().zip(&data[first..first + split]) {
                *b = d.load(Ordering::Relaxed);
            }
            for (b, d) in b2.iter_mut().zip(data) {
                *b = d.load(Ordering::Relaxed);
            }
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

    /// Batching (off by default): while a slot's producer is writing, a
    /// refill leaves the records that reach into the cache line being
    /// written for a later call (and copies nothing while less than a
    /// largest record lies below that line), so the
    /// reader does not take the producer's current cache line away from it
    /// at every poll, which slows a producer that a reader follows
    /// closely. Once the head has not moved between two calls, a call
    /// reads up to it: an idle producer's last records are read on the
    /// second poll after they were written. For readers that poll in a
    /// loop and care for the producers' speed more than for a
    /// microsecond's delay (a log shipper, `shmzone-tail`).
    pub fn set_batching(&mut self, on: bool) {
        self.keep_off = if on {
            rec_size(self.ring.geo().max_record as u64, true) + LINE
        } else {
            0
        };
    }

    /// Records this reader missed so far (see [`ReaderStats::lost`]).
    pub fn lost(&self) -> u64 {
        self.stats.lost
    }

    /// Records handed out so far.
    pub fn read(&self) -> u64 {
        self.stats.read
    }

    /// This reader's counters and its lag behind every slot's head.
    pub fn stats(&self) -> ReaderStats {
        let mut st = self.stats;
        for (i, c) in self.cursors.iter().enumerate() {
            let s = self.ring.slot(i);
            let head = s.head.load(Ordering::Acquire);
            st.lag_bytes = st.lag_bytes.saturating_add(head.saturating_sub(c.pos));
            if let Some(e) = c.expect {
                st.lag_records = st
                    .lag_records
                    .saturating_add(s.next_seq.load(Ordering::Relaxed).saturating_sub(e));
            }
        }
        st
    }

    /// The ring this reader reads.
    pub fn ring(&self) -> &Ring<'a> {
        &self.ring
    }
}
