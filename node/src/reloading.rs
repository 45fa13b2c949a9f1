//! Files read at startup and again whenever their contents change: the token file, the
//! cluster secret, certificates and the CA.
//!
//! Kubernetes updates a mounted Secret by swapping a symlink, which may leave mtimes
//! untouched, so the contents themselves are compared. The check is lazy: whoever
//! asks for the current value after `every` has passed re-reads the files (small ones,
//! a few times a minute at most), so no task or thread is needed and a value nobody
//! uses costs nothing.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tracing::{error, info};

type Parse<T> = dyn Fn(&[(PathBuf, Vec<u8>)]) -> Result<T, String> + Send + Sync;

/// A value parsed from files, replaced when the files change. An edit that does not
/// parse keeps the previous value and is logged once.
pub struct Reloading<T> {
    what: &'static str,
    paths: Vec<PathBuf>,
    parse: Box<Parse<T>>,
    every: Duration,
    check: Mutex<Check>,
    current: RwLock<Arc<T>>,
}

struct Check {
    last: Instant,
    /// Hash of the contents last parsed (whether they parsed or not).
    fingerprint: u64,
}

impl<T> Reloading<T> {
    /// Reads and parses `paths` now; an error here is the caller's to refuse to start.
    pub fn load(
        what: &'static str,
        paths: Vec<PathBuf>,
        every: Duration,
        parse: impl Fn(&[(PathBuf, Vec<u8>)]) -> Result<T, String> + Send + Sync + 'static,
    ) -> Result<Self, String> {
        let contents = read_all(&paths)?;
        let value = parse(&contents)?;
        Ok(Self {
            what,
            paths,
            parse: Box::new(parse),
            every,
            check: Mutex::new(Check {
                last: Instant::now(),
                fingerprint: fingerprint(&contents),
            }),
            current: RwLock::new(Arc::new(value)),
        })
    }

    /// The current value, after re-reading the files if they are due a check.
    pub fn get(&self) -> Arc<T> {
        self.reload_if_due();
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn reload_if_due(&self) {
        // Whoever holds the lock is already checking; the others use the current value.
        let Ok(mut check) = self.check.try_lock() else {
            return;
        };
        if check.last.elapsed() < self.every {
            return;
        }
        check.last = Instant::now();
        let contents = match read_all(&self.paths) {
            Ok(contents) => contents,
            Err(e) => {
                // A Secret mount mid-swap can lack a file for an instant: try again
                // at the next check, keeping the current value meanwhile.
                error!(what = self.what, error = %e, "cannot re-read; keeping the current one");
                return;
            }
        };
        let fingerprint = fingerprint(&contents);
        if fingerprint == check.fingerprint {
            return;
        }
        check.fingerprint = fingerprint;
        match (self.parse)(&contents) {
            Ok(value) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(value);
                info!(what = self.what, "reloaded after its files changed");
            }
            Err(e) => {
                error!(what = self.what, error = %e, "changed files are invalid; keeping the previous ones");
            }
        }
    }
}

fn read_all(paths: &[PathBuf]) -> Result<Vec<(PathBuf, Vec<u8>)>, String> {
    paths
        .iter()
        .map(|path| {
            std::fs::read(path)
                .map(|bytes| (path.clone(), bytes))
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
        })
        .collect()
}

fn fingerprint(contents: &[(PathBuf, Vec<u8>)]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    for (_, bytes) in contents {
        bytes.hash(&mut hasher);
    }
    hasher.finish()
}

/// The file's name for messages: `path:line`.
pub fn at_line(path: &Path, line: usize) -> String {
    format!("{}:{line}", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers(dir: &Path, every: Duration) -> Result<Reloading<u64>, String> {
        Reloading::load("number", vec![dir.join("n")], every, |files| {
            let text = String::from_utf8_lossy(&files[0].1);
            text.trim().parse::<u64>().map_err(|e| e.to_string())
        })
    }

    #[test]
    fn reloads_changed_contents_and_keeps_the_value_on_bad_edits() {
        let dir = std::env::temp_dir().join(format!("dcache-reloading-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("n"), "1").unwrap();
        let value = numbers(&dir, Duration::ZERO).unwrap();
        assert_eq!(*value.get(), 1);
        std::fs::write(dir.join("n"), "2").unwrap();
        assert_eq!(*value.get(), 2);
        std::fs::write(dir.join("n"), "not a number").unwrap();
        assert_eq!(*value.get(), 2, "an invalid edit keeps the previous value");
        std::fs::remove_file(dir.join("n")).unwrap();
        assert_eq!(*value.get(), 2, "a missing file keeps the previous value");
        std::fs::write(dir.join("n"), "3").unwrap();
        assert_eq!(*value.get(), 3);
        std::fs::write(dir.join("n"), "x").unwrap();
        assert!(numbers(&dir, Duration::ZERO).is_err(), "invalid at start");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn checks_no_more_often_than_asked() {
        let dir =
            std::env::temp_dir().join(format!("dcache-reloading-slow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("n"), "1").unwrap();
        let value = numbers(&dir, Duration::from_secs(3600)).unwrap();
        std::fs::write(dir.join("n"), "2").unwrap();
        assert_eq!(*value.get(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
