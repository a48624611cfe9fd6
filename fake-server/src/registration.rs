//! How a server makes itself known, in the contract's order: the runtime dir, the
//! presence marker (in `lifecycle`), the pid file (or `mm web`'s files, or a legacy
//! era's), and what some faults add: a SQLite write lock, the wiki commit locks, mapped
//! files. The flock primitives are in `locks`, the paths and digests in `paths`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::cli::Legacy;
use crate::faults::{Corrupt, UnsafeDir};
use crate::locks::{self, PidLock};
use crate::{paths, pid, util, Server};

impl Server {
    fn home_legacy_path(&self) -> PathBuf {
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
        PathBuf::from(home).join(".memtomem/.server.pid")
    }

    pub(crate) fn prepare_runtime(&mut self) {
        if self.cli.legacy == Some(Legacy::Pre0125) {
            return; // pre-0.1.25 had no runtime dir at all
        }
        let dir = paths::resolve_runtime_dir(self.cli.runtime_dir.as_deref());
        let res = match self.plan.register.unsafe_dir {
            None => paths::ensure(&dir),
            Some(k) => setup_unsafe_dir(&dir, k),
        };
        if let Err(reason) = res {
            self.fail(
                1,
                &format!("fake-server: runtime dir {}: {reason}", dir.display()),
            );
        }
        self.place.runtime = Some(dir);
    }

    fn server_payload(&self) -> Vec<u8> {
        let p = pid();
        let stamp = &self.id.stamp;
        match self.plan.register.corrupt {
            None => crate::contract::server_payload(p.into(), None, stamp).into_bytes(),
            Some(Corrupt::Empty) => Vec::new(),
            Some(Corrupt::Garbage) => format!("not-a-pid\n\n{stamp}\n").into_bytes(),
            Some(Corrupt::Zero) => format!("0\n\n{stamp}\n").into_bytes(),
            Some(Corrupt::Negative) => format!("-1\n\n{stamp}\n").into_bytes(),
            Some(Corrupt::One) => format!("1\n\n{stamp}\n").into_bytes(),
            // The pid of whoever launched us (an upgrader must never signal itself).
            Some(Corrupt::SelfPid) => {
                format!("{}\n\n{stamp}\n", nix::unistd::getppid()).into_bytes()
            }
            Some(Corrupt::Oversize) => {
                let mut v = format!("{p}\n\n{stamp}\n").into_bytes();
                v.resize(5000, b' ');
                v.push(b'\n');
                v
            }
            Some(Corrupt::NonUtf8) => {
                let mut v = vec![0xff, 0xfe];
                v.extend_from_slice(format!("{p}\n\n{stamp}\n").as_bytes());
                v
            }
            Some(Corrupt::NoStamp) => format!("{p}\n\n").into_bytes(),
        }
    }

    pub(crate) fn take_server_pid(&mut self) {
        let rt = self.runtime();
        let digest = if self.cli.bare {
            None
        } else {
            self.place.digest.as_deref()
        };
        let path = rt.join(paths::pid_file_name(digest));
        if self.plan.register.secondary || self.plan.register.db_writer {
            if self.plan.register.secondary {
                self.warn(&lost_lock_msg(&path));
            }
            return;
        }
        if self.plan.register.fifo {
            if let Err(e) =
                nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o644))
            {
                if e != nix::errno::Errno::EEXIST {
                    self.fail(1, &format!("fake-server: mkfifo {}: {e}", path.display()));
                }
            }
            self.held.extra_unlink.push(path.clone());
            self.ev.emit("warning", json!({"message": "pid path is a FIFO; running with presence marker only", "path": path}));
            return;
        }
        let follow = self.plan.register.symlink;
        if follow {
            let mut target = path.clone().into_os_string();
            target.push(".real");
            let target = PathBuf::from(target);
            if std::fs::symlink_metadata(&path).is_err() {
                if let Err(e) = std::os::unix::fs::symlink(&target, &path) {
                    self.fail(1, &format!("fake-server: symlink {}: {e}", path.display()));
                }
            }
            self.held.extra_unlink.push(target);
        }
        match locks::lock_pid_file(&path, follow) {
            Ok(PidLock::Won(mut f)) => {
                self.ev.emit("lock", json!({"kind": "pid", "path": path}));
                if let Some(gap) = self.plan.register.lock_gap {
                    // The startup gap: locked, empty, SIGTERM still blocked (as upstream).
                    let _ = f.set_len(0);
                    std::thread::sleep(gap);
                }
                let payload = self.server_payload();
                if let Err(e) = locks::write_payload(&mut f, &payload, false) {
                    self.fail(1, &format!("fake-server: write {}: {e}", path.display()));
                }
                self.held.pid_path = Some(path);
                self.held.pid_fd = Some(f);
            }
            Ok(PidLock::Lost) => {
                self.held.extra_unlink.clear();
                self.warn(&lost_lock_msg(&path));
            }
            Err(e) => {
                // A non-contention lock error crashes the real server after cleaning up its
                // presence marker.
                self.cleanup();
                self.fail(
                    1,
                    &format!("fake-server: cannot lock {}: {e}", path.display()),
                );
            }
        }
    }

    pub(crate) fn take_web_pid(&mut self) {
        let rt = self.runtime();
        let path = rt.join("web.pid");
        match locks::lock_pid_file(&path, false) {
            Ok(PidLock::Won(mut f)) => {
                self.ev.emit("lock", json!({"kind": "web", "path": path}));
                // `mm web` stamps after the lock, unlike the server.
                self.id.stamp = util::iso_now();
                let payload = format!("{}\n{}\n{}\n", pid(), self.cli.port, self.id.stamp);
                if let Err(e) = locks::write_payload(&mut f, payload.as_bytes(), true) {
                    self.fail(1, &format!("fake-server: write {}: {e}", path.display()));
                }
                let json_path = rt.join("web.json");
                let meta = json!({"pid": pid(), "port": self.cli.port, "procid": self.id.procid, "started": self.id.stamp});
                // serde_json's map is a BTreeMap here, so keys come out sorted like
                // Python's sort_keys=True; ", " and ": " separators match json.dumps.
                let text = python_json(&meta);
                if let Err(e) = std::fs::write(&json_path, format!("{text}\n")) {
                    self.fail(
                        1,
                        &format!("fake-server: write {}: {e}", json_path.display()),
                    );
                }
                self.held.web_json = Some(json_path);
                self.held.pid_path = Some(path);
                self.held.pid_fd = Some(f);
            }
            Ok(PidLock::Lost) => self.fail(
                1,
                &format!(
                    "Error: memtomem Web UI is already running (pid file: {}).",
                    path.display()
                ),
            ),
            Err(e) => self.fail(
                1,
                &format!("fake-server: cannot lock {}: {e}", path.display()),
            ),
        }
    }

    fn legacy_open(&self) -> (PathBuf, File) {
        let path = self.home_legacy_path();
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        match locks::open_append(&path, false) {
            Ok(f) => (path, f),
            Err(e) => self.fail(1, &format!("fake-server: open {}: {e}", path.display())),
        }
    }

    pub(crate) fn take_legacy_exclusive(&mut self) {
        let (path, mut f) = self.legacy_open();
        match locks::flock(&f, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(locks::Try::Locked) => {}
            _ => self.fail(
                1,
                &format!(
                    "Another memtomem server is already running (pid file: {}).",
                    path.display()
                ),
            ),
        }
        self.ev
            .emit("lock", json!({"kind": "legacy-exclusive", "path": path}));
        if let Err(e) = locks::write_payload(&mut f, pid().to_string().as_bytes(), false) {
            self.fail(1, &format!("fake-server: write {}: {e}", path.display()));
        }
        // Pre-0.1.25 never unlinked this file (#437), so it is not a cleanup target.
        self.held.pid_path = None;
        self.held.legacy_fd = Some(f);
        self.held.extra_unlink.clear();
        self.held.legacy_path = Some(path);
    }

    pub(crate) fn take_alias(&mut self) {
        let (lpath, mut lf) = self.legacy_open();
        match locks::flock(&lf, libc::LOCK_SH | libc::LOCK_NB) {
            Ok(locks::Try::Locked) => {}
            _ => self.fail(
                1,
                &format!(
                    "A pre-0.1.25 memtomem server holds {} exclusively; stop it first.",
                    lpath.display()
                ),
            ),
        }
        self.ev
            .emit("lock", json!({"kind": "legacy-shared", "path": lpath}));
        if lf.metadata().map(|m| m.len() == 0).unwrap_or(false) {
            let _ = locks::write_payload(&mut lf, pid().to_string().as_bytes(), false);
        }
        self.held.legacy_fd = Some(lf);
        let rt = self.runtime();
        let path = rt.join("server.pid");
        match locks::lock_pid_file(&path, false) {
            Ok(PidLock::Won(mut f)) => {
                self.ev.emit("lock", json!({"kind": "pid", "path": path}));
                // 0.1.26 predates start stamps (#2029): the payload is the bare pid line.
                let _ = locks::write_payload(&mut f, format!("{}\n", pid()).as_bytes(), false);
                self.held.pid_path = Some(path);
                self.held.pid_fd = Some(f);
            }
            Ok(PidLock::Lost) => self.warn(&lost_lock_msg(&path)),
            Err(e) => self.fail(
                1,
                &format!("fake-server: cannot lock {}: {e}", path.display()),
            ),
        }
        // 0.1.26 unlinks the alias on SIGTERM and atexit (#439).
        self.held.extra_unlink.push(lpath);
    }

    pub(crate) fn open_db_writer(&mut self) {
        let path =
            paths::normalise(&self.place.store).unwrap_or_else(|| PathBuf::from(&self.place.store));
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let conn = match rusqlite::Connection::open(&path) {
            Ok(c) => c,
            Err(e) => self.fail(
                1,
                &format!("fake-server: sqlite open {}: {e}", path.display()),
            ),
        };
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            self.fail(
                1,
                &format!("fake-server: BEGIN IMMEDIATE on {}: {e}", path.display()),
            );
        }
        self.ev
            .emit("lock", json!({"kind": "sqlite-write", "path": path}));
        self.held.db = Some(conn);
    }

    /// `maps=PATH`, `old-generation=PATH`: map each file privately (it then shows in
    /// /proc/<pid>/maps), and delete the old generation's.
    pub(crate) fn map_files(&mut self) {
        for (p, delete) in self.plan.register.maps.clone() {
            let f = match File::open(&p) {
                Ok(f) => f,
                Err(e) => self.fail(1, &format!("fake-server: open {}: {e}", p.display())),
            };
            let len = f.metadata().map(|m| m.len()).unwrap_or(0).max(1) as usize;
            // SAFETY: a private read-only mapping that lives until the process exits; it
            // is never dereferenced, it only has to appear in /proc/<pid>/maps.
            let addr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE,
                    f.as_raw_fd(),
                    0,
                )
            };
            if addr == libc::MAP_FAILED {
                self.fail(
                    1,
                    &format!(
                        "fake-server: mmap {}: {}",
                        p.display(),
                        std::io::Error::last_os_error()
                    ),
                );
            }
            if delete {
                if let Err(e) = std::fs::remove_file(&p) {
                    self.fail(1, &format!("fake-server: delete {}: {e}", p.display()));
                }
            }
            self.ev.emit("map", json!({"path": p, "deleted": delete}));
        }
    }

    /// `wiki-lock[=ROOT]`: what a wiki commit holds while it runs (upstream #2225), for
    /// the whole life of this server: `<runtime>/wiki-commit-<sha256(resolved root)[:16]>.lock`
    /// and the transitional legacy lock, taken first like upstream. The legacy one is
    /// `<runtime>/legacy/…` when the runtime dir is an override (`--runtime-dir`, or
    /// memtomem's test override), else `$TMPDIR/memtomem/…`. Both 0600, EX flock, never
    /// unlinked (neither is a liveness signal nor anyone's to delete).
    pub(crate) fn take_wiki_lock(&mut self, root: Option<PathBuf>) {
        let root = root.unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/".into()))
                .join(".memtomem-wiki")
        });
        let Some(digest) = paths::path_digest(root.as_os_str()) else {
            self.fail(
                1,
                &format!(
                    "fake-server: wiki root {} cannot be resolved",
                    root.display()
                ),
            );
        };
        let rt = self.runtime();
        let name = format!("wiki-commit-{digest}.lock");
        let legacy = if paths::runtime_dir_is_override(self.cli.runtime_dir.as_deref()) {
            rt.join("legacy").join(&name)
        } else {
            std::env::temp_dir().join("memtomem").join(&name)
        };
        for (kind, path) in [
            ("wiki-commit-legacy", legacy),
            ("wiki-commit", rt.join(&name)),
        ] {
            match locks::hold_exclusive(&path, Duration::from_secs(5)) {
                Ok(f) => {
                    self.ev
                        .emit("lock", json!({"kind": kind, "path": path, "root": root}));
                    self.held.wiki.push((path, f));
                }
                Err(e) => self.fail(
                    1,
                    &format!("fake-server: wiki lock {}: {e}", path.display()),
                ),
            }
        }
    }
}

fn lost_lock_msg(path: &Path) -> String {
    format!(
        "Another memtomem-server is already writing to this store (pid file: {}). Concurrent writes may be slow.",
        path.display()
    )
}

/// `json.dumps(obj, sort_keys=True)` for a flat object: ", " and ": " separators.
fn python_json(v: &serde_json::Value) -> String {
    let Some(map) = v.as_object() else {
        return v.to_string();
    };
    let parts: Vec<String> = map
        .iter()
        .map(|(k, v)| format!("{}: {}", serde_json::Value::from(k.as_str()), v))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

fn setup_unsafe_dir(dir: &Path, kind: UnsafeDir) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mkdir = |d: &Path| match std::fs::create_dir(d) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("cannot create ({e})")),
    };
    match kind {
        UnsafeDir::World => {
            mkdir(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
                .map_err(|e| format!("chmod 0777 failed ({e})"))
        }
        UnsafeDir::WrongOwner => {
            mkdir(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("chmod failed ({e})"))?;
            std::os::unix::fs::chown(dir, Some(65534), Some(65534))
                .map_err(|e| format!("chown to nobody failed, needs root ({e})"))
        }
        UnsafeDir::Link => {
            if std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) {
                return Ok(());
            }
            let mut target = dir.as_os_str().to_os_string();
            target.push(".target");
            let target = PathBuf::from(target);
            mkdir(&target)?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("chmod failed ({e})"))?;
            std::os::unix::fs::symlink(&target, dir)
                .map_err(|e| format!("cannot create symlink ({e})"))
        }
    }
}
