//! Writes each fuzz target's seeds into `<dir>/<target>/` (the working corpus of
//! `make fuzz`); existing files are kept, so a corpus grows across runs.

use dcache_node::fuzzing::{TARGETS, seeds};

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/fuzz-corpus".into());
    for (target, _) in TARGETS {
        let target_dir = std::path::Path::new(&dir).join(target);
        std::fs::create_dir_all(&target_dir)?;
        for (i, seed) in seeds(target).iter().enumerate() {
            std::fs::write(target_dir.join(format!("seed-{i}")), seed)?;
        }
    }
    Ok(())
}
