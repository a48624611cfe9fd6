//! BSD flock(2) helpers, the owner-side pid-file protocol (contract §2.2 5c) and the
//! presence marker (§1.6). Only flock is used: fcntl record locks are invisible to it.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

pub enum Try {
    Locked,
    Contended,
}

pub fn flock(f: &File, op: libc::c_int) -> std::io::Result<Try> {
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return Ok(Try::Locked);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(Try::Contended),
            _ => return Err(e),
        }
    }
}

/// "a+" with O_NOFOLLOW and 0666 (umask applies): never truncates before the lock (#476).
pub fn open_append(path: &Path, nofollow: bool) -> std::io::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true).append(true).create(true).mode(0o666);
    if nofollow {
        o.custom_flags(libc::O_NOFOLLOW);
    }
    o.open(path)
}

/// Retries `LOCK_EX|LOCK_NB` for `budget`, polling every `step`.
pub fn lock_with_budget(
    f: &File,
    op: libc::c_int,
    budget: Duration,
    step: Duration,
) -> std::io::Result<bool> {
    let deadline = Instant::now() + budget;
    loop {
        match flock(f, op | libc::LOCK_NB)? {
            Try::Locked => return Ok(true),
            Try::Contended if Instant::now() >= deadline => return Ok(false),
            Try::Contended => std::thread::sleep(step),
        }
    }
}

/// Creates `path` (0600, its parent directory too) and holds an exclusive flock on it,
/// waiting up to `budget` for another holder, like memtomem's `_file_lock`.
pub fn hold_exclusive(path: &Path, budget: Duration) -> std::io::Result<File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)?;
    if lock_with_budget(&f, libc::LOCK_EX, budget, Duration::from_millis(10))? {
        Ok(f)
    } else {
        Err(std::io::Error::other(format!(
            "held by another process for {budget:?}"
        )))
    }
}

pub enum PidLock {
    Won(File),
    Lost,
}

/// `lock_pid_file`: open (no-follow unless `follow`), retry contention for 0.5 s every
/// 50 ms, then insist that the path still names the locked inode; re-open up to 5 times.
pub fn lock_pid_file(path: &Path, follow: bool) -> std::io::Result<PidLock> {
    for _ in 0..=5 {
        let f = open_append(path, !follow)?;
        if !lock_with_budget(
            &f,
            libc::LOCK_EX,
            Duration::from_millis(500),
            Duration::from_millis(50),
        )? {
            return Ok(PidLock::Lost);
        }
        let a = f.metadata()?;
        let same = if follow {
            std::fs::metadata(path)
        } else {
            std::fs::symlink_metadata(path)
        }
        .map(|b| (a.dev(), a.ino()) == (b.dev(), b.ino()))
        .unwrap_or(false);
        if same {
            return Ok(PidLock::Won(f));
        }
        // Unlinked or replaced between open and lock: the lock names nothing, try again.
    }
    Err(std::io::Error::other(format!(
        "pid file {} kept changing identity",
        path.display()
    )))
}

pub fn write_payload(f: &mut File, payload: &[u8], fsync: bool) -> std::io::Result<()> {
    f.set_len(0)?;
    f.write_all(payload)?;
    f.flush()?;
    if fsync {
        f.sync_all()?;
    }
    Ok(())
}

pub use crate::contract::is_marker_name;

pub struct Presence {
    pub path: PathBuf,
    /// Held open for life: the flock on it is what says "alive".
    pub _lock: File,
}

/// Registers a presence marker under `instances.registry.lock` (EX, 0.5 s budget),
/// GC-ing unlocked markers older than 60 s on the way, like the real server.
pub fn register_presence(
    runtime: &Path,
    digest: Option<&str>,
    procid: &str,
) -> Result<Presence, String> {
    let reg = open_append(&runtime.join("instances.registry.lock"), true)
        .map_err(|e| format!("cannot open registry lock: {e}"))?;
    if !lock_with_budget(
        &reg,
        libc::LOCK_EX,
        Duration::from_millis(500),
        Duration::from_millis(10),
    )
    .map_err(|e| format!("registry lock: {e}"))?
    {
        return Err("registry lock busy for 0.5 s".into());
    }
    let dir = runtime.join("presence");
    if let Err(e) = std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(format!("cannot create {}: {e}", dir.display()));
        }
    }
    gc_presence(&dir);
    let name = crate::contract::marker_name(
        std::process::id(),
        nix::unistd::getppid().as_raw(),
        digest,
        procid,
        &crate::util::hex8(),
    );
    let path = dir.join(name);
    let file = open_append(&path, true).map_err(|e| format!("{}: {e}", path.display()))?;
    match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
        Ok(Try::Locked) => {}
        _ => return Err(format!("cannot lock {}", path.display())),
    }
    drop(reg); // releases the registry mutation lock
    Ok(Presence { path, _lock: file })
}

fn gc_presence(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for ent in rd.flatten() {
        let name = ent.file_name();
        if !is_marker_name(&name.to_string_lossy()) {
            continue;
        }
        let p = ent.path();
        let Ok(f) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&p)
        else {
            continue;
        };
        if !matches!(flock(&f, libc::LOCK_EX | libc::LOCK_NB), Ok(Try::Locked)) {
            continue; // held: a live server
        }
        let old = f
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_some_and(|age| age > Duration::from_secs(60));
        if old {
            let _ = std::fs::remove_file(&p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn marker_grammar() {
        assert!(is_marker_name(
            "2792-1-7e8680b97476a9e5-54004f8e-6080cb89.lock"
        ));
        assert!(!is_marker_name(
            "2792-1-7E8680b97476a9e5-54004f8e-6080cb89.lock"
        ));
        assert!(!is_marker_name("2792-1-7e8680b97476a9e5-54004f8e.lock"));
    }
}
