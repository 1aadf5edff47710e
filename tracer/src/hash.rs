//! The hasher of the per-socket maps, which are looked up on every event: the keys are kernel
//! socket addresses and inode numbers, which no remote party chooses, so the flood-resistant
//! (and slower) SipHash of `std` buys nothing there. foldhash's fixed-seed hasher keeps runs
//! (and replays) deterministic.

use std::collections::HashMap;

/// A `HashMap` keyed by socket addresses or ids, with foldhash.
pub type AddrMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher as _;

    #[test]
    fn aligned_addresses_spread_over_low_and_high_bits() {
        // Socket addresses are slab-aligned: their low bits are always zero.
        let build = foldhash::fast::FixedState::default();
        let mut low = std::collections::HashSet::new();
        let mut high = std::collections::HashSet::new();
        for i in 0..4096u64 {
            let h = build.hash_one(0xffff_8881_0270_0000u64 + i * 2048);
            low.insert(h & 0xfff);
            high.insert(h >> 57);
        }
        // 4096 keys into 4096 buckets: a good hash fills about 63% of them; hashbrown's tag
        // (the top 7 bits) takes every value.
        assert!(low.len() > 2400, "{}", low.len());
        assert_eq!(high.len(), 128);
    }
}
