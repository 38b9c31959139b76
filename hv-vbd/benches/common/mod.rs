//! What the hv-vbd benchmarks share: a deterministic random number generator, so every run
//! measures the same requests and extents, and the device numbers they use.

use shared_abi::DeviceNumber;

/// SplitMix64: tiny, fast and good enough to scatter offsets; seeded, so runs repeat.
pub struct Random(u64);

impl Random {
    pub fn new(seed: u64) -> Random {
        Random(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut mixed = self.0;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        mixed ^ (mixed >> 31)
    }

    /// A value in `0..bound` (`bound > 0`); the modulo bias is irrelevant at these sizes.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    /// Fisher-Yates, so extents can be scattered over the disk in a repeatable order.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for last in (1..items.len()).rev() {
            let other = self.below(last as u64 + 1) as usize;
            items.swap(last, other);
        }
    }
}

/// The physical disk every benchmark extent lives on.
pub fn hda() -> DeviceNumber {
    DeviceNumber::from_name("hda").expect("hda is a known device name")
}

/// The virtual device every benchmark VBD is.
pub fn xvda() -> DeviceNumber {
    DeviceNumber::from_name("xvda").expect("xvda is a known device name")
}
