//! Reading a whole validated copy at once: [`Reader::read_batch`].
//!
//! [`Reader::next_record`] checks, counts and hands out one record per
//! call; a reader that polls in a loop (a log shipper, R1's reader) spends
//! most of its time on that per-call work rather than on the records.
//! `read_batch` runs the same checks over every record of one copy in a
//! tight loop and updates the cursor and the counters once per copy.

use super::layout::RecHdr;
use super::reader::{Reader, Record, SLACK};
use super::refill::{prefetch_word, LINE};
use super::RingError;

impl Reader<'_> {
    /// Hands the records of one validated copy to `f`, in order: what is
    /// left of the current copy, else a fresh copy of the next slot (in
    /// turn) that has unread records. Returns how many records `f` got;
    /// `Ok(0)` when every slot is read up to its head (poll again later).
    ///
    /// The same records, in the same order, with the same counts
    /// ([`lost`](Self::lost), [`stats`](Self::stats)) as calling
    /// [`next_record`](Self::next_record) until it returns `Ok(None)`, and
    /// the two can be mixed; it is cheaper per record: the header checks
    /// run in one loop over the copy, and the cursor and counters are
    /// stored once per copy. A copy holds at most [`BATCH_BYTES`] of
    /// records (or one largest record), so a call returns after at most
    /// that many (at most a few hundred 64-byte records).
    ///
    /// ```
    /// # use shmzone::ring::{Ring, RingConfig, Start};
    /// # use shmzone::Zones;
    /// # let cfg = RingConfig::default();
    /// # let zones = Zones::builder().zone("log", cfg.zone_size()).build()?;
    /// # let ring = Ring::create(&zones.get("log").unwrap(), &cfg)?;
    /// let mut reader = ring.reader(Start::Newest);
    /// let mut log = ring.producer()?;
    /// for i in 0..1000u32 {
    ///     log.write(&i.to_le_bytes())?;
    /// }
    /// let mut sum = 0u64;
    /// while reader.read_batch(|rec| sum += u32::from_le_bytes(rec.data.try_into().unwrap()) as u64)? > 0 {}
    /// assert_eq!((sum, reader.read(), reader.lost()), (499_500, 1000, 0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`next_record`](Self::next_record): [`RingError::Corrupt`] when a
    /// slot's words or a record fail their checks. The records of the copy
    /// before the bad one were handed to `f` already (and are counted in
    /// [`read`](Self::read)); the reader has skipped past, and the next
    /// call goes on.
    ///
    /// [`BATCH_BYTES`]: super::BATCH_BYTES
    pub fn read_batch<F: FnMut(Record<'_>)>(&mut self, mut f: F) -> Result<usize, RingError> {
        let n = self.ring.slots();
        let mut empty = 0;
        // As `next_slow`: every slot gets a few turns at most.
        for _ in 0..4 * n + 4 {
            // The fast loop, and whatever stops it one record at a time:
            // the copy's last records (it wants three header words in the
            // copy), a gap in the sequence numbers, a record the copy
            // cuts, a bad header. Bounded: each turn hands out a record or
            // ends the copy.
            let mut got = 0;
            loop {
                got += self.drain(&mut f);
                match self.parse()? {
                    Some((h, off)) => {
                        f(self.record_at(&h, off));
                        got += 1;
                    }
                    None => break,
                }
            }
            if got > 0 {
                return Ok(got);
            }
            if self.refill_turn(&mut empty)? {
                break;
            }
        }
        Ok(0)
    }

    /// The fast loop of [`read_batch`](Self::read_batch): hands out the
    /// copy's whole, sound records from `bnext` on while each carries the
    /// sequence number expected, and stops at the first one it is not sure
    /// of (fewer than three header words left, a record the copy cuts, a
    /// header that fails its check, a gap: anything to count), which
    /// [`parse`](Self::parse) then sorts out.
    #[inline]
    fn drain<F: FnMut(Record<'_>)>(&mut self, f: &mut F) -> usize {
        let c = self.cursors[self.bslot];
        let Some(first) = c.expect else {
            return 0;
        };
        if cfg!(target_endian = "big") || self.bnext >= self.bpos + self.bvalid {
            return 0;
        }
        let base = self.bpos;
        let slot = self.bslot;
        let max = self.ring.geo().max_record;
        // Words of the copy that were validated; `batch` has `SLACK` more,
        // so three header words can always be loaded from a valid one.
        let words = &self.batch[..];
        let valid = ((self.bvalid / 8) as usize).min(words.len() - SLACK);
        let wp = words.as_ptr();
        // SAFETY: `words` is a live slice of `u64`s, readable as bytes for
        // its whole length; the view lives no longer than the borrow of
        // `self.batch` it comes from.
        let bytes: &[u8] =
            unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), words.len() * 8) };
        let mut expect = first;
        let mut at = ((self.bnext - base) / 8) as usize;
        // While this copy is parsed, the next one's lines are asked for
        // (one copy's length ahead of the record being parsed), so that
        // they cross from the producer's core while this core computes:
        // below the head seen at the refill only (the lines past it are
        // the producer's to write).
        let slot_words = self.ring.data(slot);
        let ahead = self.bvalid;
        let pf_end = c.seen_head;
        let mut pf = (base + 8 * at as u64 + ahead) & !(LINE - 1);
        // Bounded: `at` grows by at least two words per record.
        while at < valid {
            // SAFETY: `at < valid <= words.len() - SLACK` and `SLACK >= 3`:
            // the three words lie in `words`.
            let w = unsafe { [*wp.add(at), *wp.add(at + 1), *wp.add(at + 2)] };
            let Some(h) = RecHdr::decode_seq(w, base + 8 * at as u64, max, expect) else {
                break;
            };
            let nh = h.words();
            let len = h.len as usize;
            let nw = nh + ((len + 7) >> 3);
            if nw > valid - at {
                break;
            }
            expect = expect.wrapping_add(1);
            // Bounded: `pf` only grows, by a line, up to a copy's length
            // past this copy.
            let pf_to = (base + 8 * (at + nw) as u64 + ahead).min(pf_end);
            while pf < pf_to {
                prefetch_word(slot_words, (pf / 8) as usize);
                pf += LINE;
            }
            let from = 8 * (at + nh);
            // SAFETY: `from + len <= 8 * (at + nw) <= 8 * valid <=
            // bytes.len()`, as `nw <= valid - at` was just checked.
            let data = unsafe { bytes.get_unchecked(from..from + len) };
            f(Record {
                slot,
                pid: h.pid,
                seq: h.seq,
                time_ns: (h.time != 0).then_some(h.time),
                data,
            });
            at += nw;
        }
        let got = expect.wrapping_sub(first);
        if got > 0 {
            let next = base + 8 * at as u64;
            self.bnext = next;
            let c = &mut self.cursors[slot];
            c.pos = next;
            c.expect = Some(expect);
            c.lapped = false;
            self.stats.read += got;
        }
        got as usize
    }
}
