//! A ring's counters, as plain data (for `/stats`, `/metrics`,
//! `shmzone-stat`).

use std::sync::atomic::Ordering;

use super::Ring;

/// One slot's counters and positions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotStats {
    /// The slot.
    pub slot: usize,
    /// The pid that owns the slot now, 0 if free (the owner may be dead:
    /// its slot is taken over by the next producer that needs one).
    pub owner: u32,
    /// Times the slot was claimed.
    pub claims: u32,
    /// Records written.
    pub written: u64,
    /// Payload bytes written.
    pub bytes: u64,
    /// Old records dropped to make room for new ones (written over at
    /// once or up to an eighth of the slot later: a reader that had
    /// reached them may still read those not yet written over).
    pub overwritten: u64,
    /// Records refused as longer than the maximum.
    pub dropped: u64,
    /// Records left half-written by a producer that died.
    pub torn: u64,
    /// Times a producer reset the slot's inconsistent positions.
    pub repaired: u64,
    /// Sequence number of the next record.
    pub next_seq: u64,
    /// Bytes of records the slot holds now (head − tail).
    pub held_bytes: u64,
}

/// Every slot's counters, and their sums.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    /// The zone the ring lives in.
    pub zone: String,
    /// Bytes of records each slot holds.
    pub slot_bytes: u64,
    /// The longest record payload.
    pub max_record: u64,
    /// Per slot.
    pub slots: Vec<SlotStats>,
    /// Slots owned now.
    pub producers: usize,
    /// Sum of [`SlotStats::written`].
    pub written: u64,
    /// Sum of [`SlotStats::bytes`].
    pub bytes: u64,
    /// Sum of [`SlotStats::overwritten`].
    pub overwritten: u64,
    /// Sum of [`SlotStats::dropped`].
    pub dropped: u64,
    /// Sum of [`SlotStats::torn`].
    pub torn: u64,
}

impl RingStats {
    pub(super) fn collect(ring: &Ring<'_>) -> RingStats {
        let mut st = RingStats {
            zone: ring.zone().name().to_string(),
            slot_bytes: ring.slot_bytes() as u64,
            max_record: ring.max_record() as u64,
            ..RingStats::default()
        };
        for i in 0..ring.slots() {
            let s = ring.slot(i);
            let r = Ordering::Relaxed;
            let head = s.head.load(r);
            let slot = SlotStats {
                slot: i,
                owner: s.owner.load(r),
                claims: s.claims.load(r),
                written: s.written.load(r),
                bytes: s.bytes.load(r),
                overwritten: s.overwritten.load(r),
                dropped: s.dropped.load(r),
                torn: s.torn.load(r),
                repaired: s.repaired.load(r),
                next_seq: s.next_seq.load(r),
                held_bytes: head.saturating_sub(s.tail.load(r)),
            };
            st.producers += usize::from(slot.owner != 0);
            st.written = st.written.saturating_add(slot.written);
            st.bytes = st.bytes.saturating_add(slot.bytes);
            st.overwritten = st.overwritten.saturating_add(slot.overwritten);
            st.dropped = st.dropped.saturating_add(slot.dropped);
            st.torn = st.torn.saturating_add(slot.torn);
            st.slots.push(slot);
        }
        st
    }
}
