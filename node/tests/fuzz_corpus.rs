//! Every fuzz target (see `fuzz/`) over its seeds, the crashes it once found
//! (`fuzz/regressions/<target>/`), and a few thousand deterministic mutations of the
//! seeds: a small fuzzing run on every `make test`, on the stable toolchain.

use std::path::Path;

use dcache_node::fuzzing::{TARGETS, seeds};

const MUTATIONS_PER_SEED: usize = 400;

/// A tiny deterministic generator (xorshift), so a failure replays exactly.
struct Mutator(u64);

impl Mutator {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// Flips, overwrites, inserts, removes or truncates a few bytes (never the first
    /// two, which pick what the target does with the rest).
    fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        let mut input = seed.to_vec();
        for _ in 0..1 + self.below(4) {
            let at = 2 + self.below(input.len().saturating_sub(2));
            match self.below(5) {
                0 if at < input.len() => input[at] ^= 1 << self.below(8),
                1 if at < input.len() => input[at] = self.next() as u8,
                2 => input.insert(at.min(input.len()), self.next() as u8),
                3 if at < input.len() => {
                    input.remove(at);
                }
                _ => input.truncate(at),
            }
        }
        input
    }
}

fn regressions(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .map(|entry| {
            let path = entry.expect("a readable directory").path();
            let bytes = std::fs::read(&path).expect("a readable regression input");
            (path.display().to_string(), bytes)
        })
        .collect()
}

#[test]
fn every_target_survives_its_seeds_regressions_and_mutations() {
    for (name, target) in TARGETS {
        let seeds = seeds(name);
        assert!(!seeds.is_empty(), "{name} has seeds");
        for seed in &seeds {
            target(seed);
        }
        for (path, input) in regressions(name) {
            eprintln!("{name}: replaying {path}");
            target(&input);
        }
        let mut mutator = Mutator(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
        for seed in &seeds {
            for _ in 0..MUTATIONS_PER_SEED {
                let input = mutator.mutate(seed);
                // Printed only when the target panics, so the input can be kept.
                let result = std::panic::catch_unwind(|| target(&input));
                assert!(
                    result.is_ok(),
                    "{name} panicked on {input:?}: save it under fuzz/regressions/{name}/"
                );
            }
        }
    }
}
