//! Hit ratio of the `tinylfu` and `lru` eviction policies under a Zipf workload, at a few
//! memory budgets. A read-through cache: every miss is followed by a set, as an
//! application in front of a database would do.
//!
//! Run with `make bench-eviction`; prints a table and writes it to
//! `bench/results/eviction.md`.

use std::fmt::Write as _;

use bytes::Bytes;
use dcache_node::clock::Clock;
use dcache_node::store::{
    ENTRY_OVERHEAD_BYTES, Entry, EvictionPolicy, Store, StoreConfig, ValueKind,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Zipf};

const KEYS: u64 = 100_000;
const VALUE_BYTES: usize = 100;
const REQUESTS: u64 = 2_000_000;
const SKEWS: [f64; 2] = [0.8, 1.0];
/// Budgets as a share of what the whole key space would weigh.
const BUDGET_SHARES: [f64; 4] = [0.01, 0.05, 0.10, 0.25];

fn main() {
    let per_entry = ("key:00000".len() + VALUE_BYTES) as u64 + ENTRY_OVERHEAD_BYTES;
    let mut table = String::new();
    writeln!(
        table,
        "Read-through hit ratio, {KEYS} keys of {VALUE_BYTES} B, {REQUESTS} requests per cell\n"
    )
    .unwrap();
    writeln!(
        table,
        "| Zipf s | budget (share of key space) | tinylfu | lru | tinylfu − lru |"
    )
    .unwrap();
    writeln!(table, "| --- | --- | --- | --- | --- |").unwrap();
    for skew in SKEWS {
        for share in BUDGET_SHARES {
            let budget = (KEYS as f64 * per_entry as f64 * share) as u64;
            let tinylfu = hit_ratio(EvictionPolicy::Tinylfu, budget, skew);
            let lru = hit_ratio(EvictionPolicy::Lru, budget, skew);
            let row = format!(
                "| {skew} | {} KiB ({:.0}%) | {:.1}% | {:.1}% | {:+.1} pts |",
                budget / 1024,
                share * 100.0,
                tinylfu * 100.0,
                lru * 100.0,
                (tinylfu - lru) * 100.0
            );
            println!("{row}");
            writeln!(table, "{row}").unwrap();
        }
    }
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/results");
    std::fs::create_dir_all(dir).expect("bench/results is writable");
    std::fs::write(format!("{dir}/eviction.md"), &table).expect("results written");
    println!("\n{table}");
}

fn hit_ratio(policy: EvictionPolicy, budget: u64, skew: f64) -> f64 {
    let store = Store::new(
        StoreConfig {
            max_memory: budget,
            eviction_policy: policy,
        },
        Clock::new(),
    );
    let zipf = Zipf::new(KEYS as f64, skew).expect("valid Zipf parameters");
    let mut rng = StdRng::seed_from_u64(42);
    let value = Bytes::from(vec![b'v'; VALUE_BYTES]);
    let mut hits = 0u64;
    for i in 0..REQUESTS {
        // Rank 1 is the most popular key; scatter ranks so popularity is not ordered.
        let rank = zipf.sample(&mut rng) as u64;
        let key = format!("key:{:05}", rank.wrapping_mul(7_919) % KEYS);
        if store.get(key.as_bytes()).is_some() {
            hits += 1;
        } else {
            store.set(
                Bytes::from(key),
                Entry {
                    kind: ValueKind::Bytes,
                    data: value.clone(),
                    expires_at: None,
                },
            );
        }
        if i % 1_000 == 0 {
            store.run_maintenance();
        }
    }
    hits as f64 / REQUESTS as f64
}
