//! BSD flock(2), as memtomem uses it: hold one, probe one, name its holders.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Holds an exclusive flock on `path` (created if needed) for as long as the returned
/// file, and every descriptor duplicated from it, lives. Fails at once if it is held.
pub fn lock_exclusive(path: &Path) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(f)
}

/// True when someone holds a flock on `path` that conflicts with LOCK_EX (the liveness
/// probe every upgrader uses). Panics if `path` cannot be opened.
pub fn is_locked(path: &Path) -> bool {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // SAFETY: flock on our own descriptor.
    let held = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 };
    if !held {
        // Released at once, not when `f` is closed: a sibling test's fork
        // could share the descriptor (and the lock) until its exec.
        // SAFETY: as above.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
    }
    held
}

/// Pids holding a flock on `path` (by inode, from /proc/locks; waiters excluded).
pub fn holders(path: &Path) -> Vec<i32> {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return vec![];
    };
    fs::read_to_string("/proc/locks")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            // "1: FLOCK  ADVISORY  WRITE 123 00:1f:4567 0 EOF" ("->" lines are waiters)
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.get(1) == Some(&"->") {
                return None;
            }
            let i = f.iter().position(|w| *w == "FLOCK")?;
            let pid: i32 = f.get(i + 3)?.parse().ok()?;
            let ino: u64 = f.get(i + 4)?.rsplit(':').next()?.parse().ok()?;
            (ino == meta.ino()).then_some(pid)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusty_fork::rusty_fork_test;

    // Own process (rusty-fork) for what takes real flocks: a child that a
    // sibling test spawns in this process shares a lock's open file description
    // until its exec, so the lock could outlive its release (issue 11).
    rusty_fork_test! {
        #[test]
        fn held_probed_and_named_then_released() {
            let dir = std::env::temp_dir().join(format!("testkit-flock-{}", std::process::id()));
            fs::create_dir_all(&dir).unwrap();
            let path = dir.join("x.lock");
            let held = lock_exclusive(&path).unwrap();
            assert!(is_locked(&path));
            assert!(holders(&path).contains(&(std::process::id() as i32)));
            assert!(
                lock_exclusive(&path).is_err(),
                "a second open file description contends"
            );
            drop(held);
            assert!(!is_locked(&path));
            assert!(holders(&path).is_empty());
            fs::remove_dir_all(&dir).unwrap();
        }
    }
}
