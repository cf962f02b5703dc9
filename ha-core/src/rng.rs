//! A small seeded random number generator (SplitMix64), shared by every
//! layer that needs reproducible randomness: the core's election timeouts
//! (so a run is a pure function of its inputs and seed), the transport's
//! reconnect jitter, the simulator and the benchmarks. Not for
//! cryptography.

/// SplitMix64 (Steele, Lea, Flood 2014): one `u64` of state, full period.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..hi` (`hi > lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(hi > lo, "rng range must not be empty");
        lo + self.next_u64() % (hi - lo)
    }

    /// True with probability `p` (0.0 ..= 1.0).
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_range_stays_in_bounds() {
        let mut a = SplitMix64::new(42);
        let mut b = SplitMix64::new(42);
        for _ in 0..1000 {
            let x = a.range(5, 9);
            assert_eq!(x, b.range(5, 9));
            assert!((5..9).contains(&x));
        }
        let mut c = SplitMix64::new(7);
        assert!((0..100).all(|_| !c.chance(0.0)));
        assert!((0..100).all(|_| c.chance(1.0)));
    }
}
