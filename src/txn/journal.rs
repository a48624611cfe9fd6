//! The transaction journal: one small JSON file in `<tool dir>/.mm-upgrade/`,
//! replaced atomically (write, fsync, rename, fsync the directory) at every
//! step, so a crash at any instant leaves a journal that leads to one
//! complete installation.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const FILE: &str = "journal.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// The new environment is being built at the staging path; the
    /// installation is untouched.
    Staging,
    /// The exchange may have happened (the inodes tell).
    Switching,
    /// Undoing: the old environment goes back to the real path.
    RollingBack,
    /// The new environment is in place and linked; the old one, at the
    /// staging path, only waits to be removed.
    Committed,
}

/// An entry point in uv's bin dir: a symlink to `target`, or absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub path: PathBuf,
    pub target: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub id: String,
    pub state: State,
    /// `<tool dir>/memtomem`.
    pub env: PathBuf,
    /// `<tool dir>/.mm-upgrade/stage-<id>/memtomem`.
    pub stage_env: PathBuf,
    /// Inode of the installed environment before the switch (none: fresh install).
    pub old_ino: Option<u64>,
    /// Inode of the staged environment.
    pub new_ino: Option<u64>,
    pub version: String,
    /// The bin dir's entry points before and after.
    pub old_links: Vec<Link>,
    pub new_links: Vec<Link>,
}

pub fn path(work: &Path) -> PathBuf {
    work.join(FILE)
}

/// Read the journal, if there is one. A journal that cannot be parsed is an
/// error, never "no transaction".
pub fn load(work: &Path) -> Result<Option<Journal>, String> {
    let p = path(work);
    let text = match crate::receipt::read_capped(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", p.display())),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| format!("{} is damaged ({e}); see `mm-upgrade recover`", p.display()))
}

/// Replace the journal atomically and durably.
pub fn store(work: &Path, j: &Journal) -> std::io::Result<()> {
    let tmp = work.join(format!("{FILE}.tmp"));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    let mut text = serde_json::to_string_pretty(j).map_err(std::io::Error::other)?;
    text.push('\n');
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, path(work))?;
    sync_dir(work)
}

/// Remove the journal (the transaction is over), durably.
pub fn clear(work: &Path) -> std::io::Result<()> {
    match fs::remove_file(path(work)) {
        Ok(()) => sync_dir(work),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// fsync a directory, so a rename in it survives a power cut.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(load(tmp.path()).unwrap(), None);
        let j = Journal {
            id: "1".into(),
            state: State::Switching,
            env: "/t/memtomem".into(),
            stage_env: "/t/.mm-upgrade/stage-1/memtomem".into(),
            old_ino: Some(5),
            new_ino: Some(6),
            version: "0.6.12".into(),
            old_links: vec![Link {
                path: "/b/mm".into(),
                target: None,
            }],
            new_links: vec![],
        };
        store(tmp.path(), &j).unwrap();
        assert_eq!(load(tmp.path()).unwrap(), Some(j));
        assert!(!tmp.path().join("journal.json.tmp").exists());
        fs::write(path(tmp.path()), "{ half").unwrap();
        assert!(load(tmp.path()).unwrap_err().contains("damaged"));
        clear(tmp.path()).unwrap();
        assert_eq!(load(tmp.path()).unwrap(), None);
    }
}
