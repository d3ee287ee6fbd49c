//! A producer's own memory of where some of its records start, so that
//! making room in a full slot jumps to a known record instead of walking
//! every header in between.

/// How many marks a producer keeps (a slot holds about 9 at once: one per
/// eighth of the slot, plus the partial ones at both ends).
const CAP: usize = 16;

/// The first record at or after each multiple of `step` bytes: its
/// position and sequence number, oldest first. Process-local.
#[derive(Clone, Debug)]
pub(crate) struct Marks {
    buf: [(u64, u64); CAP],
    first: usize,
    len: usize,
    /// The next multiple of `step` a record must reach to be marked.
    next: u64,
    step: u64,
}

impl Marks {
    /// Marks taken every `step` bytes (a power of two) from `pos` on.
    pub fn new(step: u64, pos: u64) -> Marks {
        debug_assert!(step.is_power_of_two());
        Marks {
            buf: [(0, 0); CAP],
            first: 0,
            len: 0,
            next: pos,
            step,
        }
    }

    /// Whether a record at `pos` is the first at or past the next
    /// multiple of `step`: one to [`push`](Self::push).
    #[inline]
    pub fn due(&self, pos: u64) -> bool {
        pos >= self.next
    }

    /// Remembers the record at `pos` (one [`due`](Self::due) said to).
    pub fn push(&mut self, pos: u64, seq: u64) {
        if self.len == CAP {
            // Full (only when the slot was never made room in): forget the
            // oldest; making room then walks headers from the tail.
            self.first = (self.first + 1) % CAP;
            self.len -= 1;
        }
        self.buf[(self.first + self.len) % CAP] = (pos, seq);
        self.len += 1;
        self.next = (pos | (self.step - 1)) + 1;
    }

    /// Forgets the marks before `limit`; the oldest one left (at or after
    /// `limit`), if any.
    pub fn first_from(&mut self, limit: u64) -> Option<(u64, u64)> {
        while self.len > 0 {
            let m = self.buf[self.first];
            if m.0 >= limit {
                return Some(m);
            }
            self.first = (self.first + 1) % CAP;
            self.len -= 1;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_mark_per_step_oldest_first() {
        let mut m = Marks::new(64, 0);
        for (i, pos) in (0..1000).step_by(40).enumerate() {
            if m.due(pos) {
                m.push(pos, i as u64);
            }
        }
        // Marks at 0, 80 (first >= 64), 160 (>= 128), 200 (>= 192), ...
        assert_eq!(m.first_from(0), Some((0, 0)));
        assert_eq!(m.first_from(1), Some((80, 2)));
        assert_eq!(m.first_from(161), Some((200, 5)));
        assert_eq!(m.first_from(10_000), None);
        assert!(m.due(10_000));
        m.push(10_000, 7);
        assert_eq!(m.first_from(0), Some((10_000, 7)));
    }
}
