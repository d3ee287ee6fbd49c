//! What a ring keeps in shared memory: the ring header, one header per
//! slot, each slot's data words, and the record format.
//!
//! Everything is addressed by offsets from the zone's start; positions in a
//! slot are byte counts since the slot was made (`u64`, never wrapping in
//! practice), reduced to a word index with the slot's mask.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use static_assertions::const_assert_eq;

/// "shmzRNG1", little-endian: the first word of a ring header.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"shmzRNG1");
/// The layout version of a ring header, slot headers and records.
pub(crate) const VERSION: u32 = 3;

/// Bytes of a record's header without a time: length and pid, keyed
/// sequence.
pub(crate) const REC_HDR: u64 = 16;
/// Bytes of a record's header with a time: length and pid, keyed
/// sequence, time.
pub(crate) const REC_HDR_STAMPED: u64 = 24;
/// Bit of a record's first word (above the length) saying that a time
/// word follows the sequence word.
const STAMPED: u64 = 1 << 31;
/// The bits of a record's first word that hold its length.
const LEN_MASK: u64 = STAMPED - 1;
/// Flag in [`RingHdr::flags`]: producers stamp records with the time.
pub(crate) const F_STAMP: u32 = 1;

/// Salt of the record key, so zeroed memory never passes.
const REC_SALT: u64 = 0x5bd1_e995_a5a5_3c3c;
/// Salt of the ring-header check.
const HDR_SALT: u64 = 0x6a09_e667_f3bc_c908;

/// The ring header, at the offset the zone's root holds.
///
/// Written once by [`Ring::create`](super::Ring::create) before the magic
/// is stored (last, with release); never changed after.
#[repr(C, align(64))]
pub(crate) struct RingHdr {
    /// [`MAGIC`] once the ring is complete.
    pub magic: AtomicU64,
    pub version: u32,
    pub nslots: u32,
    /// Data bytes per slot, a power of two.
    pub slot_bytes: u64,
    pub max_record: u32,
    pub flags: u32,
    /// Offset (from the zone's start) of the slot headers.
    pub slots_off: u64,
    /// Offset (from the zone's start) of slot 0's data; slot `i`'s data is
    /// `slot_bytes` after slot `i - 1`'s.
    pub data_off: u64,
    /// Offset of the zone allocation that holds all of it.
    pub block_off: u64,
    /// [`hdr_check`] of the fields above.
    pub check: u64,
}
const_assert_eq!(std::mem::size_of::<RingHdr>(), 64);
const_assert_eq!(std::mem::align_of::<RingHdr>(), 64);

/// The plain fields of a [`RingHdr`], copied out of shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub nslots: u32,
    pub slot_bytes: u64,
    pub max_record: u32,
    pub flags: u32,
    pub slots_off: u64,
    pub data_off: u64,
    pub block_off: u64,
}

impl Geometry {
    /// The check word a header with these fields carries.
    pub fn check(&self, version: u32) -> u64 {
        let mut h = HDR_SALT ^ version as u64;
        for w in [
            self.nslots as u64,
            self.slot_bytes,
            self.max_record as u64,
            self.flags as u64,
            self.slots_off,
            self.data_off,
            self.block_off,
        ] {
            h = mix(h ^ w);
        }
        h
    }
}

/// One producer slot's header: the producer's positions on the first cache
/// line, its counters on the second.
///
/// | word | written by | meaning |
/// |---|---|---|
/// | `owner` | claim (CAS) | pid of the producer, 0 = free |
/// | `head` | producer, release, after a record | end of the last complete record |
/// | `claim` | producer, before writing | end of the record being written (`>= head`); bytes before `claim - slot_bytes` are overwritten |
/// | `tail` | producer, before writing | start of the oldest record still intact |
/// | `next_seq` | producer, before writing | sequence number of the next record |
/// | `mark` | producer, release, after the head passed it | start of a recent complete record (one every eighth of the slot): where a reader lapped again and again lands |
#[repr(C, align(64))]
pub(crate) struct SlotHdr {
    pub head: AtomicU64,
    pub claim: AtomicU64,
    pub tail: AtomicU64,
    pub next_seq: AtomicU64,
    pub owner: AtomicU32,
    /// How many times the slot was claimed.
    pub claims: AtomicU32,
    /// Start of a recent complete record, stored (release) after `head`.
    pub mark: AtomicU64,
    pub _pad0: [u64; 2],
    /// Records written.
    pub written: AtomicU64,
    /// Payload bytes written.
    pub bytes: AtomicU64,
    /// Old records dropped to make room (lost to readers that had not read
    /// them yet, but for the ones a reader already behind the tail reads
    /// before they are written over).
    pub overwritten: AtomicU64,
    /// Records refused (longer than the maximum).
    pub dropped: AtomicU64,
    /// Records left half-written by a producer that died.
    pub torn: AtomicU64,
    /// Times a producer found the slot's words inconsistent and reset them.
    pub repaired: AtomicU64,
    pub _pad1: [u64; 2],
}
const_assert_eq!(std::mem::size_of::<SlotHdr>(), 128);
const_assert_eq!(std::mem::align_of::<SlotHdr>(), 64);

impl SlotHdr {
    /// Adds `n` to a counter only this slot's producer writes (a load and
    /// a store: no read-modify-write needed with one writer).
    #[inline]
    pub fn bump(counter: &AtomicU64, n: u64) {
        counter.store(
            counter.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
}

/// A strong 64-bit mixer (the finaliser of SplitMix64).
#[inline]
pub(crate) fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The key of a record with first word `w0` and time `time` (0 if none)
/// at byte position `pos`; the record's second word is its sequence number
/// xor this key. One multiply (the reader decodes every record, the
/// producer makes one per record), not a checksum of the payload: torn
/// records are kept out by the publishing order, this only makes memory
/// that is not a record (read from the wrong place, from an older lap, or
/// garbage) decode to a sequence number far from any the slot has given
/// out, which the reader rejects.
#[inline]
pub(crate) fn rec_key(w0: u64, time: u64, pos: u64) -> u64 {
    let x = (w0 ^ time.rotate_left(17) ^ pos ^ REC_SALT).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^ (x >> 32)
}

/// Bytes a record of `len` payload bytes takes: the header (with or
/// without a time) plus the payload rounded up to 8.
#[inline]
pub(crate) fn rec_size(len: u64, stamped: bool) -> u64 {
    REC_HDR + 8 * stamped as u64 + ((len + 7) & !7)
}

/// The sequence numbers a record in a slot can carry, given the slot's
/// `next_seq` (loaded after the record's words were found complete) and
/// its size: the ones given out before `next_seq`, at most one lap of the
/// smallest records back (plus one, a record torn by a death). Memory
/// that is not a record decodes to a number in it with odds of about
/// `cap / 2^68`.
#[inline]
pub(crate) fn seq_window(next_seq: u64, cap: u64) -> std::ops::Range<u64> {
    next_seq.saturating_sub(cap / REC_HDR + 2)..next_seq
}

/// A decoded record header (`time` 0: the record has no time word).
///
/// In the slot: `len | STAMPED << 31 | pid << 32`, `seq ^ rec_key(..)`,
/// then `time` if stamped: two words, or three with a time.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecHdr {
    pub len: u32,
    pub pid: u32,
    pub seq: u64,
    pub time: u64,
}

impl RecHdr {
    /// Header words of a record whose first word is `w0`: 2 or 3.
    #[inline]
    pub fn words_for(w0: u64) -> usize {
        2 + (w0 & STAMPED != 0) as usize
    }

    /// Header words of this record.
    #[inline]
    pub fn words(&self) -> usize {
        2 + (self.time != 0) as usize
    }

    /// Bytes this record takes in the slot.
    #[inline]
    pub fn size(&self) -> u64 {
        rec_size(self.len as u64, self.time != 0)
    }

    /// Decodes the header whose words `w` were read at `pos` (the third
    /// word only counts for a stamped record: callers that have only two
    /// words pass 0 for it); `None` if its sequence number is outside
    /// `seqs` (see [`seq_window`]), a stamped record has time 0, or the
    /// length is over `max`.
    #[inline]
    pub fn decode(w: [u64; 3], pos: u64, max: u32, seqs: std::ops::Range<u64>) -> Option<RecHdr> {
        let [w0, w1, w2] = w;
        let time = if w0 & STAMPED != 0 { w2 } else { 0 };
        let seq = w1 ^ rec_key(w0, time, pos);
        let len = (w0 & LEN_MASK) as u32;
        if !seqs.contains(&seq) || (w0 & STAMPED != 0 && time == 0) || len > max {
            return None;
        }
        Some(RecHdr {
            len,
            pid: (w0 >> 32) as u32,
            seq,
            time,
        })
    }

    /// [`decode`](Self::decode) for a record that must carry sequence
    /// number `seq` (the one after the last record read).
    #[inline(always)]
    pub fn decode_seq(w: [u64; 3], pos: u64, max: u32, seq: u64) -> Option<RecHdr> {
        let [w0, w1, w2] = w;
        let stamped = w0 & STAMPED != 0;
        let time = if stamped { w2 } else { 0 };
        let len = (w0 & LEN_MASK) as u32;
        if w1 ^ rec_key(w0, time, pos) != seq || (stamped && time == 0) || len > max {
            return None;
        }
        Some(RecHdr {
            len,
            pid: (w0 >> 32) as u32,
            seq,
            time,
        })
    }

    /// The header words of this record at `pos` (the first
    /// [`words`](Self::words) of them).
    #[inline]
    pub fn encode(&self, pos: u64) -> [u64; 3] {
        let stamped = self.time != 0;
        let w0 = self.len as u64 | if stamped { STAMPED } else { 0 } | (self.pid as u64) << 32;
        [w0, self.seq ^ rec_key(w0, self.time, pos), self.time]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_header_round_trip_and_check() {
        let cap = 1 << 20;
        let all = seq_window(1000, cap);
        for time in [99, 0] {
            let h = RecHdr {
                len: 61,
                pid: 4242,
                seq: 7,
                time,
            };
            let w = h.encode(4096);
            let n = h.words();
            assert_eq!((n, RecHdr::words_for(w[0])), (3 - (time == 0) as usize, n));
            let d = RecHdr::decode(w, 4096, 100, all.clone()).unwrap();
            assert_eq!((d.len, d.pid, d.seq, d.time), (61, 4242, 7, time));
            assert!(
                RecHdr::decode(w, 4096 + cap, 100, all.clone()).is_none(),
                "other lap"
            );
            assert!(
                RecHdr::decode(w, 4096, 60, all.clone()).is_none(),
                "over the maximum"
            );
            assert!(
                RecHdr::decode(w, 4096, 100, 8..9).is_none(),
                "not the one expected"
            );
            assert!(RecHdr::decode(w, 4096, 100, 7..8).is_some());
            let mut bad = w;
            bad[0] ^= 1 << 40;
            assert!(
                RecHdr::decode(bad, 4096, 100, all.clone()).is_none(),
                "pid changed"
            );
            if time != 0 {
                bad = w;
                bad[2] ^= 1;
                assert!(
                    RecHdr::decode(bad, 4096, 100, all.clone()).is_none(),
                    "time changed"
                );
            }
        }
        assert!(
            RecHdr::decode([0; 3], 0, 100, all.clone()).is_none(),
            "zeroed memory"
        );
        assert_eq!(seq_window(5, cap), 0..5);
        assert_eq!(seq_window(1 << 40, cap), (1 << 40) - cap / 16 - 2..1 << 40);
        assert_eq!(rec_size(0, false), 16);
        assert_eq!(rec_size(1, false), 24);
        assert_eq!(rec_size(64, false), 80);
        assert_eq!(rec_size(64, true), 88);
    }
}
