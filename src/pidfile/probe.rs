//! The pid file itself: no links followed, only regular files with one
//! link, identity checks around the flock taken on the very descriptor
//! whose bytes were read, and removal only while holding that lock.

use std::fs::{self, File};
use std::io::{self, Read, Seek};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::payload::{parse_payload, Payload, PAYLOAD_CAP};
use crate::sys::FileId;

/// The outcome of probing one pid-file path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// No file (or its parent is missing).
    Missing,
    /// A regular file nobody holds a lock on.
    Stale { payload: Payload, id: FileId },
    /// A regular file whose exclusive lock is contended: someone is alive.
    Held { payload: Payload, id: FileId },
    /// Something we cannot verify (a link, a FIFO, a second hard link…).
    /// Callers refuse; they never signal on it.
    Unverifiable { reason: String },
    /// A state that churn produces and resolves (the file vanished between
    /// `lstat` and `open`, or was replaced during the probe): unverifiable
    /// now, worth a bounded settle-and-retry before it is refused.
    Transient { reason: String },
}

/// Why a probe could not decide.
enum Fail {
    Persistent(String),
    Transient(String),
}

impl From<String> for Fail {
    fn from(s: String) -> Fail {
        Fail::Persistent(s)
    }
}

fn identity(meta: &fs::Metadata) -> FileId {
    FileId::of(meta)
}

/// `probe_pid_file` (contract §3.2), with the flock taken on the very
/// descriptor whose bytes were read.
pub fn probe(path: &Path) -> Probe {
    probe_with(path, &|| {})
}

/// [`probe`], with `between` run after the `lstat` and before the `open`
/// (tests stage the races of a churning runtime dir there).
pub(crate) fn probe_with(path: &Path, between: &dyn Fn()) -> Probe {
    match probe_inner(path, between) {
        Ok(p) => p,
        Err(Fail::Persistent(reason)) => Probe::Unverifiable { reason },
        Err(Fail::Transient(reason)) => Probe::Transient { reason },
    }
}

fn probe_inner(path: &Path, between: &dyn Fn()) -> Result<Probe, Fail> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    let pmeta = match fs::symlink_metadata(parent) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Probe::Missing),
        Err(e) => {
            return Err(Fail::Persistent(format!(
                "cannot inspect pid parent {}: {e}",
                parent.display()
            )))
        }
    };
    if pmeta.file_type().is_symlink() {
        return match fs::metadata(parent) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Probe::Missing),
            _ => Err(Fail::Persistent(format!(
                "pid parent {} is redirected or not a directory",
                parent.display()
            ))),
        };
    }
    if !pmeta.is_dir() {
        return Err(Fail::Persistent(format!(
            "pid parent {} is redirected or not a directory",
            parent.display()
        )));
    }
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Probe::Missing),
        Err(e) => {
            return Err(Fail::Persistent(format!(
                "cannot stat pid path {}: {e}",
                path.display()
            )))
        }
    };
    if !meta.file_type().is_file() {
        let what = file_kind(&meta);
        return Err(Fail::Persistent(format!(
            "pid path {} is not a regular file ({what})",
            path.display()
        )));
    }
    check_links(&meta, path)?;
    let before = identity(&meta);
    let pid_before = identity(&pmeta);
    between();
    let mut file = open_nofollow(path).map_err(|e| {
        let msg = format!("cannot open pid path {}: {e}", path.display());
        match e.kind() {
            // Unlinked between the lstat and the open: a server exiting.
            io::ErrorKind::NotFound => Fail::Transient(msg),
            _ => Fail::Persistent(msg),
        }
    })?;
    check_identity(&file, path, before, parent, pid_before)?;
    let mut buf = Vec::with_capacity(64);
    let payload = match (&mut file)
        .take(PAYLOAD_CAP as u64 + 1)
        .read_to_end(&mut buf)
    {
        Ok(_) => parse_payload(&buf),
        Err(e) => Payload {
            unreadable: Some(format!("read failed: {e}")),
            ..Default::default()
        },
    };
    let _ = file.rewind();
    let contended = match try_flock(&file, libc::LOCK_EX) {
        Ok(true) => false,
        Ok(false) => true,
        Err(e) => {
            return Err(Fail::Persistent(format!(
                "cannot lock pid path {}: {e}",
                path.display()
            )))
        }
    };
    check_identity(&file, path, before, parent, pid_before)?;
    if contended {
        Ok(Probe::Held {
            payload,
            id: before,
        })
    } else {
        unlock(&file);
        Ok(Probe::Stale {
            payload,
            id: before,
        })
    }
}

fn file_kind(meta: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let ft = meta.file_type();
    if ft.is_symlink() {
        "symlink"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_dir() {
        "directory"
    } else if ft.is_block_device() || ft.is_char_device() {
        "device"
    } else {
        "regular file"
    }
}

/// Open read-write without following a link and without blocking on a FIFO
/// swapped in after the `lstat`.
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

/// A pid file must be the only name of its inode: a second name (a hard
/// link to another program's lock file) would let that program's lock pass
/// for a memtomem server's.
fn check_links(meta: &fs::Metadata, path: &Path) -> Result<(), Fail> {
    match meta.nlink() {
        1 => Ok(()),
        n => Err(Fail::Persistent(format!(
            "pid path {} has {n} hard links (it may be another program's lock file)",
            path.display()
        ))),
    }
}

fn check_identity(
    file: &File,
    path: &Path,
    id: FileId,
    parent: &Path,
    parent_id: FileId,
) -> Result<(), Fail> {
    // A replaced file is what a restarting server leaves: transient.
    let changed = || {
        Fail::Transient(format!(
            "pid path {} changed identity during probe",
            path.display()
        ))
    };
    let fmeta = file.metadata().map_err(|_| changed())?;
    if !fmeta.is_file() || identity(&fmeta) != id {
        return Err(changed());
    }
    check_links(&fmeta, path)?;
    match fs::symlink_metadata(parent) {
        Ok(m) if m.is_dir() && identity(&m) == parent_id => {}
        _ => {
            return Err(Fail::Persistent(format!(
                "pid parent {} is redirected or not a directory",
                parent.display()
            )))
        }
    }
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() && identity(&m) == id => Ok(()),
        _ => Err(changed()),
    }
}

/// Non-blocking BSD flock. `Ok(false)` means contended.
pub fn try_flock(file: &File, op: i32) -> io::Result<bool> {
    crate::sys::try_flock(file, op)
}

pub fn unlock(file: &File) {
    crate::sys::unlock(file)
}

/// How a held legacy `~/.memtomem/.server.pid` is held (contract §3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LegacyMode {
    /// A 0.1.26 → pre-#2003 server's compatibility alias: not a stop target.
    Shared,
    /// A genuine pre-0.1.25 server.
    Exclusive,
}

/// Classify a held legacy pid file by trying a shared lock.
pub fn classify_legacy(path: &Path, id: FileId) -> Result<LegacyMode, String> {
    let file =
        open_nofollow(path).map_err(|e| format!("legacy lock classification failed: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("legacy lock classification failed: {e}"))?;
    if identity(&meta) != id {
        return Err("legacy lock classification failed: file changed identity".into());
    }
    match try_flock(&file, libc::LOCK_SH) {
        Ok(true) => {
            unlock(&file);
            Ok(LegacyMode::Shared)
        }
        Ok(false) => Ok(LegacyMode::Exclusive),
        Err(e) => Err(format!("legacy lock classification failed: {e}")),
    }
}

/// Remove a pid file only if nobody holds it, while holding its lock
/// ourselves, and only if the path still names the inode we locked (#2595).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unlink {
    Removed,
    Missing,
    /// Someone (a respawned server) holds it now: left alone.
    Held,
    /// The path names another file now: left alone.
    Replaced,
}

pub fn unlink_if_stale(path: &Path) -> Result<Unlink, String> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Unlink::Missing),
        Err(e) => return Err(format!("cannot stat {}: {e}", path.display())),
    };
    if !meta.file_type().is_file() {
        return Err(format!(
            "{} is not a regular file ({}); not removing it",
            path.display(),
            file_kind(&meta)
        ));
    }
    if meta.nlink() != 1 {
        return Err(format!(
            "{} has {} hard links; not removing it",
            path.display(),
            meta.nlink()
        ));
    }
    let file = match open_nofollow(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Unlink::Missing),
        Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
    };
    let id = identity(&file.metadata().map_err(|e| e.to_string())?);
    if id != identity(&meta) {
        return Ok(Unlink::Replaced);
    }
    match try_flock(&file, libc::LOCK_EX) {
        Ok(true) => {}
        Ok(false) => return Ok(Unlink::Held),
        Err(e) => return Err(format!("cannot lock {}: {e}", path.display())),
    }
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() && identity(&m) == id => {}
        Ok(_) => return Ok(Unlink::Replaced),
        Err(_) => return Ok(Unlink::Missing),
    }
    // Unlinked while we hold the lock: a server that opened the old inode
    // and then sees its path gone re-opens (contract §2.2 5c).
    match fs::remove_file(path) {
        Ok(()) => Ok(Unlink::Removed),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Unlink::Missing),
        Err(e) => Err(format!("cannot remove {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusty_fork::rusty_fork_test;
    use std::os::unix::fs::symlink;

    rusty_fork_test! {
        #[test]
        fn probe_outcomes() {
            let tmp = tempfile::tempdir().unwrap();
            let path = tmp.path().join("server.pid");
            assert_eq!(probe(&path), Probe::Missing);
            assert_eq!(probe(&tmp.path().join("nodir/server.pid")), Probe::Missing);
            fs::write(&path, b"4242\n\n2026-11-26T11:32:39+00:00\n").unwrap();
            assert!(matches!(
                probe(&path),
                Probe::Stale { payload, .. } if payload.pid == Some(4242)
            ));
            // A second open file description conflicts even within one process.
            let holder = File::open(&path).unwrap();
            assert!(try_flock(&holder, libc::LOCK_EX).unwrap());
            assert!(matches!(probe(&path), Probe::Held { .. }));
            assert_eq!(unlink_if_stale(&path), Ok(Unlink::Held));
            unlock(&holder);
            assert_eq!(unlink_if_stale(&path), Ok(Unlink::Removed));
            assert!(!path.exists());
            assert_eq!(unlink_if_stale(&path), Ok(Unlink::Missing));
        }
    }

    #[test]
    fn links_and_fifos_are_unverifiable_and_never_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("real");
        fs::write(&target, b"4242\n").unwrap();
        let link = tmp.path().join("server.pid");
        symlink(&target, &link).unwrap();
        assert!(
            matches!(probe(&link), Probe::Unverifiable { reason } if reason.contains("symlink"))
        );
        assert!(unlink_if_stale(&link).is_err());
        assert!(target.exists() && link.symlink_metadata().is_ok());
        let dangling = tmp.path().join("web.pid");
        symlink(tmp.path().join("nowhere"), &dangling).unwrap();
        assert!(matches!(probe(&dangling), Probe::Unverifiable { .. }));
        let fifo = tmp.path().join("server-0000000000000000.pid");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(matches!(probe(&fifo), Probe::Unverifiable { reason } if reason.contains("FIFO")));
        assert!(unlink_if_stale(&fifo).is_err());
        assert!(fifo.symlink_metadata().is_ok());
    }

    // Own process (rusty-fork): takes real flocks (issue 11).
    rusty_fork_test! {
        #[test]
        fn legacy_shared_and_exclusive() {
            let tmp = tempfile::tempdir().unwrap();
            let path = tmp.path().join(".server.pid");
            fs::write(&path, b"4242").unwrap();
            let holder = File::open(&path).unwrap();
            assert!(try_flock(&holder, libc::LOCK_SH).unwrap());
            let Probe::Held { id, .. } = probe(&path) else {
                panic!("shared holder must read as held")
            };
            assert_eq!(classify_legacy(&path, id), Ok(LegacyMode::Shared));
            unlock(&holder);
            assert!(try_flock(&holder, libc::LOCK_EX).unwrap());
            assert_eq!(classify_legacy(&path, id), Ok(LegacyMode::Exclusive));
        }
    }

    #[test]
    fn lock_descriptors_are_closed_on_exec() {
        use std::os::fd::AsRawFd;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("server.pid");
        fs::write(&path, b"4242\n").unwrap();
        let file = open_nofollow(&path).unwrap();
        let flags = nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert!(flags & libc::FD_CLOEXEC != 0, "{flags}");
    }
}
