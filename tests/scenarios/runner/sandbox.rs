//! The sandbox: its directories, the environment every process gets, the installation
//! the upgrade starts from (laid out by the fake uv), planted files, the installation's
//! byte-for-byte picture, and the teardown.

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest, Sha256};

use super::{watch::Watched, Config, Runner, Tree};
use crate::model::{FileKind, FileSpec, Scenario, UvBehavior, When};
use crate::sys::{self, Reaper};

impl Runner {
    pub fn new(cfg: Config, sc: Scenario, reaper: Arc<Reaper>) -> Result<Runner, String> {
        let base = std::env::var_os("MM_SCENARIO_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let slug: String = cfg
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let sandbox = tempfile::Builder::new()
            .prefix(&format!("mm-scen-{slug}-"))
            .tempdir_in(&base)
            .map_err(|e| format!("sandbox: {e}"))?
            .keep();
        let sandbox = sandbox
            .canonicalize()
            .map_err(|e| format!("sandbox: {e}"))?;
        let mut dirs = std::collections::BTreeMap::new();
        for (k, rel) in [
            ("home", "home"),
            ("runtime", "runtime"),
            ("tools", "uv/tools"),
            ("toolbin", "uv/bin"),
            ("cache", "uv/cache"),
            ("bin", "bin"),
            ("events", "events"),
            ("logs", "logs"),
            ("ready", "ready"),
            ("tmp", "tmp"),
        ] {
            let p = sandbox.join(rel);
            fs::create_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            dirs.insert(k, p);
        }
        fs::set_permissions(&dirs["runtime"], fs::Permissions::from_mode(0o700))
            .map_err(|e| e.to_string())?;
        Ok(Runner {
            cfg,
            sc,
            reaper,
            sandbox,
            dirs,
            procs: vec![],
            timeline: vec![],
            stdins: vec![],
            held: vec![],
            failures: vec![],
            notes: vec![],
            upgrader: None,
            env_for_upgrader: vec![],
            live_at_start: vec![],
            env_before: None,
            watched: Watched::default(),
        })
    }

    /// One of the runner's helper binaries (fake-server, fake-uv, fake-host).
    pub(super) fn fake(&self, name: &str) -> PathBuf {
        self.cfg.bin_dir.join(name)
    }

    /// What every process of the scenario starts from: the sandbox's PATH (the fake uv
    /// first), HOME and TMPDIR, and the run id the final sweep looks for.
    pub(super) fn base_env(&self) -> Vec<(String, String)> {
        let d = |k: &str| self.dirs[k].to_string_lossy().into_owned();
        vec![
            ("PATH".into(), format!("{}:/usr/bin:/bin", d("bin"))),
            ("HOME".into(), d("home")),
            ("TMPDIR".into(), d("tmp")),
            ("LANG".into(), "C.UTF-8".into()),
            ("MM_SCENARIO_RUN_ID".into(), self.cfg.run_id.clone()),
        ]
    }

    pub(super) fn setup_sandbox(&mut self) -> Result<(), String> {
        // The uv stand-in (or none at all).
        if self.sc.uv.behavior == UvBehavior::Absent {
            // A real uv on the rest of PATH would be found and really run.
            if let Some(real) = ["/usr/bin/uv", "/bin/uv"]
                .iter()
                .find(|p| Path::new(p).exists())
            {
                return Err(format!(
                    "[uv] behavior = \"absent\" cannot be set up: {real} is on the sandbox's PATH"
                ));
            }
        } else {
            symlink(self.fake("fake-uv"), self.dir("bin").join("uv")).map_err(|e| e.to_string())?;
        }
        symlink(
            self.fake("fake-server"),
            self.dir("bin").join("fake-server"),
        )
        .map_err(|e| e.to_string())?;
        // The installed tool the upgrade starts from.
        if self.sc.uv.installed != "none" {
            self.install_starting_env()?;
        }
        Ok(())
    }

    /// Lay out the installation the upgrade starts from the way uv would: the fake uv
    /// itself installs it into `{tools}` with links in `{toolbin}` (unlogged, so it is
    /// not one of the upgrader's calls).
    fn install_starting_env(&mut self) -> Result<(), String> {
        let uv = &self.sc.uv;
        let mut spec = String::from("memtomem");
        if !uv.installed_extras.is_empty() {
            spec.push_str(&format!("[{}]", uv.installed_extras.join(",")));
        }
        spec.push_str(&format!("=={}", uv.installed));
        let mut args: Vec<String> = vec!["tool".into(), "install".into()];
        args.extend(self.expand_all(&uv.installed_args)?);
        args.push(spec);
        let mut cmd = Command::new(self.fake("fake-uv"));
        cmd.args(&args)
            .env_clear()
            .envs(self.base_env())
            .env("UV_TOOL_DIR", self.dir("tools"))
            .env("UV_TOOL_BIN_DIR", self.dir("toolbin"))
            .env("FAKE_UV_SERVER_BIN", self.fake("fake-server"))
            .env("FAKE_UV_LATEST", &uv.latest);
        let (status, _, err) = self.run_helper(cmd, sys::scaled(10.0))?;
        if status != Some(0) {
            return Err(format!(
                "installing the starting tool env (fake-uv {args:?}): {}: {err}",
                status.map_or("killed".to_string(), |c| format!("exit {c}"))
            ));
        }
        let version = self.sc.uv.installed.clone();
        self.note(
            "runner",
            "installed",
            json!({"argv": args, "version": version}),
        );
        Ok(())
    }

    /// Run a helper command to its end (at most `limit`) in its own process group,
    /// which is killed however this returns; the reaper collects it. Returns its exit
    /// code (None: killed), stdout and stderr.
    fn run_helper(
        &self,
        mut cmd: Command,
        limit: Duration,
    ) -> Result<(Option<i32>, String, String), String> {
        let tag = format!("helper-{}", sys::mono_ns());
        let out = self.dir("logs").join(format!("{tag}.out"));
        let err = self.dir("logs").join(format!("{tag}.err"));
        cmd.stdin(Stdio::null())
            .stdout(fs::File::create(&out).map_err(|e| e.to_string())?)
            .stderr(fs::File::create(&err).map_err(|e| e.to_string())?)
            .process_group(0);
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| format!("{cmd:?}: {e}"))?;
        let group = testkit::Group(child.id() as i32);
        let reaped = self.reaper.wait(group.0, Instant::now() + limit);
        drop(group);
        let code =
            reaped.and_then(|r| libc::WIFEXITED(r.status).then(|| libc::WEXITSTATUS(r.status)));
        Ok((
            code,
            fs::read_to_string(&out).unwrap_or_default(),
            fs::read_to_string(&err).unwrap_or_default(),
        ))
    }

    /// `[[file]]` entries planted at `when` (before or after the servers start).
    pub(super) fn plant_files(&mut self, when: When) -> Result<(), String> {
        let specs: Vec<FileSpec> = self
            .sc
            .files
            .iter()
            .filter(|f| f.when == when)
            .cloned()
            .collect();
        for f in specs {
            let path = PathBuf::from(self.expand(&f.path)?);
            if !matches!(f.kind, FileKind::Chmod | FileKind::Remove) {
                if let Some(parent) = path.parent() {
                    if !parent.exists() {
                        fs::create_dir_all(parent)
                            .map_err(|e| format!("{}: {e}", parent.display()))?;
                        let _ = fs::set_permissions(parent, fs::Permissions::from_mode(0o700));
                    }
                }
            }
            let ctx = |e: std::io::Error| {
                format!("planting {} ({}): {e}", path.display(), f.kind.as_str())
            };
            match f.kind {
                FileKind::File => {
                    let bytes = self.file_bytes(&f)?;
                    // Write through the existing inode (a server may hold its lock on it).
                    let mut fh = fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .open(&path)
                        .map_err(ctx)?;
                    fh.write_all(&bytes).map_err(ctx)?;
                }
                FileKind::Fifo => {
                    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
                    // SAFETY: mkfifo on a NUL-terminated path we own.
                    if unsafe { libc::mkfifo(c.as_ptr(), 0o644) } != 0 {
                        return Err(ctx(std::io::Error::last_os_error()));
                    }
                }
                FileKind::Symlink => {
                    let target = self.expand(f.target.as_deref().unwrap_or_default())?;
                    symlink(target, &path).map_err(ctx)?;
                }
                FileKind::Hardlink => {
                    let target = self.expand(f.target.as_deref().unwrap_or_default())?;
                    fs::hard_link(target, &path).map_err(ctx)?;
                }
                FileKind::Dir => fs::create_dir_all(&path).map_err(ctx)?,
                FileKind::Sqlite => fs::write(&path, hex_decode(EMPTY_SQLITE_HEX)?).map_err(ctx)?,
                FileKind::Chmod => {}
                FileKind::Remove => {
                    if path.is_dir() && !path.is_symlink() {
                        fs::remove_dir_all(&path).map_err(ctx)?
                    } else {
                        fs::remove_file(&path).map_err(ctx)?
                    }
                }
            }
            if let Some(m) = f.mode {
                fs::set_permissions(&path, fs::Permissions::from_mode(m.0)).map_err(ctx)?;
            }
            if f.lock {
                self.held
                    .push(testkit::flock::lock_exclusive(&path).map_err(ctx)?);
            }
            self.note(
                "runner",
                "file",
                json!({"path": path, "kind": f.kind.as_str(), "when": when.as_str()}),
            );
        }
        Ok(())
    }

    pub(super) fn file_bytes(&self, f: &FileSpec) -> Result<Vec<u8>, String> {
        let mut one = match (&f.content, &f.content_hex) {
            (Some(c), _) => self.expand(c)?.into_bytes(),
            (None, Some(h)) => hex_decode(h)?,
            (None, None) => vec![],
        };
        if let Some(n) = f.repeat {
            one = one.repeat(n);
        }
        Ok(one)
    }

    /// The installation: uv's environment of memtomem and uv's bin dir.
    pub(super) fn installation_tree(&self) -> Tree {
        let mut t = Tree::new();
        tree_of(
            &self.dir("tools").join("memtomem"),
            "{tools}/memtomem",
            &mut t,
        );
        tree_of(self.dir("toolbin"), "{toolbin}", &mut t);
        t
    }

    /// Kill and reap everything; restore what unsafe-dir modes changed so the sandbox
    /// can be removed.
    pub(super) fn teardown(&mut self) {
        self.stdins.clear();
        self.held.clear();
        sys::kill_all_descendants(Duration::from_secs(5));
        let _ = sys::sweep_run_id(&self.cfg.run_id);
        let _ = fs::set_permissions(self.dir("runtime"), fs::Permissions::from_mode(0o700));
    }
}

/// The version in the tool dir's dist-info, if memtomem is installed there.
pub(super) fn installed_version(tools: &Path) -> Option<String> {
    let lib = tools.join("memtomem/lib");
    for py in fs::read_dir(lib).ok()?.flatten() {
        for e in fs::read_dir(py.path().join("site-packages"))
            .ok()?
            .flatten()
        {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(v) = n
                .strip_prefix("memtomem-")
                .and_then(|v| v.strip_suffix(".dist-info"))
            {
                return Some(v.to_string());
            }
        }
    }
    None
}

/// Record every entry under `root` (not following links) as `label/<relative path>`.
pub(super) fn tree_of(root: &Path, label: &str, out: &mut Tree) {
    let describe = |p: &Path| -> String {
        match fs::symlink_metadata(p) {
            Err(e) => format!("unreadable: {e}"),
            Ok(m) if m.file_type().is_symlink() => format!(
                "link -> {}",
                fs::read_link(p)
                    .map(|t| t.display().to_string())
                    .unwrap_or_default()
            ),
            Ok(m) if m.is_dir() => format!("dir {:o}", m.permissions().mode() & 0o7777),
            Ok(m) if m.is_file() => {
                let digest = fs::read(p)
                    .map(|b| {
                        Sha256::digest(&b)
                            .iter()
                            .take(12)
                            .map(|x| format!("{x:02x}"))
                            .collect::<String>()
                    })
                    .unwrap_or_else(|e| format!("unreadable: {e}"));
                format!(
                    "file {:o} {} bytes sha256 {digest}",
                    m.permissions().mode() & 0o7777,
                    m.len()
                )
            }
            Ok(m) => format!("special {:o}", m.permissions().mode()),
        }
    };
    if fs::symlink_metadata(root).is_err() {
        out.insert(label.to_string(), "absent".into());
        return;
    }
    out.insert(label.to_string(), describe(root));
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let is_dir = fs::symlink_metadata(&d).is_ok_and(|m| m.is_dir());
        if !is_dir {
            continue;
        }
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
            out.insert(format!("{label}/{rel}"), describe(&p));
            stack.push(p);
        }
    }
}

/// What differs between two trees, at most `max` lines.
pub(super) fn tree_diff(before: &Tree, after: &Tree, max: usize) -> Vec<String> {
    let mut out = vec![];
    for (k, v) in before {
        match after.get(k) {
            None => out.push(format!("{k}: gone (was {v})")),
            Some(w) if w != v => out.push(format!("{k}: {v} -> {w}")),
            _ => {}
        }
    }
    for (k, w) in after {
        if !before.contains_key(k) {
            out.push(format!("{k}: new ({w})"));
        }
    }
    let n = out.len();
    if n > max {
        out.truncate(max);
        out.push(format!("... {} more", n - max));
    }
    out
}

fn hex_decode(h: &str) -> Result<Vec<u8>, String> {
    let h: String = h.chars().filter(|c| !c.is_whitespace()).collect();
    if h.len() % 2 != 0 {
        return Err("content_hex: odd length".into());
    }
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

/// A minimal, valid SQLite database (page size 512, one empty table `memories`), for
/// `[[file]] kind = "sqlite"`: a store that exists, as a real memtomem store would.
const EMPTY_SQLITE_HEX: &str = concat!(
    "53514c69746520666f726d61742033000200010100402020000000020000000200000000000000000000000200000004",
    "000000000000000000000001000000000000000000000000000000000000000000000000000000000000000000000002",
    "002e63010d0000000101ca0001ca00000000000000000000000000000000000000000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000340106171d1d013d7461626c656d656d6f726965736d",
    "656d6f7269657302435245415445205441424c45206d656d6f726965732878290d000000000200000000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "00000000000000000000000000000000",
);
