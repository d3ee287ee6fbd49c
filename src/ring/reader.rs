//! The reading side: a cursor per slot, in the reader's own process.

use std::fmt;
use std::sync::atomic::Ordering;

use super::layout::{rec_size, seq_window, RecHdr, REC_HDR, REC_HDR_STAMPED};
use super::refill::LINE;
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
pub(super) struct Cursor {
    /// Byte position of the next record to read.
    pub(super) pos: u64,
    /// The sequence number the next record should carry, once known.
    pub(super) expect: Option<u64>,
    /// The slot's head when it was last found corrupted: the slot is
    /// skipped (silently) until its head moves.
    pub(super) bad_head: Option<u64>,
    /// The slot's head at the last refill (batching: a head that has not
    /// moved since is read up to).
    pub(super) seen_head: u64,
    /// The reader was lapped in this slot since its last record.
    pub(super) lapped: bool,
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
/// [`read_batch`](Self::read_batch) hands a whole copy (up to
/// [`BATCH_BYTES`] of records) to a closure per call, at about two thirds
/// of `next_record`'s cost per record: the one for readers that must keep
/// up with a fast producer.
pub struct Reader<'a> {
    pub(super) ring: Ring<'a>,
    pub(super) cursors: Vec<Cursor>,
    /// A copy of consecutive words of slot `bslot` from position `bpos`;
    /// `bvalid` bytes of it were validated; `bnext` is the next record's
    /// position; `bfull` says the copy reaches the slot's head.
    pub(super) batch: Vec<u64>,
    pub(super) bslot: usize,
    pub(super) bpos: u64,
    pub(super) bvalid: u64,
    pub(super) bnext: u64,
    pub(super) bfull: bool,
    /// The slot's `next_seq` loaded after the copy was validated: records
    /// in it carry sequence numbers in [`seq_window`] of it.
    pub(super) bseq: u64,
    /// With batching on, the bytes a refill leaves below a moving head
    /// (see [`set_batching`](Self::set_batching)); 0 when off.
    pub(super) keep_off: u64,
    /// The distance behind a moving head this reader keeps (see
    /// [`set_follow_distance`](Self::set_follow_distance)); 0 when off.
    pub(super) distance: u64,
    /// The slot to refill from next (round robin).
    pub(super) turn: usize,
    pub(super) stats: ReaderStats,
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

/// The most bytes of records a reader copies from a slot at once (unless
/// one largest record needs more): small enough that the copy is still in
/// the reader's L1 cache while it is parsed, big enough that a refill's
/// loads of the producer's header line are rare (one per about 200
/// 64-byte records).
pub const BATCH_BYTES: usize = 16 << 10;

/// Words of the copy buffer past the batch, so that the fast loop can
/// always load three header words (see `Reader::drain`).
pub(super) const SLACK: usize = 3;

/// The batch copied at once: at least one largest record, at most a slot.
fn batch_bytes(ring: &Ring<'_>) -> u64 {
    (BATCH_BYTES as u64)
        .max(2 * rec_size(ring.geo().max_record as u64, true))
        .min(ring.geo().slot_bytes)
}

impl<'a> Reader<'a> {
    pub(super) fn new(ring: Ring<'a>, start: Start) -> Reader<'a> {
        // Map every slot's pages into this process now: a reader that
        // takes a page fault per 4 KiB while it follows a producer falls
        // behind it (R1 in `benches/ring.rs`).
        for i in 0..ring.slots() {
            crate::os::populate(ring.data(i).as_ptr().cast(), ring.slot_bytes(), false);
        }
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
            batch: vec![0; (batch_bytes(&ring) / 8) as usize + SLACK],
            bslot: 0,
            bpos: 0,
            bvalid: 0,
            bnext: 0,
            bfull: false,
            bseq: 0,
            keep_off: 0,
            distance: 0,
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
        Ok(found.map(|(h, off)| self.record_at(&h, off)))
    }

    /// The record whose header `parse` decoded as `h`, with its payload
    /// from word `off` of the batch.
    #[inline]
    pub(super) fn record_at(&self, h: &RecHdr, off: usize) -> Record<'_> {
        // SAFETY: `parse` checked that `len` bytes from word `off` lie in
        // the batch; u64s are readable as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(self.batch.as_ptr().add(off).cast::<u8>(), h.len as usize)
        };
        Record {
            slot: self.bslot,
            pid: h.pid,
            seq: h.seq,
            time_ns: (h.time != 0).then_some(h.time),
            data: bytes,
        }
    }

    /// The common case of [`parse`](Self::parse): a whole, sound record in
    /// the batch. `None` for anything else, which the slow path sorts out.
    #[inline]
    fn parse_fast(&mut self) -> Option<(RecHdr, usize)> {
        let pos = self.bnext;
        let end = self.bpos + self.bvalid;
        // Three words (a stamped header) in the copy; a shorter rest is
        // left to the slow path.
        if end.saturating_sub(pos) < REC_HDR_STAMPED || cfg!(target_endian = "big") {
            return None;
        }
        let off = ((pos - self.bpos) / 8) as usize;
        let w: [u64; 3] = self.batch.get(off..off + 3)?.try_into().ok()?;
        let seqs = seq_window(self.bseq, self.ring.geo().slot_bytes);
        let h = RecHdr::decode(w, pos, self.ring.geo().max_record, seqs)?;
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
            if self.refill_turn(&mut empty)? {
                break;
            }
        }
        Ok(None)
    }

    /// Refills from the slot whose turn it is (round robin) and counts the
    /// slots found with nothing new in a row in `empty`; whether every
    /// slot has now been found so (time to stop looking).
    pub(super) fn refill_turn(&mut self, empty: &mut usize) -> Result<bool, RingError> {
        let n = self.ring.slots();
        let slot = self.turn;
        self.turn = (self.turn + 1) % n;
        if self.fill(slot)? {
            *empty = 0;
        } else {
            *empty += 1;
        }
        Ok(*empty >= n)
    }

    /// The next record of the batch: its header and the word index of its
    /// payload in `batch`. `None` when the batch is used up.
    pub(super) fn parse(&mut self) -> Result<Option<(RecHdr, usize)>, RingError> {
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
        let mut w = [0; 3];
        w[..nh].copy_from_slice(&self.batch[off..off + nh]);
        let seqs = seq_window(self.bseq, self.ring.geo().slot_bytes);
        let Some(h) = RecHdr::decode(w, pos, max, seqs) else {
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

    pub(super) fn skip_to_head(&mut self, slot: usize) {
        self.stats.corrupt += 1;
        let head = self.ring.slot(slot).head.load(Ordering::Acquire);
        let c = &mut self.cursors[slot];
        c.pos = head;
        c.expect = None;
        c.bad_head = Some(head);
        self.bvalid = 0;
        self.bnext = self.bpos;
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

    /// Follows a writing producer at a distance (0, the default: off):
    /// while a slot's head moves between two calls, a refill reads only
    /// records at least `bytes` behind it; once the head has not moved
    /// between two calls, it reads up to it. A record that far behind the
    /// producer has left the producer's core's own caches, so the reader
    /// takes its lines from the shared cache or from memory instead of
    /// from that core, which neither side then waits for: in R1
    /// (`benches/ring.rs`, R1follow) 1 MiB took the reader from about 16.6
    /// to 6.1 ns per record and the producer from 17.2 to 8.2 in the same
    /// runs. It reads in copies that end `bytes` behind the head, once a
    /// copy's worth (or a quarter of a small slot) lies there. The price is latency:
    /// a producer that writes steadily but slowly has its records read
    /// only once `bytes` of them are there or it pauses for a call. For
    /// readers that must keep up with fast producers (a log shipper), not
    /// for `tail -f`. Capped at a quarter of the slot size (a reader kept
    /// further back would be lapped sooner).
    pub fn set_follow_distance(&mut self, bytes: usize) {
        self.distance = (bytes as u64).min(self.ring.geo().slot_bytes / 4);
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
