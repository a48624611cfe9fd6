//! The upgrade as a transaction on uv's tool dir.
//!
//! 1. **stage**: uv installs the new release into `<tool dir>/.mm-upgrade/
//!    stage-<id>/memtomem` (same filesystem) while the old servers serve;
//! 2. **prove** ([`prove`]): the staged interpreter, metadata, entry points and
//!    an MCP `initialize` say the target version — before anything is stopped;
//! 3. **relocate** ([`relocate`]): the few files uv wrote with the staging path
//!    (console-script shebangs, activate scripts, the receipt) name the real
//!    path, so the result is what uv would have installed there;
//! 4. **switch**: one atomic exchange of the two directories, then the entry
//!    points in uv's bin dir by rename-over;
//! 5. **commit** or **roll back** (the same exchange back). The old
//!    environment is removed only after the new one is proven in place.
//!
//! Every step is written to a journal first ([`journal`]); [`recover`] finishes
//! or undoes an interrupted transaction, whatever instant it stopped at.
//! Route chosen and measured: docs/transaction.md.

pub mod journal;
pub mod prove;
pub mod relocate;

use std::ffi::OsString;
use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::install::{self, Uv, UvError, PACKAGE};
use crate::receipt::{self, Receipt};
use crate::sys::fault_point;
use journal::{Journal, Link, State};

/// Our directory inside uv's tool dir (uv ignores it: not a package name).
pub const WORK_DIR: &str = ".mm-upgrade";

/// Where things are.
#[derive(Debug, Clone)]
pub struct Layout {
    pub tool_dir: PathBuf,
    pub bin_dir: Option<PathBuf>,
}

impl Layout {
    pub fn env(&self) -> PathBuf {
        self.tool_dir.join(PACKAGE)
    }
    pub fn work(&self) -> PathBuf {
        self.tool_dir.join(WORK_DIR)
    }
}

/// uv's own lock on the tool dir (`<tool dir>/.lock`, a flock, which every
/// `uv tool install/upgrade/uninstall` takes): holding it serialises us with
/// uv and with other mm-upgrade runs, whatever their runtime dir.
#[derive(Debug)]
pub struct ToolLock {
    _file: File,
}

pub fn lock_tool_dir(tool_dir: &Path) -> Result<ToolLock, String> {
    let path = tool_dir.join(".lock");
    fs::create_dir_all(tool_dir)
        .map_err(|e| format!("cannot create uv's tool dir {}: {e}", tool_dir.display()))?;
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o666)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| format!("cannot open uv's tool lock {}: {e}", path.display()))?;
    match crate::pidfile::try_flock(&file, libc::LOCK_EX) {
        Ok(true) => Ok(ToolLock { _file: file }),
        Ok(false) => Err(format!(
            "another uv tool command or mm-upgrade run holds {} — wait for it to finish, then retry",
            path.display()
        )),
        Err(e) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}

/// Why staging failed; nothing was stopped and the installation is untouched.
#[derive(Debug)]
pub enum StageError {
    Uv(UvError),
    Other(String),
}

impl std::fmt::Display for StageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StageError::Uv(e) => write!(f, "{e}"),
            StageError::Other(s) => f.write_str(s),
        }
    }
}

/// A complete new environment at the staging path.
#[derive(Debug)]
pub struct Staged {
    pub journal: Journal,
    /// `<work>/stage-<id>`: the tool dir uv installed into.
    pub dir: PathBuf,
    /// uv's bin dir for the staging install.
    pub bin: PathBuf,
    pub receipt: Receipt,
    pub elapsed: Duration,
    /// uv compiled the bytecode itself (the user's `--compile-bytecode`).
    pub compiled_by_uv: bool,
}

fn ino(p: &Path) -> Option<u64> {
    fs::symlink_metadata(p).ok().map(|m| m.ino())
}

fn new_id() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{t}-{}", std::process::id())
}

/// Build the new environment beside the installed one: `uv tool install
/// <args>` with uv's tool and bin dirs pointed at the staging dir.
pub fn stage(layout: &Layout, uv: &Uv, args: &[String]) -> Result<Staged, StageError> {
    let work = layout.work();
    let other = |m: String| StageError::Other(m);
    fs::create_dir_all(&work)
        .map_err(|e| other(format!("cannot create {}: {e}", work.display())))?;
    let id = new_id();
    let dir = work.join(format!("stage-{id}"));
    let bin = dir.join(".bin");
    let env = layout.env();
    let mut j = Journal {
        id,
        state: State::Staging,
        env: env.clone(),
        stage_env: dir.join(PACKAGE),
        old_ino: ino(&env),
        new_ino: None,
        version: String::new(),
        old_links: vec![],
        new_links: vec![],
    };
    journal::store(&work, &j).map_err(|e| {
        other(format!(
            "cannot write the journal in {}: {e}",
            work.display()
        ))
    })?;
    let envs = [
        (OsString::from("UV_TOOL_DIR"), dir.clone().into_os_string()),
        (
            OsString::from("UV_TOOL_BIN_DIR"),
            bin.clone().into_os_string(),
        ),
    ];
    let out = uv
        .run("uv tool install (staging)", args, &envs, uv.timeout)
        .map_err(StageError::Uv)?;
    fault_point("staged");
    let receipt = receipt::read(&j.stage_env).map_err(|e| {
        other(format!(
            "uv exited 0 but the staged environment has no usable receipt: {e}"
        ))
    })?;
    let version = install::installed_version(&dir).ok_or_else(|| {
        other(format!(
            "uv exited 0 but installed no memtomem in {}",
            j.stage_env.display()
        ))
    })?;
    // The exchange needs one filesystem: refuse now, while nothing is stopped.
    if let (Ok(a), Ok(b)) = (fs::metadata(&layout.tool_dir), fs::metadata(&j.stage_env)) {
        let env_dev = fs::metadata(&env).map(|m| m.dev()).unwrap_or(a.dev());
        if env_dev != b.dev() {
            return Err(other(format!(
                "{} is on another filesystem than {} (a mount point?); an atomic switch is impossible",
                env.display(),
                work.display()
            )));
        }
    }
    j.new_ino = ino(&j.stage_env);
    j.version = version;
    let compiled_by_uv = receipt
        .options
        .get("compile-bytecode")
        .and_then(|v| v.as_bool())
        == Some(true);
    Ok(Staged {
        journal: j,
        dir,
        bin,
        receipt,
        elapsed: out.elapsed,
        compiled_by_uv,
    })
}

/// Plan the entry points in uv's bin dir: for each name of the new receipt
/// a symlink to `<env>/bin/<name>`; names only the old receipt had are
/// removed. Refuses (before anything changed) to replace a file that is not
/// a link into this installation.
pub fn plan_links(
    layout: &Layout,
    old: Option<&Receipt>,
    new: &Receipt,
) -> Result<(Vec<Link>, Vec<Link>), String> {
    let Some(bin) = &layout.bin_dir else {
        return Ok((vec![], vec![]));
    };
    let env = layout.env();
    let mut names: Vec<String> = new.entrypoints.iter().map(|e| e.name.clone()).collect();
    for e in old.map(|o| o.entrypoints.as_slice()).unwrap_or(&[]) {
        if e.install_path.parent() == Some(bin.as_path()) && !names.contains(&e.name) {
            names.push(e.name.clone());
        }
    }
    let mut before = Vec::new();
    let mut after = Vec::new();
    for name in names {
        let path = bin.join(&name);
        let current = match fs::symlink_metadata(&path) {
            Err(_) => None,
            Ok(m) if m.file_type().is_symlink() => {
                let t = fs::read_link(&path)
                    .map_err(|e| format!("cannot read link {}: {e}", path.display()))?;
                if !t.starts_with(&env) {
                    return Err(format!(
                        "{} links to {}, not to this installation; refusing to replace it",
                        path.display(),
                        t.display()
                    ));
                }
                Some(t)
            }
            Ok(_) => {
                return Err(format!(
                    "{} is a file, not uv's link to this installation; refusing to replace it",
                    path.display()
                ))
            }
        };
        let wanted = new
            .entrypoints
            .iter()
            .any(|e| e.name == name)
            .then(|| env.join("bin").join(&name));
        before.push(Link {
            path: path.clone(),
            target: current,
        });
        after.push(Link {
            path,
            target: wanted,
        });
    }
    Ok((before, after))
}

/// Make the bin dir match `links` (idempotent): a symlink created beside its
/// path and renamed over it, so the name never dangles or goes missing.
pub fn apply_links(links: &[Link]) -> Result<(), String> {
    for l in links {
        match &l.target {
            Some(t) => {
                if fs::read_link(&l.path).ok().as_deref() == Some(t.as_path()) {
                    continue;
                }
                let name = l.path.file_name().unwrap_or_default().to_string_lossy();
                let tmp = l.path.with_file_name(format!(".{name}.mm-upgrade-tmp"));
                let _ = fs::remove_file(&tmp);
                std::os::unix::fs::symlink(t, &tmp)
                    .and_then(|()| fs::rename(&tmp, &l.path))
                    .map_err(|e| {
                        format!("cannot link {} to {}: {e}", l.path.display(), t.display())
                    })?;
            }
            None => match fs::remove_file(&l.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("cannot remove {}: {e}", l.path.display())),
            },
        }
    }
    Ok(())
}

/// Mark the transaction `switching` (durably) before the servers are
/// stopped, so the switch window itself holds no fsync: a crash before the
/// exchange leaves the old env in place, and the inodes tell recovery which
/// way to go.
pub fn arm(work: &Path, j: &mut Journal) -> Result<(), String> {
    j.state = State::Switching;
    journal::store(work, j).map_err(|e| format!("cannot write the journal: {e}"))
}

/// Put the staged environment at the real path: one atomic exchange (or a
/// no-replace rename for a first install), then the entry points. Needs an
/// [`arm`]ed journal; durability comes with [`commit`].
pub fn switch(j: &Journal) -> Result<(), String> {
    debug_assert_eq!(j.state, State::Switching);
    fault_point("switching");
    swap(j)?;
    fault_point("exchanged");
    apply_links(&j.new_links)?;
    fault_point("linked");
    Ok(())
}

/// Exchange real and staging paths (or move one way when one is missing).
fn swap(j: &Journal) -> Result<(), String> {
    let res = if j.env.exists() && j.stage_env.exists() {
        crate::sys::exchange(&j.env, &j.stage_env)
    } else if j.stage_env.exists() {
        crate::sys::rename_noreplace(&j.stage_env, &j.env)
    } else {
        crate::sys::rename_noreplace(&j.env, &j.stage_env)
    };
    res.map_err(|e| {
        format!(
            "cannot exchange {} and {}: {e}",
            j.env.display(),
            j.stage_env.display()
        )
    })
}

/// The new environment, in place: its interpreter link resolves, the
/// metadata says the staged version, every entry point resolves. File checks
/// only (milliseconds): the full proof ran on the staged copy.
pub fn check_in_place(j: &Journal) -> Result<(), String> {
    let py = j.env.join("bin/python");
    if fs::metadata(&py).is_err() {
        return Err(format!("{} does not resolve", py.display()));
    }
    let tool_dir = j.env.parent().unwrap_or(Path::new("/"));
    match install::installed_version(tool_dir) {
        Some(v) if v == j.version => {}
        other => {
            return Err(format!(
                "{} holds memtomem {} instead of {}",
                j.env.display(),
                other.as_deref().unwrap_or("nothing"),
                j.version
            ))
        }
    }
    for l in j.new_links.iter().filter(|l| l.target.is_some()) {
        if fs::metadata(&l.path).is_err() {
            return Err(format!("entry point {} does not resolve", l.path.display()));
        }
    }
    Ok(())
}

/// The new environment stays: mark it so, then remove the old one (now at
/// the staging path) on a thread, overlapping whatever comes next.
pub fn commit(work: &Path, j: &mut Journal) -> Result<std::thread::JoinHandle<()>, String> {
    // The exchange and the links become durable before the journal says so.
    for dir in [
        j.env.parent(),
        j.new_links.first().and_then(|l| l.path.parent()),
    ]
    .into_iter()
    .flatten()
    {
        journal::sync_dir(dir).map_err(|e| format!("cannot sync {}: {e}", dir.display()))?;
    }
    j.state = State::Committed;
    journal::store(work, j).map_err(|e| format!("cannot write the journal: {e}"))?;
    fault_point("committed");
    let work = work.to_path_buf();
    let stage_dir = j.stage_env.parent().map(Path::to_path_buf);
    Ok(std::thread::spawn(move || {
        finish_committed(&work, stage_dir.as_deref())
    }))
}

fn finish_committed(work: &Path, stage_dir: Option<&Path>) {
    if let Some(d) = stage_dir {
        let _ = fs::remove_dir_all(d);
    }
    if journal::clear(work).is_ok() {
        // Empty now unless another stage is left over; then it stays for recover.
        let _ = fs::remove_dir(work);
    }
}

/// Undo a switch: the old environment back to the real path, the old entry
/// points back; then the staged one is removed.
pub fn rollback(work: &Path, j: &mut Journal) -> Result<(), String> {
    j.state = State::RollingBack;
    journal::store(work, j).map_err(|e| format!("cannot write the journal: {e}"))?;
    fault_point("rolling-back");
    if ino(&j.env) == j.new_ino {
        swap(j)?;
    }
    apply_links(&j.old_links)?;
    if let Some(p) = j.env.parent() {
        let _ = journal::sync_dir(p);
    }
    discard(work, j);
    Ok(())
}

/// Drop a transaction that never touched the installation.
pub fn discard(work: &Path, j: &Journal) {
    if let Some(d) = j.stage_env.parent() {
        let _ = fs::remove_dir_all(d);
    }
    if journal::clear(work).is_ok() {
        let _ = fs::remove_dir(work);
    }
}

/// What [`recover`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovered {
    /// The interrupted transaction had not touched the installation.
    Discarded,
    /// The new environment was in place and proven: finished.
    RolledForward { version: String },
    /// The old environment is back.
    RolledBack,
}

impl Recovered {
    pub fn describe(&self) -> String {
        match self {
            Recovered::Discarded => {
                "removed the staging dir of an interrupted upgrade; the installation was untouched"
                    .into()
            }
            Recovered::RolledForward { version } => {
                format!("finished an interrupted upgrade: memtomem {version} is in place")
            }
            Recovered::RolledBack => {
                "undid an interrupted upgrade: the previous installation is back".into()
            }
        }
    }
    pub fn key(&self) -> &'static str {
        match self {
            Recovered::Discarded => "discarded",
            Recovered::RolledForward { .. } => "rolled-forward",
            Recovered::RolledBack => "rolled-back",
        }
    }
}

/// Finish or undo an interrupted transaction. Call with the tool lock held.
pub fn recover(layout: &Layout) -> Result<Option<Recovered>, String> {
    let work = layout.work();
    let Some(mut j) = journal::load(&work)? else {
        // Leftovers without a journal never touched the installation.
        if work.is_dir() {
            for e in fs::read_dir(&work).into_iter().flatten().flatten() {
                if e.file_name().to_string_lossy().starts_with("stage-") {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
            let _ = fs::remove_dir(&work);
        }
        return Ok(None);
    };
    if j.env != layout.env() {
        return Err(format!(
            "the journal in {} is for {}, not {}",
            work.display(),
            j.env.display(),
            layout.env().display()
        ));
    }
    let at_real = ino(&j.env);
    let exchanged = j.new_ino.is_some() && at_real == j.new_ino;
    let out = match j.state {
        State::Staging => {
            discard(&work, &j);
            Recovered::Discarded
        }
        State::Committed => {
            finish_committed(&work, j.stage_env.parent());
            Recovered::RolledForward { version: j.version }
        }
        State::Switching if exchanged => {
            // Roll forward: the staged env was proven before the switch.
            match apply_links(&j.new_links).and_then(|()| check_in_place(&j)) {
                Ok(()) => {
                    commit(&work, &mut j)?
                        .join()
                        .map_err(|_| "removing the old environment panicked".to_string())?;
                    Recovered::RolledForward { version: j.version }
                }
                Err(_) => {
                    rollback(&work, &mut j)?;
                    Recovered::RolledBack
                }
            }
        }
        State::Switching | State::RollingBack => {
            if !exchanged && at_real != j.old_ino {
                return Err(format!(
                    "{} is neither the previous nor the staged environment; leaving {} for inspection",
                    j.env.display(),
                    work.display()
                ));
            }
            rollback(&work, &mut j)?;
            if j.old_ino.is_some() {
                Recovered::RolledBack
            } else {
                Recovered::Discarded
            }
        }
    };
    Ok(Some(out))
}

/// Is an interrupted transaction waiting (for `status`)?
pub fn pending(layout: &Layout) -> Option<String> {
    match journal::load(&layout.work()) {
        Ok(Some(j)) => Some(format!(
            "an interrupted upgrade to memtomem {} ({:?}) is pending in {}; run `mm-upgrade recover`",
            if j.version.is_empty() { "?" } else { &j.version },
            j.state,
            layout.work().display()
        )),
        Ok(None) => None,
        Err(e) => Some(e),
    }
}

/// memtomem's lifecycle barrier, exclusive, as `mm uninstall` holds it: a
/// server that (re)starts now waits before it opens the store.
pub struct Barrier {
    _files: Vec<File>,
    pub missed: Vec<PathBuf>,
}

/// Take `lifecycle.lock` exclusive in each runtime dir that exists, trying
/// for at most `budget` in all (a server waits 2 s for it: we must be brief).
pub fn take_barrier(runtime_dirs: &[PathBuf], budget: Duration) -> Barrier {
    let deadline = Instant::now() + budget;
    let mut files = Vec::new();
    let mut missed = Vec::new();
    for dir in runtime_dirs.iter().filter(|d| d.is_dir()) {
        let path = dir.join("lifecycle.lock");
        let Ok(f) = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
        else {
            missed.push(path);
            continue;
        };
        loop {
            match crate::pidfile::try_flock(&f, libc::LOCK_EX) {
                Ok(true) => {
                    files.push(f);
                    break;
                }
                Ok(false) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                _ => {
                    missed.push(path);
                    break;
                }
            }
        }
    }
    Barrier {
        _files: files,
        missed,
    }
}

#[cfg(test)]
mod tests;
