//! A small seeded generator for ids and session tokens. Not for secrets: access-control keys
//! come from the runtime's OS randomness.

/// splitmix64: expands one seed into a stream of well-mixed values. Small and fast; what
/// seeds the other generators, picks test faults, and draws STUN transaction ids.
///
/// ```
/// use peerpouch::rand::SplitMix64;
///
/// let (mut a, mut b) = (SplitMix64::new(7), SplitMix64::new(7));
/// assert_eq!(a.next_u64(), b.next_u64());
/// assert_ne!(a.next_u64(), SplitMix64::new(8).next_u64());
/// ```
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator whose whole output is determined by `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// xoshiro256** seeded through splitmix64: fast, deterministic, and good enough to make
/// collision-free ids from a random seed.
#[derive(Clone, Debug)]
pub struct SeededRng {
    s: [u64; 4],
}

impl SeededRng {
    /// A generator whose whole output is determined by `seed`.
    pub fn new(seed: u64) -> SeededRng {
        let mut mix = SplitMix64::new(seed);
        SeededRng {
            s: [
                mix.next_u64(),
                mix.next_u64(),
                mix.next_u64(),
                mix.next_u64(),
            ],
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// 128 random bits as 32 lower-case hex digits (the shape of a CouchDB UUID).
    pub fn hex_id(&mut self) -> String {
        format!("{:016x}{:016x}", self.next_u64(), self.next_u64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_ids_and_different_seeds_differ() {
        let (mut a, mut b, mut c) = (SeededRng::new(1), SeededRng::new(1), SeededRng::new(2));
        let ia: Vec<String> = (0..3).map(|_| a.hex_id()).collect();
        let ib: Vec<String> = (0..3).map(|_| b.hex_id()).collect();
        assert_eq!(ia, ib);
        assert_ne!(ia[0], c.hex_id());
        assert_eq!(ia[0].len(), 32);
        assert!(ia[0] != ia[1] && ia[1] != ia[2]);
    }
}
