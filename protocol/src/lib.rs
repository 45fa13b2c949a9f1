//! The shared contract between dcache nodes, clients and the operator.
//!
//! It holds only what every side must agree on byte for byte: how a key maps to a
//! partition ([`partition_of`]) and the JSON bodies of the HTTP API ([`wire`], and
//! [`cluster`] for the admin API). It has no
//! heavy dependencies so that any client can take it.

pub mod cluster;
pub mod wire;

/// Partitions per cluster unless configured otherwise.
pub const DEFAULT_PARTITIONS: u32 = 64;

/// Redis Cluster's hash slots. Every key has one; a partition owns a contiguous range
/// of them, so a cluster may have at most this many partitions.
pub const SLOTS: u16 = 16_384;

/// A partition number, `0..partitions`.
pub type PartitionId = u32;

/// A Redis Cluster hash slot, `0..SLOTS`.
pub type Slot = u16;

/// The 64-bit hash dcache uses where it needs one that is not a key's slot (the
/// placement ring's points).
///
/// XXH3 is specified independently of platform and version, so nodes, clients and the
/// operator built at different times agree on it forever; changing it would move every
/// partition of every existing cluster.
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

const CRC16: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_XMODEM);

/// The hash slot of `key`, exactly as Redis Cluster computes it: CRC16/XMODEM mod
/// 16,384, of the key's hash tag (the bytes between the first `{` and the next `}`)
/// when that is not empty, so `{user:1}:name` and `{user:1}:mail` share a slot.
pub fn key_slot(key: &[u8]) -> Slot {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    CRC16.checksum(hashed) % SLOTS
}

/// The partition that owns `slot` when the 16,384 slots are cut into `partitions`
/// contiguous ranges of (nearly) equal size.
///
/// # Panics
/// If `partitions` is zero.
pub fn slot_partition(slot: Slot, partitions: u32) -> PartitionId {
    assert!(partitions > 0, "a cluster has at least one partition");
    (u32::from(slot) * partitions) / u32::from(SLOTS)
}

/// The slots `partition` owns, first and last inclusive: the inverse of
/// [`slot_partition`]. `None` when the partition owns no slot, which happens only with
/// more partitions than slots.
pub fn partition_slots(partition: PartitionId, partitions: u32) -> Option<(Slot, Slot)> {
    let slots = u64::from(SLOTS);
    let (p, n) = (u64::from(partition), u64::from(partitions));
    // The first slot s with s * n / SLOTS >= p is ceil(p * SLOTS / n).
    let first = (p * slots).div_ceil(n);
    let end = ((p + 1) * slots).div_ceil(n).min(slots);
    (first < end).then(|| (first as Slot, (end - 1) as Slot))
}

/// The partition that owns `key` in a cluster of `partitions` partitions: the one that
/// owns its Redis Cluster slot, so that the HTTP API, the smart client and the RESP
/// listener agree on where every key lives.
///
/// # Panics
/// If `partitions` is zero.
pub fn partition_of(key: &[u8], partitions: u32) -> PartitionId {
    slot_partition(key_slot(key), partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_across_builds() {
        // Pinned values: if these change, every deployed cluster would re-shard.
        assert_eq!(key_hash(b""), 0x2d06800538d394c2);
        assert_eq!(partition_of(b"user:123", 64), partition_of(b"user:123", 64));
    }

    #[test]
    fn key_slots_are_redis_clusters() {
        // CRC16/XMODEM's check value, and slots Redis's CLUSTER KEYSLOT answers.
        assert_eq!(CRC16.checksum(b"123456789"), 0x31c3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b""), 0);
        assert_eq!(key_slot(b"somekey"), 11058);
    }

    #[test]
    fn hash_tags_pick_the_hashed_bytes() {
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"{user1000}.followers"), key_slot(b"user1000"));
        // Only the first `{`, up to the first `}` after it, and never an empty tag.
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"{unclosed"), CRC16.checksum(b"{unclosed") % SLOTS);
    }

    #[test]
    fn partitions_own_contiguous_slot_ranges() {
        for partitions in [1, 2, 3, 7, 64, 100, 4096, 16_384] {
            let mut next = 0u32;
            for partition in 0..partitions {
                let (first, last) = partition_slots(partition, partitions).unwrap();
                assert_eq!(u32::from(first), next, "{partition}/{partitions}");
                assert!(first <= last);
                assert_eq!(slot_partition(first, partitions), partition);
                assert_eq!(slot_partition(last, partitions), partition);
                next = u32::from(last) + 1;
            }
            assert_eq!(
                next,
                u32::from(SLOTS),
                "{partitions} partitions cover every slot"
            );
        }
        assert_eq!(partition_slots(0, 64), Some((0, 255)));
        assert_eq!(partition_slots(63, 64), Some((16_128, 16_383)));
    }

    #[test]
    fn partitions_are_in_range_and_balanced() {
        let partitions = 64;
        let mut counts = vec![0u32; partitions as usize];
        for i in 0..64_000 {
            let p = partition_of(format!("key:{i}").as_bytes(), partitions);
            counts[p as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        // 1000 expected per partition; a fair hash stays well within ±20%.
        assert!(*min > 800 && *max < 1200, "min {min} max {max}");
    }

    #[test]
    fn single_partition_takes_everything() {
        assert_eq!(partition_of(b"anything", 1), 0);
    }
}
