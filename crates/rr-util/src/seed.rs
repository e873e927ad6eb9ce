//! SplitMix64 and keyed seed hashing: the one source of the project's deterministic random
//! streams (held-out splits, loader orders, mixture draws, synthetic problems, recurrence draws).
//!
//! Everything here is a fixed arithmetic formula, not `rand`, whose generators are not promised
//! value-stable across versions: a packed set, a loader state, a synthetic data file or a
//! training run made today must reproduce bit for bit later. The tests below pin the values.

/// SplitMix64's additive constant, 2^64 / φ rounded to odd.
pub const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// The SplitMix64 finaliser: a bijection on `u64` with full avalanche (`mix(0) == 0`).
pub const fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One SplitMix64 step from state `x`: `mix(x + GOLDEN)`, the first output of
/// [`SplitMix64::new(x)`](SplitMix64::new).
pub const fn splitmix64(x: u64) -> u64 {
    mix(x.wrapping_add(GOLDEN))
}

/// Output `index` (0-based) of the SplitMix64 stream whose state starts at `start`, without
/// stepping through the ones before: `mix(start + (index + 1) * GOLDEN)`. Injective in `index`
/// for a fixed `start`.
pub const fn stream(start: u64, index: u64) -> u64 {
    mix(start.wrapping_add(index.wrapping_add(1).wrapping_mul(GOLDEN)))
}

/// Hash of a sequence of words, order-sensitive; used to key independent streams
/// (`hash(&[seed, TAG, epoch])`).
pub fn hash(words: &[u64]) -> u64 {
    let mut h = 0x243f_6a88_85a3_08d3u64; // π
    for &w in words {
        h = mix(h ^ mix(w.wrapping_add(GOLDEN)));
    }
    h
}

/// `[0, 1)` with 53 random bits from one 64-bit word.
pub fn unit(word: u64) -> f64 {
    (word >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// The SplitMix64 generator.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix(self.0)
    }

    /// Uniform in `0..n` without modulo bias (Lemire's multiply-and-reject). `n > 0`.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        let mut m = (self.next_u64() as u128) * (n as u128);
        if (m as u64) < n {
            let threshold = n.wrapping_neg() % n;
            while (m as u64) < threshold {
                m = (self.next_u64() as u128) * (n as u128);
            }
        }
        (m >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi);
        lo + self.below(hi - lo + 1)
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins every formula: data files, loader states and training runs depend on these values.
    #[test]
    fn golden_values() {
        assert_eq!(mix(0), 0);
        assert_eq!(mix(1), 0x5692_161d_100b_05e5);
        assert_eq!(mix(u64::MAX), 0xb4d0_55fc_f2cb_bd7b);
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(hash(&[]), 0x243f_6a88_85a3_08d3);
        assert_eq!(hash(&[7]), 0xf620_00b8_338f_a008);
        assert_eq!(hash(&[1, 2, 3]), 0xaf85_7a00_7308_ad61);
        assert_eq!(unit(hash(&[1, 2, 3])), 0.6856304408165977);
        let mut rng = SplitMix64::new(42);
        let got: Vec<u64> = (0..4).map(|_| rng.next_u64()).collect();
        assert_eq!(
            got,
            [
                0xbdd7_3226_2feb_6e95,
                0x28ef_e333_b266_f103,
                0x4752_6757_130f_9f52,
                0x581c_e1ff_0e4a_e394
            ]
        );
        let mut rng = SplitMix64::new(5);
        let got: Vec<u64> = (0..10).map(|_| rng.below(10)).collect();
        assert_eq!(got, [3, 7, 2, 0, 1, 3, 9, 5, 4, 6]);
    }

    #[test]
    fn stream_is_the_generator_without_stepping() {
        for start in [0u64, 42, u64::MAX] {
            let mut rng = SplitMix64::new(start);
            assert_eq!(splitmix64(start), stream(start, 0));
            for i in 0..100 {
                assert_eq!(rng.next_u64(), stream(start, i));
            }
        }
    }

    #[test]
    fn below_is_in_range_and_roughly_uniform() {
        let mut rng = SplitMix64::new(7);
        let mut counts = [0usize; 6];
        for _ in 0..60_000 {
            counts[rng.below(6) as usize] += 1;
        }
        for c in counts {
            assert!((9_400..10_600).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn hash_is_order_sensitive() {
        assert_ne!(hash(&[1, 2]), hash(&[2, 1]));
        assert_eq!(hash(&[1, 2]), hash(&[1, 2]));
    }

    #[test]
    fn unit_is_in_the_unit_interval() {
        assert_eq!(unit(0), 0.0);
        assert!(unit(u64::MAX) < 1.0);
    }
}
