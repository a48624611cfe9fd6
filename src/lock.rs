//! Serialise runs: one `mm-upgrade` at a time per runtime directory, by a
//! flock on `mm-upgrade.lock` there (never deleted, like `lifecycle.lock`).

use std::fs::{self, File};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::paths;
use crate::pidfile::try_flock;

pub const LOCK_NAME: &str = "mm-upgrade.lock";

/// Take the run lock. `Ok(None)` when the directory is unsafe (discovery then
/// refuses with the reason); `Err` when another run holds the lock.
pub fn acquire(dir: &Path, euid: u32) -> Result<Option<File>, String> {
    match paths::validate_runtime_dir(dir, euid) {
        Ok(true) => {}
        Ok(false) => {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .or_else(|e| {
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .map_err(|e| format!("cannot create runtime directory {}: {e}", dir.display()))?;
            // mkdir honours the umask; force 0700 as memtomem does.
            let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
            if !matches!(paths::validate_runtime_dir(dir, euid), Ok(true)) {
                return Ok(None);
            }
        }
        Err(_) => return Ok(None),
    }
    let path = dir.join(LOCK_NAME);
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    match try_flock(&file, libc::LOCK_EX) {
        Ok(true) => {
            let _ = file.set_len(0);
            let _ = file.rewind();
            let _ = writeln!(file, "{}", std::process::id());
            Ok(Some(file))
        }
        Ok(false) => {
            let mut s = String::new();
            let _ = file.read_to_string(&mut s);
            let who = s.trim();
            let who = if who.is_empty() {
                String::new()
            } else {
                format!(" (pid {who})")
            };
            Err(format!(
                "another mm-upgrade{who} is running (it holds {}); wait for it to finish",
                path.display()
            ))
        }
        Err(e) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_run_is_refused_naming_the_first() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("rt");
        let euid = crate::sys::euid();
        let first = acquire(&dir, euid).unwrap().expect("lock taken");
        let err = acquire(&dir, euid).unwrap_err();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        assert!(acquire(&dir, euid).unwrap().is_some());
    }

    #[test]
    fn unsafe_dir_is_left_to_discovery() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("rt");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(acquire(&dir, crate::sys::euid()).unwrap().is_none());
        assert!(!dir.join(LOCK_NAME).exists());
    }
}
