//! Which messages one client has received: a bitmap over the message index
//! (offset after the subscription's start, or publisher sequence), so that
//! duplicates are caught whatever order messages arrive in, and losses are
//! what is missing when the run ends.

/// Indexes beyond this are not tracked (counted as unexpected): 2^28 bits = 32 MiB.
const MAX_INDEX: u64 = 1 << 28;

/// What recording one message found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    New,
    Duplicate,
    Unexpected,
}

/// Received message indexes of one client.
#[derive(Debug, Default)]
pub struct Seen {
    bits: Vec<u64>,
    pub distinct: u64,
    pub duplicated: u64,
    pub unexpected: u64,
}

impl Seen {
    pub fn record(&mut self, index: u64) -> Mark {
        if index >= MAX_INDEX {
            self.unexpected += 1;
            return Mark::Unexpected;
        }
        let (word, bit) = ((index / 64) as usize, index % 64);
        if word >= self.bits.len() {
            self.bits.resize((word + 1).next_power_of_two(), 0);
        }
        let mask = 1u64 << bit;
        if self.bits[word] & mask != 0 {
            self.duplicated += 1;
            Mark::Duplicate
        } else {
            self.bits[word] |= mask;
            self.distinct += 1;
            Mark::New
        }
    }

    /// Counts something that cannot be placed (no sequence, offset before the start).
    pub fn unplaceable(&mut self) -> Mark {
        self.unexpected += 1;
        Mark::Unexpected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_in_any_order() {
        let mut s = Seen::default();
        assert_eq!(s.record(5), Mark::New);
        assert_eq!(s.record(0), Mark::New);
        assert_eq!(s.record(5), Mark::Duplicate);
        assert_eq!(s.record(1000), Mark::New);
        assert_eq!(s.record(MAX_INDEX), Mark::Unexpected);
        assert_eq!((s.distinct, s.duplicated, s.unexpected), (3, 1, 1));
    }
}
