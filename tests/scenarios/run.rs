//! The inner runner: runs ONE scenario inside its own process (optionally inside its own
//! pid namespace), as the subreaper of everything it starts. It builds the sandbox,
//! starts bystanders and fake servers, plants files, runs the upgrader, checks every
//! expectation, kills and reaps everything, and prints a report.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::model::*;
use crate::sys::{self, Reaper};

/// Keys of mm-upgrade's JSON that upstream `mm upgrade` does not have; not compared in
/// differential mode.
const OURS_ONLY_KEYS: &[&str] = &[
    "exit_code",
    "downtime_ms",
    "remaining",
    "stops",
    "skipped",
    "staged",
    "proof",
    "switch_ms",
    "rolled_back",
    "recovered",
    "up_to_date",
];

pub struct Config {
    pub scenario_path: PathBuf,
    pub name: String,
    pub bin_dir: PathBuf,
    /// Our upgrader binary.
    pub mm_upgrade: Option<PathBuf>,
    /// `MM_SCENARIO_UPGRADER`: another upgrader command (differential mode).
    pub other: Option<String>,
    pub keep: bool,
    pub pause: bool,
    pub run_id: String,
}

/// One line of the merged timeline.
#[derive(Clone, Debug)]
struct Ev {
    mono: u64,
    source: String,
    event: String,
    fields: Value,
}

struct Proc {
    name: String,
    is_server: bool,
    /// The process the runner spawned.
    spawned: i32,
    /// What the ready file says (server pid, all pids), if it became ready.
    ready: Option<Value>,
    pgid: i32,
    events: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
    spec: Option<Server>,
    /// A `[[host]]`: fake-host's session log (its servers log into `events`).
    host_log: Option<PathBuf>,
}

impl Proc {
    /// The server's own pid: the ready file's `pid`, else the spawned process.
    fn pid(&self) -> i32 {
        self.ready
            .as_ref()
            .and_then(|r| r.get("pid"))
            .and_then(Value::as_i64)
            .map(|p| p as i32)
            .unwrap_or(self.spawned)
    }
    fn ready_pids(&self) -> Vec<i32> {
        self.ready
            .as_ref()
            .and_then(|r| r.get("pids"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_i64)
                    .map(|p| p as i32)
                    .collect()
            })
            .unwrap_or_default()
    }
    /// Processes the server itself created: its pid and everything after it in `pids`
    /// (the ones before it are launchers/supervisors: the "client").
    fn own_pids(&self) -> Vec<i32> {
        let pids = self.ready_pids();
        let me = self.pid();
        match pids.iter().position(|p| *p == me) {
            Some(i) => pids[i..].to_vec(),
            None => vec![me],
        }
    }
    fn elders(&self) -> Vec<i32> {
        let pids = self.ready_pids();
        let me = self.pid();
        let mut out: Vec<i32> = match pids.iter().position(|p| *p == me) {
            Some(i) => pids[..i].to_vec(),
            None => vec![],
        };
        if self.spawned != me && !out.contains(&self.spawned) {
            out.push(self.spawned);
        }
        out
    }
}

struct Upgrader {
    cmdline: Vec<String>,
    exit: Option<i32>,
    status_text: String,
    stdout: String,
    stderr: String,
    duration: Duration,
    timed_out: bool,
}

pub struct Runner {
    cfg: Config,
    sc: Scenario,
    reaper: Arc<Reaper>,
    sandbox: PathBuf,
    dirs: BTreeMap<&'static str, PathBuf>,
    procs: Vec<Proc>,
    timeline: Vec<Ev>,
    stdins: Vec<ChildStdin>,
    held: Vec<fs::File>,
    failures: Vec<String>,
    notes: Vec<String>,
    upgrader: Option<Upgrader>,
    env_for_upgrader: Vec<(String, String)>,
    /// The old-generation processes alive when the upgrader started (managed ones).
    live_at_start: Vec<Managed>,
    /// The installation (`{tools}/memtomem`, `{toolbin}`) just before the upgrader ran.
    env_before: Option<Tree>,
    /// The runner's own watch of the old generation while the upgrader ran.
    watched: Watched,
}

/// A managed process (old generation) alive when the upgrader started.
#[derive(Clone, Debug)]
struct Managed {
    pid: i32,
    /// Its start time in /proc (field 22), so a reused pid is not mistaken for it.
    start: u64,
    server: String,
    /// The server's own pid (not a forked child of it).
    main: bool,
}

/// The process table as the watcher saw it right after mm-upgrade logged `switched`.
#[derive(Clone, Debug, Default)]
struct SwitchSnapshot {
    /// mono_ns of the `switched` record, and of the moment the watcher looked.
    switched: u64,
    seen: u64,
    /// Every live descendant of the runner then (pid, command line).
    alive: Vec<(i32, String)>,
}

/// Every entry under some roots: relative path -> kind, mode and content digest or
/// link target.
type Tree = BTreeMap<String, String>;

pub enum Outcome {
    Pass,
    Fail,
}

impl Runner {
    fn dir(&self, k: &str) -> &Path {
        &self.dirs[k]
    }

    fn differential(&self) -> bool {
        self.cfg.other.is_some()
    }

    fn note(&mut self, source: &str, event: &str, fields: Value) {
        self.timeline.push(Ev {
            mono: sys::mono_ns(),
            source: source.into(),
            event: event.into(),
            fields,
        });
    }

    // ---- placeholders ------------------------------------------------------------------

    fn store_of(&self, s: &Server) -> Result<String, String> {
        match &s.store {
            Some(p) => self.expand(p),
            None => Ok(self.default_store()),
        }
    }

    fn default_store(&self) -> String {
        self.dir("home")
            .join(".memtomem/memtomem.db")
            .to_string_lossy()
            .into_owned()
    }

    /// Expand `{placeholders}`; `{{`/`}}` are literal braces. Unknown names are errors.
    pub fn expand(&self, s: &str) -> Result<String, String> {
        self.expand_with(s, None)
    }

    fn expand_with(&self, s: &str, upgrader_marker: Option<&str>) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find(['{', '}']) {
            out.push_str(&rest[..i]);
            let c = rest.as_bytes()[i];
            if rest[i + 1..].starts_with(c as char) {
                out.push(c as char);
                rest = &rest[i + 2..];
                continue;
            }
            if c == b'}' {
                return Err(format!("unbalanced '}}' in {s:?}"));
            }
            let Some(j) = rest[i..].find('}') else {
                return Err(format!("unterminated placeholder in {s:?}"));
            };
            let key = &rest[i + 1..i + j];
            out.push_str(&self.placeholder(key, upgrader_marker)?);
            rest = &rest[i + j + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn placeholder(&self, key: &str, upgrader_marker: Option<&str>) -> Result<String, String> {
        let path = |k: &str| self.dirs.get(k).map(|p| p.to_string_lossy().into_owned());
        let (head, arg) = match key.split_once(':') {
            Some((h, a)) => (h, Some(a)),
            None => (key, None),
        };
        let find = |name: &str| -> Result<&Proc, String> {
            self.procs.iter().find(|p| p.name == name).ok_or_else(|| {
                format!("{{{key}}}: no server or bystander named {name:?} (started so far)")
            })
        };
        Ok(match (head, arg) {
            ("sandbox", None) => self.sandbox.to_string_lossy().into_owned(),
            ("home" | "runtime" | "tools" | "toolbin" | "bin" | "events", None) => {
                path(head).unwrap()
            }
            ("store", None) => self.default_store(),
            ("digest", None) => digest(&self.default_store()),
            ("digest", Some(name)) => {
                let p = find(name)?;
                let spec = p
                    .spec
                    .as_ref()
                    .ok_or(format!("{{{key}}}: {name} is not a server"))?;
                digest(&self.store_of(spec)?)
            }
            ("store", Some(name)) => {
                let p = find(name)?;
                let spec = p
                    .spec
                    .as_ref()
                    .ok_or(format!("{{{key}}}: {name} is not a server"))?;
                self.store_of(spec)?
            }
            ("pid", Some(name)) => find(name)?.pid().to_string(),
            ("launcher", Some(name)) => find(name)?.spawned.to_string(),
            ("pgid", Some(name)) => find(name)?.pgid.to_string(),
            ("self", None) => std::process::id().to_string(),
            ("upgrader", None) => match upgrader_marker {
                Some(m) => m.to_string(),
                None => {
                    return Err(
                        "{upgrader} is only known in files with when = \"upgrader-start\"".into(),
                    )
                }
            },
            ("stamp", None) => iso_offset(0),
            ("old_stamp", None) => iso_offset(-3600),
            ("future_stamp", None) => iso_offset(3600),
            ("run_id", None) => self.cfg.run_id.clone(),
            _ => return Err(format!("unknown placeholder {{{key}}}")),
        })
    }

    // ---- setup -----------------------------------------------------------------------------

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
        let mut dirs = BTreeMap::new();
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

    fn fake(&self, name: &str) -> PathBuf {
        self.cfg.bin_dir.join(name)
    }

    fn base_env(&self) -> Vec<(String, String)> {
        let d = |k: &str| self.dirs[k].to_string_lossy().into_owned();
        vec![
            ("PATH".into(), format!("{}:/usr/bin:/bin", d("bin"))),
            ("HOME".into(), d("home")),
            ("TMPDIR".into(), d("tmp")),
            ("LANG".into(), "C.UTF-8".into()),
            ("MM_SCENARIO_RUN_ID".into(), self.cfg.run_id.clone()),
        ]
    }

    fn setup_sandbox(&mut self) -> Result<(), String> {
        // The uv stand-in (or none at all).
        if self.sc.uv.behavior == "absent" {
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
        for a in &uv.installed_args {
            args.push(self.expand(a)?);
        }
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
        self.note(
            "runner",
            "installed",
            json!({"argv": args, "version": uv.installed}),
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
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| format!("{cmd:?}: {e}"))?;
        let group = GroupGuard(child.id() as i32);
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

    fn plant_files(&mut self, when: &str) -> Result<(), String> {
        let specs: Vec<FileSpec> = self
            .sc
            .files
            .iter()
            .filter(|f| f.when == when)
            .cloned()
            .collect();
        for f in specs {
            let path = PathBuf::from(self.expand(&f.path)?);
            let mode = match &f.mode {
                Some(m) => Some(
                    u32::from_str_radix(m.trim_start_matches("0o"), 8)
                        .map_err(|e| format!("mode {m:?}: {e}"))?,
                ),
                None => None,
            };
            if f.kind != "chmod" && f.kind != "remove" {
                if let Some(parent) = path.parent() {
                    if !parent.exists() {
                        fs::create_dir_all(parent)
                            .map_err(|e| format!("{}: {e}", parent.display()))?;
                        let _ = fs::set_permissions(parent, fs::Permissions::from_mode(0o700));
                    }
                }
            }
            let ctx = |e: std::io::Error| format!("planting {} ({}): {e}", path.display(), f.kind);
            match f.kind.as_str() {
                "file" => {
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
                "fifo" => {
                    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
                    if unsafe { libc::mkfifo(c.as_ptr(), 0o644) } != 0 {
                        return Err(ctx(std::io::Error::last_os_error()));
                    }
                }
                "symlink" => {
                    let target = self.expand(f.target.as_deref().ok_or("symlink needs target")?)?;
                    symlink(target, &path).map_err(ctx)?;
                }
                "dir" => fs::create_dir_all(&path).map_err(ctx)?,
                "sqlite" => fs::write(&path, hex_decode(EMPTY_SQLITE_HEX)?).map_err(ctx)?,
                "chmod" => {}
                "remove" => {
                    if path.is_dir() && !path.is_symlink() {
                        fs::remove_dir_all(&path).map_err(ctx)?
                    } else {
                        fs::remove_file(&path).map_err(ctx)?
                    }
                }
                k => return Err(format!("[[file]] kind {k:?} unknown")),
            }
            if let Some(m) = mode {
                fs::set_permissions(&path, fs::Permissions::from_mode(m)).map_err(ctx)?;
            }
            if f.lock {
                self.held.push(sys::flock_file(&path).map_err(ctx)?);
            }
            self.note(
                "runner",
                "file",
                json!({"path": path, "kind": f.kind, "when": when}),
            );
        }
        Ok(())
    }

    fn file_bytes(&self, f: &FileSpec) -> Result<Vec<u8>, String> {
        let mut one = match (&f.content, &f.content_hex) {
            (Some(c), None) => self.expand(c)?.into_bytes(),
            (None, Some(h)) => hex_decode(h)?,
            (None, None) => vec![],
            _ => return Err("[[file]]: give content or content_hex, not both".into()),
        };
        if let Some(n) = f.repeat {
            one = one.repeat(n);
        }
        Ok(one)
    }

    fn group_of(&self, spec: &str) -> Result<i32, String> {
        if spec == "own" {
            return Ok(0);
        }
        let Some(name) = spec.strip_prefix("shared-with:") else {
            return Err(format!(
                "group {spec:?}: use \"own\" or \"shared-with:<name>\""
            ));
        };
        self.procs
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.pgid)
            .ok_or_else(|| format!("group {spec:?}: {name} is not started yet"))
    }

    fn start_bystanders(&mut self) -> Result<(), String> {
        for b in self.sc.bystanders.clone() {
            let argv: Vec<String> = if b.command.is_empty() {
                vec!["sleep".into(), "300".into()]
            } else {
                b.command
                    .iter()
                    .map(|a| self.expand(a))
                    .collect::<Result<_, _>>()?
            };
            let pg = self.group_of(&b.group)?;
            let mut cmd = Command::new(&argv[0]);
            cmd.args(&argv[1..])
                .env_clear()
                .envs(self.base_env())
                .process_group(pg);
            let out = self.dir("logs").join(format!("{}.out", b.name));
            let err = self.dir("logs").join(format!("{}.err", b.name));
            cmd.stdin(Stdio::null())
                .stdout(fs::File::create(&out).map_err(|e| e.to_string())?)
                .stderr(fs::File::create(&err).map_err(|e| e.to_string())?);
            let lock = self.inherit_lock(&mut cmd, b.lock.as_deref(), "bystander")?;
            let child = cmd
                .spawn()
                .map_err(|e| format!("bystander {}: {argv:?}: {e}", b.name))?;
            drop(lock); // the bystander is now the only holder
            let pid = child.id() as i32;
            let pgid = if pg == 0 { pid } else { pg };
            self.note(&b.name, "spawned", json!({"pid": pid, "argv": argv}));
            self.procs.push(Proc {
                name: b.name.clone(),
                is_server: false,
                spawned: pid,
                ready: None,
                pgid,
                events: PathBuf::new(),
                stdout: out,
                stderr: err,
                spec: None,
                host_log: None,
            });
        }
        Ok(())
    }

    /// Take the flock a `lock = "<path>"` spec names, and make the child
    /// inherit it (as fd 200) and die with the runner. The caller drops the
    /// returned file after the spawn, so the child is the only holder.
    fn inherit_lock(
        &self,
        cmd: &mut Command,
        spec: Option<&str>,
        what: &str,
    ) -> Result<Option<fs::File>, String> {
        let lock = match spec {
            Some(p) => {
                let path = PathBuf::from(self.expand(p)?);
                Some(
                    sys::flock_file(&path)
                        .map_err(|e| format!("{what} lock {}: {e}", path.display()))?,
                )
            }
            None => None,
        };
        let lock_fd = lock.as_ref().map(|f| f.as_raw_fd());
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if let Some(fd) = lock_fd {
                    // dup2 clears close-on-exec: the child inherits the lock.
                    if libc::dup2(fd, 200) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Ok(lock)
    }

    fn start_servers(&mut self) -> Result<(), String> {
        for s in self.sc.servers.clone() {
            let store = self.store_of(&s)?;
            let ready = self.dir("ready").join(format!("{}.json", s.name));
            let events = self.dir("events").join(format!("{}.jsonl", s.name));
            let out = self.dir("logs").join(format!("{}.out", s.name));
            let err = self.dir("logs").join(format!("{}.err", s.name));
            let mut argv: Vec<String> = vec![
                "--runtime-dir".into(),
                self.dir("runtime").to_string_lossy().into_owned(),
                "--store".into(),
                store.clone(),
                "--ready-file".into(),
                ready.to_string_lossy().into_owned(),
                "--events".into(),
                events.to_string_lossy().into_owned(),
            ];
            if s.web {
                argv.push("--web".into());
                if let Some(p) = s.port {
                    argv.extend(["--port".into(), p.to_string()]);
                }
            }
            if let Some(l) = &s.legacy {
                argv.extend(["--legacy".into(), l.clone()]);
            }
            if s.bare {
                argv.push("--bare".into());
            }
            for m in &s.modes {
                argv.extend(["--mode".into(), self.expand(m)?]);
            }
            for a in &s.args {
                argv.push(self.expand(a)?);
            }
            let pg = self.group_of(&s.group)?;
            let mut cmd = if s.command.is_empty() {
                let mut c = Command::new(self.fake("fake-server"));
                c.args(&argv);
                c
            } else {
                let a: Vec<String> = s
                    .command
                    .iter()
                    .map(|a| self.expand(a))
                    .collect::<Result<_, _>>()?;
                let mut c = Command::new(&a[0]);
                c.args(&a[1..]);
                c
            };
            cmd.env_clear().envs(self.base_env()).process_group(pg);
            let lock = self.inherit_lock(&mut cmd, s.lock.as_deref(), "server")?;
            for (k, v) in &s.env {
                cmd.env(k, self.expand(v)?);
            }
            cmd.stdout(fs::File::create(&out).map_err(|e| e.to_string())?)
                .stderr(fs::File::create(&err).map_err(|e| e.to_string())?);
            match s.stdin.as_str() {
                "pipe" => cmd.stdin(Stdio::piped()),
                "null" => cmd.stdin(Stdio::null()),
                x => {
                    return Err(format!(
                        "server {}: stdin {x:?} (use \"pipe\" or \"null\")",
                        s.name
                    ))
                }
            };
            let mut child = cmd.spawn().map_err(|e| format!("server {}: {e}", s.name))?;
            drop(lock);
            if let Some(stdin) = child.stdin.take() {
                self.stdins.push(stdin);
            }
            let pid = child.id() as i32;
            let pgid = if pg == 0 { pid } else { pg };
            self.note(&s.name, "spawned", json!({"pid": pid}));
            let mut proc_ = Proc {
                name: s.name.clone(),
                is_server: true,
                spawned: pid,
                ready: None,
                pgid,
                events,
                stdout: out,
                stderr: err.clone(),
                spec: Some(s.clone()),
                host_log: None,
            };
            let deadline = Instant::now() + sys::scaled(10.0);
            match s.ready.as_str() {
                "file" => loop {
                    if let Ok(text) = fs::read_to_string(&ready) {
                        if let Ok(v) = serde_json::from_str::<Value>(&text) {
                            proc_.ready = Some(v);
                            break;
                        }
                    }
                    if let Some(r) = self.reaper.get(pid) {
                        // A launcher may exit after its daemon is ready; give the file a moment.
                        if !proc_.ready_from_file(&ready, Instant::now() + sys::scaled(2.0)) {
                            let msg = format!(
                                "server {} exited before it was ready: {}\n{}",
                                s.name,
                                sys::describe_status(r.status),
                                fs::read_to_string(&err).unwrap_or_default()
                            );
                            self.procs.push(proc_);
                            return Err(msg);
                        }
                        break;
                    }
                    if Instant::now() >= deadline {
                        self.procs.push(proc_);
                        return Err(format!("server {} not ready within {:?}", s.name, sys::scaled(10.0)));
                    }
                    std::thread::sleep(Duration::from_millis(3));
                },
                "exit" => {
                    if self.reaper.wait(pid, deadline).is_none() {
                        self.procs.push(proc_);
                        return Err(format!("server {} did not exit (ready = \"exit\")", s.name));
                    }
                    if let Ok(v) = fs::read_to_string(&ready).map(|t| serde_json::from_str::<Value>(&t)) {
                        proc_.ready = v.ok();
                    }
                }
                "none" => {}
                x if x.starts_with("event:") => {
                    let pat = format!("{}:{}", s.name, &x["event:".len()..]);
                    loop {
                        let hit = Self::read_jsonl(&proc_.events).into_iter().any(|v| {
                            let ev = Ev {
                                mono: 0,
                                source: s.name.clone(),
                                event: v.get("event").and_then(Value::as_str).unwrap_or("").to_string(),
                                fields: v.clone(),
                            };
                            ev_matches(&ev, &pat)
                        });
                        if hit {
                            break;
                        }
                        if Instant::now() >= deadline {
                            self.procs.push(proc_);
                            return Err(format!("server {}: no event {pat:?} within {:?}", s.name, sys::scaled(10.0)));
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                x => return Err(format!("server {}: ready {x:?} (use \"file\", \"exit\", \"event:<event>[:<detail>]\" or \"none\")", s.name)),
            }
            self.note(
                &s.name,
                "runner-ready",
                proc_.ready.clone().unwrap_or(Value::Null),
            );
            self.procs.push(proc_);
        }
        Ok(())
    }

    /// `[[host]]`: fake-host running the sandbox's installed `memtomem-server` (its
    /// servers find the runtime dir and their event log through the environment). Counted
    /// as a server: the session running now is one of the old generation.
    fn start_hosts(&mut self) -> Result<(), String> {
        for h in self.sc.hosts.clone() {
            let ready = self.dir("ready").join(format!("{}.json", h.name));
            let events = self.dir("events").join(format!("{}.jsonl", h.name));
            let log = self.dir("events").join(format!("{}.host.jsonl", h.name));
            let out = self.dir("logs").join(format!("{}.out", h.name));
            let err = self.dir("logs").join(format!("{}.err", h.name));
            let command: Vec<String> = if h.command.is_empty() {
                vec![self
                    .dir("toolbin")
                    .join("memtomem-server")
                    .to_string_lossy()
                    .into_owned()]
            } else {
                h.command
                    .iter()
                    .map(|a| self.expand(a))
                    .collect::<Result<_, _>>()?
            };
            let mut cmd = Command::new(self.fake("fake-host"));
            cmd.arg("--log")
                .arg(&log)
                .arg("--ready-file")
                .arg(&ready)
                .args(["--ping-ms", &h.ping_ms.to_string()])
                .args(["--respawn-ms", &h.respawn_ms.to_string()])
                .args(["--max-spawns", &h.max_spawns.to_string()])
                .arg("--")
                .args(&command)
                .env_clear()
                .envs(self.base_env())
                .env("FAKE_SERVER_RUNTIME_DIR", self.dir("runtime"))
                .env("FAKE_SERVER_EVENTS", &events)
                .process_group(0)
                .stdin(Stdio::piped())
                .stdout(fs::File::create(&out).map_err(|e| e.to_string())?)
                .stderr(fs::File::create(&err).map_err(|e| e.to_string())?);
            self.inherit_lock(&mut cmd, None, "host")?;
            let mut child = cmd.spawn().map_err(|e| format!("host {}: {e}", h.name))?;
            if let Some(stdin) = child.stdin.take() {
                self.stdins.push(stdin);
            }
            let pid = child.id() as i32;
            self.note(&h.name, "spawned", json!({"pid": pid, "argv": command}));
            let spec: Server =
                toml::from_str(&format!("name = {}", toml::Value::from(h.name.as_str())))
                    .map_err(|e| e.to_string())?;
            let mut proc_ = Proc {
                name: h.name.clone(),
                is_server: true,
                spawned: pid,
                ready: None,
                pgid: pid,
                events,
                stdout: out,
                stderr: err,
                spec: Some(spec),
                host_log: Some(log),
            };
            let deadline = Instant::now() + sys::scaled(10.0);
            if !proc_.ready_from_file(&ready, deadline) {
                let msg = format!(
                    "host {}: no session within {:?} ({}): {}",
                    h.name,
                    sys::scaled(10.0),
                    self.reaper
                        .get(pid)
                        .map_or("running".into(), |r| sys::describe_status(r.status)),
                    fs::read_to_string(&proc_.stderr).unwrap_or_default()
                );
                self.procs.push(proc_);
                return Err(msg);
            }
            self.note(
                &h.name,
                "runner-ready",
                proc_.ready.clone().unwrap_or(Value::Null),
            );
            self.procs.push(proc_);
        }
        Ok(())
    }

    fn write_managed_pids(&self) -> Result<PathBuf, String> {
        let mut pids = vec![];
        for p in self
            .procs
            .iter()
            .filter(|p| p.is_server && p.spec.as_ref().is_some_and(|s| s.managed))
        {
            pids.extend(p.own_pids());
        }
        let path = self.sandbox.join("managed-pids");
        fs::write(
            &path,
            pids.iter().map(|p| format!("{p}\n")).collect::<String>(),
        )
        .map_err(|e| e.to_string())?;
        Ok(path)
    }

    /// The managed processes (servers and what they forked) alive right now.
    fn managed_alive_now(&self) -> Vec<Managed> {
        let mut out = vec![];
        for p in self
            .procs
            .iter()
            .filter(|p| p.is_server && p.spec.as_ref().is_some_and(|s| s.managed))
        {
            for pid in p.own_pids() {
                if let Some(start) = live_start_time(pid) {
                    out.push(Managed {
                        pid,
                        start,
                        server: p.name.clone(),
                        main: pid == p.pid(),
                    });
                }
            }
        }
        out
    }

    /// The installation: uv's environment of memtomem and uv's bin dir.
    fn installation_tree(&self) -> Tree {
        let mut t = Tree::new();
        tree_of(
            &self.dir("tools").join("memtomem"),
            "{tools}/memtomem",
            &mut t,
        );
        tree_of(self.dir("toolbin"), "{toolbin}", &mut t);
        t
    }

    // ---- the upgrader ----------------------------------------------------------------------

    fn upgrader_env(&self, managed: &Path) -> Result<Vec<(String, String)>, String> {
        let d = |k: &str| self.dirs[k].to_string_lossy().into_owned();
        let uv = &self.sc.uv;
        let mut env = self.base_env();
        env.extend([
            ("MM_UPGRADE_RUNTIME_DIR".into(), d("runtime")),
            ("MM_UPGRADE_HOME".into(), d("home")),
            ("UV_TOOL_DIR".into(), d("tools")),
            ("UV_TOOL_BIN_DIR".into(), d("toolbin")),
            ("FAKE_UV_TOOL_DIR".into(), d("tools")),
            (
                "FAKE_UV_LOG".into(),
                self.sandbox.join("uv.jsonl").to_string_lossy().into_owned(),
            ),
            (
                "FAKE_UV_MANAGED_PIDS".into(),
                managed.to_string_lossy().into_owned(),
            ),
            ("FAKE_UV_CACHE".into(), d("cache")),
            ("FAKE_UV_LATEST".into(), uv.latest.clone()),
            (
                "FAKE_UV_SERVER_BIN".into(),
                self.fake("fake-server").to_string_lossy().into_owned(),
            ),
            ("RUST_BACKTRACE".into(), "1".into()),
        ]);
        let behavior = match uv.behavior.as_str() {
            "succeed" | "absent" => "succeed".to_string(),
            "hang" | "unresolvable" | "delete-env-then-fail" | "broken-entry" | "broken-python" => {
                uv.behavior.clone()
            }
            "fail" => format!(
                "fail:{}:{}",
                uv.code.unwrap_or(2),
                uv.stderr
                    .clone()
                    .unwrap_or_else(|| "fake uv stderr line".into())
            ),
            "sleep" => format!("sleep:{}", uv.ms.unwrap_or(1000)),
            "wrong-version" => format!(
                "wrong-version:{}",
                uv.version
                    .as_deref()
                    .ok_or("[uv] behavior = \"wrong-version\" needs version = \"X.Y.Z\"")?
            ),
            x => return Err(format!("[uv] behavior {x:?} unknown")),
        };
        env.push(("FAKE_UV_BEHAVIOR".into(), behavior));
        if !uv.server_args.is_empty() {
            let args: Vec<String> = uv
                .server_args
                .iter()
                .map(|a| self.expand(a))
                .collect::<Result<_, _>>()?;
            if args
                .iter()
                .any(|a| a.is_empty() || a.contains(char::is_whitespace))
            {
                return Err(format!(
                    "[uv] server_args {args:?}: no empty arguments or whitespace (FAKE_UV_SERVER_ARGS is split on it)"
                ));
            }
            env.push(("FAKE_UV_SERVER_ARGS".into(), args.join(" ")));
        }
        if uv.dir_fails {
            env.push(("FAKE_UV_DIR".into(), "fail".into()));
        }
        if self.differential() {
            env.push(("_MEMTOMEM_TEST_RUNTIME_DIR".into(), d("runtime")));
            env.push((
                "PYTEST_CURRENT_TEST".into(),
                format!("scenarios/{} (call)", self.cfg.name),
            ));
        }
        for (k, v) in &self.sc.upgrade.env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), self.expand(v)?));
        }
        env.retain(|(k, _)| !self.sc.upgrade.env_remove.contains(k));
        Ok(env)
    }

    fn upgrader_argv(&self) -> Result<Vec<String>, String> {
        let args = match (&self.cfg.other, &self.sc.differential.args) {
            (Some(_), Some(a)) => a.clone(),
            _ => self.sc.upgrade.args.clone(),
        };
        let args: Vec<String> = args
            .iter()
            .map(|a| self.expand(a))
            .collect::<Result<_, _>>()?;
        let mut args = args;
        if self.cfg.other.is_none() {
            let ev = self.dir("events").join("upgrader.jsonl");
            args.extend(["--events".to_string(), ev.to_string_lossy().into_owned()]);
        }
        let mut argv = match &self.cfg.other {
            Some(cmd) => vec![
                "/bin/sh".into(),
                "-c".into(),
                format!("exec {cmd} \"$@\""),
                "upgrader".into(),
            ],
            None => vec![self
                .cfg
                .mm_upgrade
                .as_ref()
                .ok_or(
                    "no mm-upgrade binary (build the root package, or set MM_SCENARIO_MM_UPGRADE)",
                )?
                .to_string_lossy()
                .into_owned()],
        };
        argv.extend(args);
        Ok(argv)
    }

    fn run_upgrader(&mut self, managed: &Path) -> Result<(), String> {
        let env = self.upgrader_env(managed)?;
        self.env_for_upgrader = env.clone();
        let argv = self.upgrader_argv()?;
        self.write_env_script(&argv)?;
        if self.cfg.pause {
            self.pause_for_human(&argv);
        }
        // Files the upgrader's own process writes just before exec ({upgrader} = its pid).
        let marker = "\u{1}UPGRADER\u{1}";
        let mut early: Vec<(CString, Vec<Vec<u8>>)> = vec![];
        for f in self.sc.files.iter().filter(|f| f.when == "upgrader-start") {
            let path = CString::new(self.expand(&f.path)?).map_err(|e| e.to_string())?;
            let text = self.expand_with(f.content.as_deref().unwrap_or(""), Some(marker))?;
            let parts = text.split(marker).map(|s| s.as_bytes().to_vec()).collect();
            early.push((path, parts));
        }
        // What the upgrade starts from: the old generation alive now, the installation.
        self.live_at_start = self.managed_alive_now();
        self.env_before = Some(self.installation_tree());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).env_clear().envs(env).process_group(0);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                let mut buf = [0u8; 24];
                let pid = sys::fmt_pid(libc::getpid(), &mut buf);
                for (path, parts) in &early {
                    let fd = libc::open(
                        path.as_ptr(),
                        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
                        0o644,
                    );
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    for (i, part) in parts.iter().enumerate() {
                        if i > 0 {
                            libc::write(fd, pid.as_ptr().cast(), pid.len());
                        }
                        libc::write(fd, part.as_ptr().cast(), part.len());
                    }
                    libc::close(fd);
                }
                Ok(())
            });
        }
        let start = Instant::now();
        self.note("upgrader", "start", json!({"argv": argv}));
        let watch = SwitchWatch::start(
            self.dir("events").join("upgrader.jsonl"),
            self.live_at_start.clone(),
        );
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("spawning the upgrader {argv:?}: {e}"))?;
        let pid = child.id() as i32;
        let mut so = child.stdout.take().unwrap();
        let mut se = child.stderr.take().unwrap();
        let t_out = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = so.read_to_end(&mut s);
            s
        });
        let t_err = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = se.read_to_end(&mut s);
            s
        });
        let limit = sys::scaled(self.sc.upgrade.timeout.unwrap_or(self.sc.timeout));
        let reaped = self.reaper.wait(pid, start + limit);
        let timed_out = reaped.is_none();
        let reaped = match reaped {
            Some(r) => r,
            None => {
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                self.reaper
                    .wait(pid, Instant::now() + Duration::from_secs(5))
                    .ok_or("upgrader unkillable")?
            }
        };
        let duration = start.elapsed();
        self.watched = watch.finish();
        self.timeline.push(Ev {
            mono: reaped.mono_ns,
            source: "upgrader".into(),
            event: "exit".into(),
            fields: json!({"status": sys::describe_status(reaped.status)}),
        });
        // The upgrader's own stragglers (its process group) must not hold the pipes open.
        let out = join_with_timeout(t_out, Duration::from_secs(3), pid);
        let err = join_with_timeout(t_err, Duration::from_secs(3), pid);
        let exit = if libc::WIFEXITED(reaped.status) {
            Some(libc::WEXITSTATUS(reaped.status))
        } else {
            None
        };
        self.upgrader = Some(Upgrader {
            cmdline: argv,
            exit,
            status_text: sys::describe_status(reaped.status),
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: String::from_utf8_lossy(&err).into_owned(),
            duration,
            timed_out,
        });
        Ok(())
    }

    fn write_env_script(&self, argv: &[String]) -> Result<(), String> {
        let mut s =
            String::from("# source this to poke at the sandbox with the upgrader's environment\n");
        for (k, v) in &self.env_for_upgrader {
            s.push_str(&format!("export {k}={}\n", shell_quote(v)));
        }
        s.push_str(&format!(
            "# the upgrader run of this scenario:\n# {}\n",
            argv.iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        fs::write(self.sandbox.join("env.sh"), s).map_err(|e| e.to_string())
    }

    fn pause_for_human(&self, argv: &[String]) {
        let sb = self.sandbox.display();
        let mut msg = format!(
            "\n=== paused before the upgrader: {} ===\nsandbox: {sb}\n  . {sb}/env.sh          # the upgrader's environment\n  {}\n  ls -la {sb}/runtime; cat {sb}/events/*.jsonl; cat {sb}/ready/*.json\n",
            self.cfg.name,
            argv.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ")
        );
        for p in &self.procs {
            msg.push_str(&format!(
                "  {} pid {} (spawned {})\n",
                p.name,
                p.pid(),
                p.spawned
            ));
        }
        msg.push_str(&format!(
            "touch {sb}/continue (or press Enter) to run the upgrader\n"
        ));
        eprintln!("{msg}");
        let flag = self.sandbox.join("continue");
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            let _ = tx.send(());
        });
        while !flag.exists() && rx.try_recv().is_err() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // ---- evidence --------------------------------------------------------------------------

    fn read_jsonl(path: &Path) -> Vec<Value> {
        fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn uv_calls(&self) -> Vec<Value> {
        Self::read_jsonl(&self.sandbox.join("uv.jsonl"))
    }

    fn server_events(&self, name: &str) -> Vec<Value> {
        self.procs
            .iter()
            .find(|p| p.name == name)
            .map(|p| Self::read_jsonl(&p.events))
            .unwrap_or_default()
    }

    fn merged_timeline(&self) -> Vec<Ev> {
        let mut all = self.timeline.clone();
        // Every log carries CLOCK_MONOTONIC `mono_ns`, so events order exactly.
        let mut push = |source: &str, key: &str, v: Value| {
            let mono = v.get("mono_ns").and_then(Value::as_u64).unwrap_or(0);
            let event = v
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string();
            all.push(Ev {
                mono,
                source: source.to_string(),
                event,
                fields: v,
            });
        };
        for p in self.procs.iter().filter(|p| p.is_server) {
            for v in Self::read_jsonl(&p.events) {
                push(&p.name, "event", v);
            }
            if let Some(log) = &p.host_log {
                for v in Self::read_jsonl(log) {
                    push(&format!("{}.host", p.name), "event", v);
                }
            }
        }
        for v in Self::read_jsonl(&self.dir("events").join("upgrader.jsonl")) {
            push("mm", "event", v);
        }
        for v in self.uv_calls() {
            push("uv", "kind", v);
        }
        // The reaper thread notices a death a little late on a loaded machine (it must be
        // scheduled first), while an upgrader watching a pidfd sees it at once and may act
        // within that delay. The runner's /proc watch (every ms while the upgrader runs)
        // and the fake uv (when a call starts) check every managed pid: a managed pid
        // found gone was dead by then, so its `reaped` event is placed no later.
        let managed: HashSet<i32> = fs::read_to_string(self.sandbox.join("managed-pids"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect();
        let calls = self.uv_calls();
        let dead_by = |pid: i32| -> Option<(u64, String)> {
            if !managed.contains(&pid) {
                return None;
            }
            // The runner's own /proc watch during the upgrade (every ms).
            let watched = self
                .watched
                .first_gone
                .get(&pid)
                .map(|m| (*m, "the runner's /proc watch".to_string()));
            calls
                .iter()
                .filter(|c| {
                    c.get("managed_alive")
                        .and_then(Value::as_array)
                        .is_some_and(|a| !a.iter().any(|v| v.as_i64() == Some(pid as i64)))
                })
                .filter_map(|c| {
                    let m = c.get("mono_ns").and_then(Value::as_u64)?;
                    let kind = c.get("kind").and_then(Value::as_str).unwrap_or("?");
                    Some((m.saturating_sub(1), format!("uv {kind}")))
                })
                .chain(watched)
                .min()
        };
        for (pid, r) in self.reaper.all() {
            for p in &self.procs {
                let role = if pid == p.pid() {
                    "reaped"
                } else if pid == p.spawned {
                    "launcher-reaped"
                } else {
                    continue;
                };
                let mut mono = r.mono_ns;
                let mut fields = json!({"pid": pid, "status": sys::describe_status(r.status)});
                if let Some((m, by)) = dead_by(pid).filter(|(m, _)| *m < mono) {
                    mono = m;
                    fields["dead_before"] = json!(by);
                    fields["runner_noticed_ms_later"] =
                        json!(((r.mono_ns - m) as f64 / 1e6 * 1000.0).round() / 1000.0);
                }
                all.push(Ev {
                    mono,
                    source: p.name.clone(),
                    event: role.into(),
                    fields,
                });
            }
        }
        if let Some(snap) = &self.watched.at_switch {
            all.push(Ev {
                mono: snap.seen,
                source: "runner".into(),
                event: "switch-look".into(),
                fields: json!({
                    "alive": snap.alive.iter().map(|(p, c)| format!("{p} {c}")).collect::<Vec<_>>(),
                }),
            });
        }
        all.sort_by_key(|e| e.mono);
        all
    }

    /// How a server ended: from our own wait status, else from its event log or its
    /// supervisor's, else from /proc.
    fn outcome(&self, p: &Proc) -> String {
        let pid = p.pid();
        if let Some(r) = self.reaper.get(pid) {
            return sys::describe_status(r.status);
        }
        if let Some(info) = sys::proc_info(pid) {
            if info.state != 'Z' && info.state != 'X' {
                return "alive".into();
            }
        }
        // Not our child: look for its exit in the event logs.
        for q in &self.procs {
            for v in Self::read_jsonl(&q.events) {
                let ev = v.get("event").and_then(Value::as_str).unwrap_or("");
                if ev == "child-exit" && v.get("child").and_then(Value::as_i64) == Some(pid as i64)
                {
                    if let Some(c) = v.pointer("/status/code").and_then(Value::as_i64) {
                        return format!("exited({c})");
                    }
                    if let Some(s) = v.pointer("/status/signal").and_then(Value::as_str) {
                        return format!("killed({s})");
                    }
                }
            }
        }
        for v in Self::read_jsonl(&p.events) {
            if v.get("event").and_then(Value::as_str) == Some("exit")
                && v.get("pid").and_then(Value::as_i64) == Some(pid as i64)
            {
                if let Some(c) = v.get("code").and_then(Value::as_i64) {
                    return format!("exited({c})");
                }
            }
        }
        "dead".into()
    }

    /// mm-upgrade's `switched` records (CLOCK_MONOTONIC ns), in order.
    fn switched_at(&self) -> Vec<u64> {
        let mut v: Vec<u64> = Self::read_jsonl(&self.dir("events").join("upgrader.jsonl"))
            .iter()
            .filter(|e| e.get("event").and_then(Value::as_str) == Some("switched"))
            .filter_map(|e| e.get("mono_ns").and_then(Value::as_u64))
            .collect();
        v.sort();
        v
    }

    /// When the new installation took the old one's place (CLOCK_MONOTONIC ns): the
    /// `switched` record of mm-upgrade (written after the exchange, so a process that
    /// started before it counts as old, as mm-upgrade itself counts it), or the end of
    /// another upgrader's last successful in-place install.
    fn install_end(&self) -> Option<u64> {
        let installs = self
            .uv_calls()
            .iter()
            .filter(|c| c.get("kind").and_then(Value::as_str) == Some("install"))
            .filter(|c| c.get("exit_code").and_then(Value::as_i64) == Some(0))
            .filter_map(|c| c.get("end_mono_ns").and_then(Value::as_u64))
            .max();
        installs.into_iter().chain(self.switched_at()).max()
    }

    /// Every fake-server process that logged anything: pid -> (server name, when it
    /// joined its generation). That is when it registered as a server (its first `lock`
    /// event); a process that never locks anything (a forked child) is dated by its first
    /// event (forked workers log no `start`; `fork`/`respawn` events of their parent come
    /// first). A process that started before the switch but registered after it was in
    /// flight: no upgrader can attribute it before it registers (a real memtomem-server
    /// could be attributed by its command line, the installation's python; a fake one
    /// cannot), so it counts as new (see `in_flight`).
    fn started_processes(&self) -> HashMap<i32, (String, u64)> {
        self.process_dates()
            .into_iter()
            .map(|(pid, (name, first, lock))| (pid, (name, lock.unwrap_or(first).max(first))))
            .collect()
    }

    /// pid -> (server name, mono of its first event, mono of its first `lock` event).
    fn process_dates(&self) -> HashMap<i32, (String, u64, Option<u64>)> {
        let mut out: HashMap<i32, (String, u64, Option<u64>)> = HashMap::new();
        for p in self.procs.iter().filter(|p| p.is_server) {
            for v in Self::read_jsonl(&p.events) {
                let Some(m) = v.get("mono_ns").and_then(Value::as_u64) else {
                    continue;
                };
                // The process itself, and children announced by their parent (`fork`,
                // `respawn`: logged right after fork, before the child logs anything).
                let ev = v.get("event").and_then(Value::as_str).unwrap_or("");
                let child = if ev == "fork" || ev == "respawn" {
                    v.get("child").and_then(Value::as_i64)
                } else {
                    None
                };
                let own = v.get("pid").and_then(Value::as_i64);
                for pid in own.into_iter().chain(child) {
                    let e = out.entry(pid as i32).or_insert((p.name.clone(), m, None));
                    e.1 = e.1.min(m);
                    if ev == "lock" && Some(pid) == own {
                        e.2 = Some(e.2.map_or(m, |l| l.min(m)));
                    }
                }
            }
        }
        out
    }

    /// Processes that started before `at` and registered (took their first lock) after.
    fn in_flight(&self, at: u64) -> Vec<String> {
        let mut v: Vec<String> = self
            .process_dates()
            .into_iter()
            .filter(|(_, (_, first, lock))| *first < at && lock.is_some_and(|l| l > at))
            .map(|(pid, (name, first, lock))| {
                format!(
                    "{pid} ({name}: started {:.1} ms before, registered {:.1} ms after)",
                    (at - first) as f64 / 1e6,
                    (lock.unwrap_or(at) - at) as f64 / 1e6
                )
            })
            .collect();
        v.sort();
        v
    }

    // ---- checks ----------------------------------------------------------------------------

    fn fail(&mut self, msg: impl Into<String>) {
        self.failures.push(msg.into());
    }

    fn settle(&self) {
        // Processes the upgrader stopped may still be on their way out (an exit racing
        // our reaper); give expected-dead servers a short, bounded moment.
        let deadline = Instant::now() + sys::scaled(1.0);
        for p in &self.procs {
            let want_dead = self
                .sc
                .expect
                .servers
                .get(&p.name)
                .and_then(|e| e.outcome.as_deref())
                .is_some_and(|o| o != "alive");
            if want_dead {
                while sys::is_alive(p.pid()) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        // A host restarts its server when the upgrader retires the last old one, maybe
        // just as the upgrader exits: wait for its first session started after the switch
        // (or for it to give up), so the checks see how the host ended up.
        let Some(sw) = self.install_end() else {
            return;
        };
        let deadline = Instant::now() + sys::scaled(5.0);
        for log in self.procs.iter().filter_map(|p| p.host_log.as_ref()) {
            while Instant::now() < deadline {
                let done = Self::read_jsonl(log).iter().any(|v| {
                    v["event"] == "gave-up"
                        || (v["event"] == "session"
                            && v["spawned_mono_ns"].as_u64().is_some_and(|m| m > sw))
                });
                if done {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    /// The install as a transaction: staged and proven before anything is stopped,
    /// switched only when no old server is left, the installation untouched by a run
    /// that did not switch, nothing left in `{tools}/.mm-upgrade`.
    fn check_transaction(&mut self, e: &Expect, diff: bool) -> Result<(), String> {
        let after = self.installation_tree();
        let before = self.env_before.clone().unwrap_or_default();
        let switched = self.switched_at();
        if e.env_unchanged || (!diff && switched.is_empty()) {
            let d = tree_diff(&before, &after, 12);
            if !d.is_empty() {
                self.fail(format!(
                    "the installation changed{}:\n      {}",
                    if e.env_unchanged {
                        ""
                    } else {
                        " although mm-upgrade did not switch"
                    },
                    d.join("\n      ")
                ));
            }
        }
        let work = self.dir("tools").join(".mm-upgrade");
        if fs::symlink_metadata(&work).is_ok() {
            let mut t = Tree::new();
            tree_of(&work, "{tools}/.mm-upgrade", &mut t);
            self.fail(format!(
                "{} is left behind: {}",
                work.display(),
                t.keys().take(6).cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        if let Some(want) = &e.receipt {
            let path = self.dir("tools").join("memtomem/uv-receipt.toml");
            let got = fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|t| t.parse::<toml::Table>().map_err(|e| e.to_string()));
            match got {
                Ok(t) => {
                    let mut errs = vec![];
                    let got = toml_to_json(&toml::Value::Table(t));
                    json_match(self, &toml_to_json(want), &got, "", &mut errs, false);
                    for er in errs {
                        self.fail(format!("receipt {}: {er}", path.display()));
                    }
                }
                Err(err) => self.fail(format!("receipt {}: {err}", path.display())),
            }
        }
        if diff {
            return Ok(());
        }

        // Nothing is stopped before the new release is staged and proven.
        let mm = Self::read_jsonl(&self.dir("events").join("upgrader.jsonl"));
        let first = |name: &str| {
            mm.iter()
                .filter(|v| v.get("event").and_then(Value::as_str) == Some(name))
                .filter_map(|v| v.get("mono_ns").and_then(Value::as_u64))
                .min()
        };
        if let Some(sig) = first("signalling") {
            match first("proven") {
                Some(p) if p < sig => {}
                Some(_) => {
                    self.fail("mm-upgrade signalled a server before the staged release was proven")
                }
                None => self.fail("mm-upgrade signalled a server without a proven staged release"),
            }
            for c in self.uv_calls() {
                let end = c
                    .get("end_mono_ns")
                    .and_then(Value::as_u64)
                    .unwrap_or(u64::MAX);
                if c.get("kind").and_then(Value::as_str) == Some("stage") && end > sig {
                    self.fail(format!(
                        "the stage call ended after mm-upgrade signalled a server: staging (and its proof) must be done before anything is stopped ({})",
                        c["argv"]
                    ));
                }
            }
        }

        // The switch: every old server gone first (#443, split brain).
        let Some(&sw) = switched.first() else {
            return Ok(());
        };
        if switched.len() > 1 {
            self.fail(format!("mm-upgrade switched {} times", switched.len()));
        }
        // mm-upgrade's own account: each old server it had to stop exited before.
        for m in self.live_at_start.clone().iter().filter(|m| m.main) {
            let exited = mm.iter().find(|v| {
                v.get("event").and_then(Value::as_str) == Some("exited")
                    && v.get("pid").and_then(Value::as_i64) == Some(m.pid as i64)
            });
            match exited {
                None => self.fail(format!(
                    "mm-upgrade switched without an `exited` record for old server {} (pid {})",
                    m.server, m.pid
                )),
                Some(v) => {
                    let at = v.get("mono_ns").and_then(Value::as_u64).unwrap_or(u64::MAX);
                    if at > sw {
                        self.fail(format!(
                            "mm-upgrade switched {:.1} ms before old server {} (pid {}) exited",
                            (at - sw) as f64 / 1e6,
                            m.server,
                            m.pid
                        ));
                    }
                    if !v.get("error").is_none_or(Value::is_null) {
                        self.fail(format!(
                            "mm-upgrade switched although stopping old server {} (pid {}) failed: {}",
                            m.server, m.pid, v["error"]
                        ));
                    }
                }
            }
        }
        // The servers' own account: none logged its exit after the switch.
        let managed: HashMap<i32, String> = self
            .live_at_start
            .iter()
            .map(|m| (m.pid, m.server.clone()))
            .collect();
        for p in self.procs.iter().filter(|p| p.is_server) {
            for v in Self::read_jsonl(&p.events) {
                let pid = v.get("pid").and_then(Value::as_i64).unwrap_or(0) as i32;
                let at = v.get("mono_ns").and_then(Value::as_u64).unwrap_or(0);
                if v.get("event").and_then(Value::as_str) == Some("exit")
                    && managed.contains_key(&pid)
                    && at > sw
                {
                    self.failures.push(format!(
                        "old-generation pid {pid} (server {}) was alive at the switch: it logged its exit {:.1} ms after `switched`",
                        managed[&pid],
                        (at - sw) as f64 / 1e6
                    ));
                }
            }
        }
        // The runner's own view of /proc: no old process seen alive after `switched`.
        let w = self.watched.clone();
        for m in self.live_at_start.clone() {
            if let Some(&t) = w.last_alive.get(&m.pid).filter(|t| **t > sw) {
                self.fail(format!(
                    "old-generation pid {} (server {}) was alive at the switch: the runner saw it running {:.1} ms after `switched`",
                    m.pid,
                    m.server,
                    (t - sw) as f64 / 1e6
                ));
            }
        }
        match &w.at_switch {
            Some(snap) => {
                // Old-generation processes a client respawned meanwhile may still run
                // (mm-upgrade retires them after the switch): reported, not failed.
                let started = self.started_processes();
                let elders: HashSet<i32> = self.procs.iter().flat_map(|p| p.elders()).collect();
                let unmanaged: HashSet<&str> = self
                    .procs
                    .iter()
                    .filter(|p| p.spec.as_ref().is_some_and(|s| !s.managed))
                    .map(|p| p.name.as_str())
                    .collect();
                let old: Vec<String> = snap
                    .alive
                    .iter()
                    .filter(|(pid, _)| !elders.contains(pid) && !managed.contains_key(pid))
                    .filter_map(|(pid, _)| {
                        let (name, m) = started.get(pid)?;
                        (*m < sw && !unmanaged.contains(name.as_str()))
                            .then(|| format!("{pid} ({name})"))
                    })
                    .collect();
                let in_flight = self.in_flight(sw);
                if !in_flight.is_empty() {
                    self.notes.push(format!(
                        "in flight at the switch (counted as new generation): {}",
                        in_flight.join(", ")
                    ));
                }
                if !old.is_empty() {
                    self.notes.push(format!(
                        "respawned old-generation processes alive {:.1} ms after `switched` (mm-upgrade retires them after the switch): {}",
                        snap.seen.saturating_sub(snap.switched) as f64 / 1e6,
                        old.join(", ")
                    ));
                }
            }
            None => self.fail("the runner did not see mm-upgrade's `switched` record while it ran"),
        }
        Ok(())
    }

    fn check(&mut self) -> Result<(), String> {
        let Some(up) = self.upgrader.take() else {
            return Ok(());
        };
        let diff = self.differential();
        let e = std::mem::take(&mut self.sc.expect);

        if up.timed_out {
            self.fail(format!(
                "the upgrader did not finish within {:?} and was killed",
                up.duration
            ));
        }
        // Exit code.
        if let Some(want) = e.exit_code {
            let got = up.exit;
            let ok = if diff {
                exit_class(got) == exit_class(Some(want))
            } else {
                got == Some(want)
            };
            if !ok {
                self.fail(format!(
                    "exit code: expected {want}, got {}",
                    up.status_text
                ));
            }
        }
        // Duration.
        let ms = up.duration.as_millis() as u64;
        if let Some(max) = e.max_ms {
            let max_scaled = (max as f64 * sys::time_scale()) as u64;
            if ms > max_scaled {
                self.fail(format!("took {ms} ms, more than max_ms = {max_scaled}"));
            }
        }
        if let Some(min) = e.min_ms {
            if ms < min {
                self.fail(format!("took {ms} ms, less than min_ms = {min}"));
            }
        }
        // JSON.
        let wants_json = up.cmdline.iter().any(|a| a == "--json");
        let doc: Option<Value> = if wants_json {
            match serde_json::from_str::<Value>(up.stdout.trim()) {
                Ok(v) => Some(v),
                Err(err) => {
                    // A usage error (exit 2) may legitimately print no JSON.
                    if up.exit != Some(2) || !up.stdout.trim().is_empty() {
                        self.fail(format!(
                            "--json: stdout is not exactly one JSON document ({err})"
                        ));
                    }
                    None
                }
            }
        } else {
            None
        };
        if let Some(want) = &e.json {
            let want = toml_to_json(want);
            match &doc {
                Some(actual) => {
                    let mut errs = vec![];
                    json_match(self, &want, actual, "", &mut errs, diff);
                    for er in errs {
                        self.fail(format!("json: {er}"));
                    }
                }
                None => {
                    self.fail("json: expected a JSON document on stdout, found none".to_string())
                }
            }
        }
        // Text.
        if !diff {
            let checks: [(&Vec<String>, &str, bool, &str); 4] = [
                (&e.stdout_contains, &up.stdout, true, "stdout"),
                (&e.stdout_not_contains, &up.stdout, false, "stdout"),
                (&e.stderr_contains, &up.stderr, true, "stderr"),
                (&e.stderr_not_contains, &up.stderr, false, "stderr"),
            ];
            for (pats, text, want, what) in checks {
                for pat in pats {
                    let pat = self.expand(pat)?;
                    if text.contains(&pat) != want {
                        self.fail(format!(
                            "{what} {} {pat:?}",
                            if want { "lacks" } else { "contains" }
                        ));
                    }
                }
            }
            let both = format!("{}\n{}", up.stdout, up.stderr).to_lowercase();
            for pat in &e.output_contains {
                let pat = self.expand(pat)?;
                if !both.contains(&pat.to_lowercase()) {
                    self.fail(format!("output (stdout+stderr) lacks {pat:?}"));
                }
            }
            for pat in &e.output_not_contains {
                let pat = self.expand(pat)?;
                if both.contains(&pat.to_lowercase()) {
                    self.fail(format!("output (stdout+stderr) contains {pat:?}"));
                }
            }
        }
        if up.stderr.contains("panicked at") {
            self.fail("the upgrader panicked");
        }

        // uv.
        let calls = self.uv_calls();
        let kind_of = |c: &Value| {
            c.get("kind")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        for c in &calls {
            // Another upgrader installs in place: never under a live old server (the
            // fake uv refuses with 97 and records who was alive).
            if kind_of(c) == "install" {
                let alive = c
                    .get("managed_alive")
                    .and_then(Value::as_array)
                    .map(|a| a.len())
                    .unwrap_or(0);
                if alive > 0 {
                    self.fail(format!(
                        "uv install ran while old-generation processes were alive: {} (argv {})",
                        c["managed_alive"], c["argv"]
                    ));
                }
            }
            // mm-upgrade never lets uv write the real tool dir: it stages beside it.
            if !diff && matches!(kind_of(c).as_str(), "install" | "prepare") {
                self.fail(format!(
                    "mm-upgrade ran a uv {} call outside its staging dir (UV_TOOL_DIR {}, argv {})",
                    kind_of(c),
                    c["uv_tool_dir"],
                    c["argv"]
                ));
            }
        }
        let count = |k: &str| calls.iter().filter(|c| kind_of(c) == k).count();
        if let Some(n) = e.uv_stages {
            let (kind, got) = if diff {
                ("install", count("install"))
            } else {
                ("stage", count("stage"))
            };
            if got != n {
                self.fail(format!("uv {kind} calls: expected {n}, got {got}"));
            }
        }
        if !diff {
            for want in &e.uv_calls {
                let found = calls.iter().any(|c| {
                    let argv: Vec<&str> = c["argv"]
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    kind_of(c) == want.kind
                        && want.args_contain.iter().all(|a| argv.contains(&a.as_str()))
                        && !want
                            .args_not_contain
                            .iter()
                            .any(|a| argv.contains(&a.as_str()))
                        && want.args_adjacent.iter().all(|run| {
                            run.is_empty()
                                || argv
                                    .windows(run.len())
                                    .any(|w| w.iter().zip(run).all(|(a, b)| *a == b.as_str()))
                        })
                });
                if !found {
                    self.fail(format!(
                        "no uv {} call with args containing {:?}{} and not {:?}",
                        want.kind,
                        want.args_contain,
                        if want.args_adjacent.is_empty() {
                            String::new()
                        } else {
                            format!(", runs {:?}", want.args_adjacent)
                        },
                        want.args_not_contain
                    ));
                }
            }
        }
        self.check_transaction(&e, diff)?;
        if let Some(want) = &e.installed {
            let got = installed_version(self.dir("tools")).unwrap_or_else(|| "none".into());
            if &got != want {
                self.fail(format!(
                    "installed version afterwards: expected {want}, got {got}"
                ));
            }
        }

        // Files.
        for f in &e.files_present {
            let pat = self.expand(f)?;
            if glob(&pat).is_empty() {
                self.fail(format!("file missing: {pat}"));
            }
        }
        for f in &e.files_absent {
            let pat = self.expand(f)?;
            let hits = glob(&pat);
            if !hits.is_empty() {
                self.fail(format!(
                    "file should be absent: {}",
                    hits.iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        for (f, want) in &e.file_contents {
            let path = self.expand(f)?;
            let want = self.expand(want)?;
            match fs::read(&path) {
                Ok(b) if b == want.as_bytes() => {}
                Ok(b) => self.fail(format!(
                    "{path}: content {:?}, expected {want:?}",
                    String::from_utf8_lossy(&b)
                )),
                Err(err) => self.fail(format!("{path}: {err}")),
            }
        }

        // Servers.
        let names: Vec<String> = e.servers.keys().cloned().collect();
        for name in names {
            let se = &e.servers[&name];
            let Some(idx) = self.procs.iter().position(|p| p.name == name) else {
                self.fail(format!("[expect.servers.{name}]: no such server"));
                continue;
            };
            let outcome = self.outcome(&self.procs[idx]);
            if let Some(want) = &se.outcome {
                let ok = match want.as_str() {
                    "dead" => outcome != "alive",
                    w => outcome == w,
                };
                if !ok {
                    self.fail(format!(
                        "server {name} (pid {}): expected {want}, got {outcome}",
                        self.procs[idx].pid()
                    ));
                }
            }
            let events = self.server_events(&name);
            let pid = self.procs[idx].pid() as i64;
            let got_sigs: Vec<String> = events
                .iter()
                .filter(|v| v.get("event").and_then(Value::as_str) == Some("signal"))
                .filter(|v| v.get("pid").and_then(Value::as_i64) == Some(pid))
                .filter_map(|v| v.get("signal").and_then(Value::as_str).map(String::from))
                .collect();
            if let Some(want) = &se.signals {
                let mut it = got_sigs.iter();
                if !want.iter().all(|w| it.any(|g| g == w)) {
                    self.fail(format!("server {name}: expected signals {want:?} (in order), its log shows {got_sigs:?}"));
                }
            }
            for s in &se.not_signals {
                if got_sigs.contains(s) {
                    self.fail(format!("server {name}: received {s}, which it must not"));
                }
            }
            if let Some(want) = &se.all_processes {
                for p in self.procs[idx].own_pids() {
                    let alive = sys::is_alive(p);
                    if (want == "dead" && alive) || (want == "alive" && !alive) {
                        self.fail(format!(
                            "server {name}: process {p} ({}) should be {want}",
                            sys::cmdline(p)
                        ));
                    }
                }
            }
        }

        // Bystanders always survive; the runner itself is never signalled.
        for i in 0..self.procs.len() {
            if self.procs[i].is_server {
                continue;
            }
            let p = &self.procs[i];
            if !sys::is_alive(p.spawned) {
                let how = self
                    .reaper
                    .get(p.spawned)
                    .map(|r| sys::describe_status(r.status))
                    .unwrap_or("dead".into());
                let name = p.name.clone();
                let pid = p.spawned;
                self.fail(format!(
                    "bystander {name} (pid {pid}) did not survive: {how}"
                ));
            }
        }
        for (sig, from) in sys::recorded_signals() {
            self.fail(format!(
                "the runner (pid {}, an ancestor of the upgrader) received {} from pid {from}",
                std::process::id(),
                sys::signal_name(sig)
            ));
        }

        // Event order.
        let tl = self.merged_timeline();
        let mut pos = 0usize;
        let mut prev: Option<String> = None;
        for pat in &e.order {
            let Some(pat) = pattern_for(&self.expand(pat)?, diff) else {
                continue;
            };
            let pat = &pat;
            match tl[pos..].iter().position(|ev| ev_matches(ev, pat)) {
                Some(i) => {
                    pos += i + 1;
                    prev = Some(pat.clone());
                }
                None => {
                    let anywhere = tl.iter().any(|ev| ev_matches(ev, pat));
                    self.fail(match (&prev, anywhere) {
                        (Some(p), true) => format!("order: {pat:?} happened, but not after {p:?}"),
                        (_, _) if !anywhere => format!("order: {pat:?} never happened"),
                        _ => format!("order: {pat:?} not found"),
                    });
                    break;
                }
            }
        }
        if diff {
            for w in self.sc.differential.within.clone() {
                let limit = (w.ms as f64 * sys::time_scale()) as u64;
                let Some(i) = tl.iter().position(|ev| ev_matches(ev, &w.from)) else {
                    self.fail(format!("within: {:?} never happened", w.from));
                    continue;
                };
                match tl[i..].iter().find(|ev| ev_matches(ev, &w.to)) {
                    Some(ev) => {
                        let ms = ev.mono.saturating_sub(tl[i].mono) / 1_000_000;
                        if ms > limit {
                            self.fail(format!(
                                "within: {:?} came {ms} ms after {:?}, more than {limit} ms",
                                w.to, w.from
                            ));
                        }
                    }
                    None => self.fail(format!(
                        "within: {:?} never happened after {:?}",
                        w.to, w.from
                    )),
                }
            }
        }
        for pat in &e.never {
            let Some(pat) = pattern_for(&self.expand(pat)?, diff) else {
                continue;
            };
            let pat = &pat;
            if let Some(ev) = tl.iter().find(|ev| ev_matches(ev, pat)) {
                self.fail(format!(
                    "never: {pat:?} happened: {} {}",
                    ev.source, ev.fields
                ));
            }
        }

        self.check_hosts(&e);

        // Nothing left behind.
        let mut allowed: HashSet<i32> = HashSet::new();
        let me = std::process::id() as i32;
        for p in &self.procs {
            if p.host_log.is_some() {
                // The host is the client: it runs on (its server is judged by generation).
                allowed.insert(p.spawned);
            }
            let want_alive = !p.is_server
                || e.servers.get(&p.name).and_then(|s| s.outcome.as_deref()) == Some("alive");
            if want_alive {
                allowed.insert(p.spawned);
                allowed.insert(p.pid());
                allowed.extend(p.ready_pids());
                allowed.extend(sys::descendants(p.spawned).iter().map(|d| d.pid));
            }
        }
        for a in &e.allow_alive {
            let (name, what) = a.split_once(':').unwrap_or((a.as_str(), "self"));
            let Some(p) = self.procs.iter().find(|p| p.name == name) else {
                self.fail(format!("allow_alive: no server named {name:?}"));
                continue;
            };
            match what {
                "self" => {
                    allowed.insert(p.pid());
                }
                "launcher" => allowed.extend(p.elders()),
                "descendants" => {
                    allowed.insert(p.spawned);
                    allowed.extend(sys::descendants(p.spawned).iter().map(|d| d.pid));
                }
                x => self.fail(format!("allow_alive: {a:?}: use <name>, <name>:launcher or <name>:descendants (not {x:?})")),
            }
        }
        // Servers of the new generation (registered after the switch) may run on.
        let started = self.started_processes();
        if let Some(end) = self.install_end() {
            for (pid, (_, m)) in &started {
                if *m > end {
                    allowed.insert(*pid);
                }
            }
        }
        if e.new_generation_only {
            let end = self.install_end();
            for (pid, (name, m)) in &started {
                let elders: Vec<i32> = self
                    .procs
                    .iter()
                    .filter(|p| &p.name == name)
                    .flat_map(|p| p.elders())
                    .collect();
                if sys::is_alive(*pid) && !elders.contains(pid) && end.is_none_or(|end| *m <= end) {
                    self.fail(format!(
                        "server {name}: pid {pid} of the old generation (registered before the switch) is still running"
                    ));
                }
            }
        }
        // A process may be caught mid-way (just forked, not logged yet; exiting): re-check
        // for a short while before calling it left behind.
        let deadline = Instant::now() + sys::scaled(1.0);
        let leftovers: Vec<String> = loop {
            let mut allowed_now = allowed.clone();
            if let Some(end) = self.install_end() {
                for (pid, (_, m)) in self.started_processes() {
                    if m > end {
                        allowed_now.insert(pid);
                    }
                }
            }
            let left: Vec<String> = sys::descendants(me)
                .into_iter()
                .filter(|d| !allowed_now.contains(&d.pid))
                .map(|d| format!("pid {} [{}] {}", d.pid, d.state, sys::cmdline(d.pid)))
                .collect();
            if left.is_empty() || Instant::now() >= deadline {
                break left;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !leftovers.is_empty() {
            self.fail(format!("processes left behind: {}", leftovers.join("; ")));
        }

        self.sc.expect = e;
        self.upgrader = Some(up);
        Ok(())
    }

    /// `[[host]]` sessions: what each reported, and when. The client-visible gap is
    /// reported, never asserted (speed is measured in `bench/`).
    fn check_hosts(&mut self, e: &Expect) {
        let old = self.sc.uv.installed.clone();
        let sw = self.install_end();
        let at = |src: &str, ev: &str| {
            self.timeline
                .iter()
                .find(|x| x.source == src && x.event == ev)
                .map(|x| x.mono)
        };
        let window = (at("upgrader", "start"), at("upgrader", "exit"));
        for name in e.hosts.keys() {
            if !self
                .procs
                .iter()
                .any(|p| &p.name == name && p.host_log.is_some())
            {
                self.fail(format!("[expect.hosts.{name}]: no [[host]] named {name:?}"));
            }
        }
        let hosts: Vec<(String, PathBuf)> = self
            .procs
            .iter()
            .filter_map(|p| Some((p.name.clone(), p.host_log.clone()?)))
            .collect();
        for (name, log) in hosts {
            let sessions = host_sessions(&Self::read_jsonl(&log));
            self.notes
                .push(host_summary(&name, &sessions, &old, window));
            let Some(want) = e.hosts.get(&name) else {
                continue;
            };
            if let Some(n) = want.min_sessions {
                if sessions.len() < n {
                    self.fail(format!(
                        "host {name}: {} sessions, expected at least {n}",
                        sessions.len()
                    ));
                }
            }
            if let Some(v) = &want.last_version {
                let last = sessions.last().map(|s| s.version.as_str());
                if last != Some(v.as_str()) {
                    self.fail(format!(
                        "host {name}: last session reports {last:?}, expected {v}"
                    ));
                }
            }
            if !want.no_old_version_after_switch {
                continue;
            }
            let Some(sw) = sw else {
                self.fail(format!(
                    "host {name}: no_old_version_after_switch, but the upgrader never switched"
                ));
                continue;
            };
            let ms = |a: u64, b: u64| a.abs_diff(b) as f64 / 1e6;
            let mut in_flight = vec![];
            for s in sessions.iter().filter(|s| s.version == old) {
                if s.spawned > sw {
                    self.fail(format!(
                        "host {name}: session {} (pid {}) started {:.1} ms after the switch and reports the old version {old}",
                        s.n, s.server, ms(s.spawned, sw)
                    ));
                } else if s.answered > sw {
                    in_flight.push(format!(
                        "session {} (pid {}: started {:.1} ms before, answered {:.1} ms after, served {})",
                        s.n,
                        s.server,
                        ms(sw, s.spawned),
                        ms(s.answered, sw),
                        s.died.map_or("until the end".into(), |d| format!("{:.1} ms", ms(d, s.answered)))
                    ));
                }
                if s.died.is_none() && sys::is_alive(s.server) {
                    self.fail(format!(
                        "host {name}: session {} (pid {}) of the old version {old} is still served after the upgrade",
                        s.n, s.server
                    ));
                }
            }
            if !in_flight.is_empty() {
                self.notes.push(format!(
                    "host {name}: old-version sessions in flight at the switch (respawned before it, retired after): {}",
                    in_flight.join(", ")
                ));
            }
        }
    }

    // ---- report ----------------------------------------------------------------------------

    fn report(&self, setup_error: Option<&str>) -> String {
        let mut r = String::new();
        let path = self.cfg.scenario_path.display();
        r.push_str(&format!("scenario: {} ({path})\n", self.cfg.name));
        r.push_str(&format!("  {}\n", self.sc.description.trim()));
        if let Some(err) = setup_error {
            r.push_str(&format!("SETUP ERROR: {err}\n"));
        }
        if !self.failures.is_empty() {
            r.push_str("FAILED CHECKS:\n");
            for f in &self.failures {
                r.push_str(&format!("  - {f}\n"));
            }
        }
        for n in &self.notes {
            r.push_str(&format!("note: {n}\n"));
        }
        if let Some(up) = &self.upgrader {
            r.push_str(&format!(
                "--- upgrader: {} -> {} in {} ms\n",
                up.cmdline
                    .iter()
                    .map(|a| shell_quote(a))
                    .collect::<Vec<_>>()
                    .join(" "),
                up.status_text,
                up.duration.as_millis()
            ));
            r.push_str(&format!("--- upgrader stdout:\n{}\n", up.stdout.trim_end()));
            r.push_str(&format!("--- upgrader stderr:\n{}\n", up.stderr.trim_end()));
        }
        r.push_str("--- uv log:\n");
        for c in self.uv_calls() {
            r.push_str(&format!("  {c}\n"));
        }
        for p in &self.procs {
            r.push_str(&format!(
                "--- {} {} (spawned pid {}, pid {}, pgid {}): {}\n",
                match (p.is_server, &p.host_log) {
                    (_, Some(_)) => "host",
                    (true, None) => "server",
                    (false, None) => "bystander",
                },
                p.name,
                p.spawned,
                p.pid(),
                p.pgid,
                self.outcome(p)
            ));
            if let Some(rd) = &p.ready {
                r.push_str(&format!("  ready: {rd}\n"));
            }
            if let Some(log) = &p.host_log {
                for v in Self::read_jsonl(log) {
                    r.push_str(&format!("  host: {v}\n"));
                }
            }
            for v in Self::read_jsonl(&p.events) {
                r.push_str(&format!("  {v}\n"));
            }
            let err = fs::read_to_string(&p.stderr).unwrap_or_default();
            if !err.trim().is_empty() {
                r.push_str(&format!(
                    "  stderr: {}\n",
                    err.trim_end().replace('\n', "\n          ")
                ));
            }
            let _ = &p.stdout;
        }
        r.push_str("--- merged timeline (ms since first event):\n");
        let tl = self.merged_timeline();
        let t0 = tl.first().map(|e| e.mono).unwrap_or(0);
        for ev in &tl {
            let detail = match ev.source.as_str() {
                "uv" => ev
                    .fields
                    .get("argv")
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                _ => {
                    let mut f = ev.fields.clone();
                    if let Some(o) = f.as_object_mut() {
                        for k in ["ts", "mono_ns", "event", "argv"] {
                            o.remove(k);
                        }
                    }
                    f.to_string()
                }
            };
            r.push_str(&format!(
                "  {:>9.3} {:<12} {:<16} {}\n",
                (ev.mono.saturating_sub(t0)) as f64 / 1e6,
                ev.source,
                ev.event,
                detail
            ));
        }
        r.push_str(&format!(
            "--- runtime dir after the run:\n{}",
            list_dir(self.dir("runtime"))
        ));
        r
    }

    fn teardown(&mut self) {
        self.stdins.clear();
        self.held.clear();
        sys::kill_all_descendants(Duration::from_secs(5));
        let _ = sys::sweep_run_id(&self.cfg.run_id);
        // Restore what unsafe-dir modes may have changed, so the sandbox can be removed.
        let _ = fs::set_permissions(self.dir("runtime"), fs::Permissions::from_mode(0o700));
    }
}

/// Entry point of the inner runner. Prints the report; returns pass/fail.
pub fn run_one(cfg: Config) -> (Outcome, String) {
    let text = match fs::read_to_string(&cfg.scenario_path) {
        Ok(t) => t,
        Err(e) => {
            return (
                Outcome::Fail,
                format!("{}: {e}", cfg.scenario_path.display()),
            )
        }
    };
    let sc: Scenario = match toml::from_str(&text) {
        Ok(s) => s,
        Err(e) => {
            return (
                Outcome::Fail,
                format!("{}: {e}", cfg.scenario_path.display()),
            )
        }
    };
    if std::process::id() != 1 {
        sys::set_subreaper();
    }
    sys::install_signal_recorder();
    let reaper = Reaper::start();
    let keep = cfg.keep;
    let mut r = match Runner::new(cfg, sc, reaper) {
        Ok(r) => r,
        Err(e) => return (Outcome::Fail, e),
    };
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<(), String> {
            r.setup_sandbox()?;
            r.plant_files("before-servers")?;
            r.start_bystanders()?;
            r.start_servers()?;
            r.start_hosts()?;
            r.plant_files("after-servers")?;
            let managed = r.write_managed_pids()?;
            r.run_upgrader(&managed)?;
            r.settle();
            r.check()
        }));
    let setup_error = match result {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(p) => Some(format!(
            "runner panicked: {}",
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
    };
    let passed = setup_error.is_none() && r.failures.is_empty();
    let report = r.report(setup_error.as_deref());
    r.teardown();
    let mut report = report;
    if keep || !passed && std::env::var("MM_SCENARIO_KEEP_FAILED").is_ok() {
        report.push_str(&format!(
            "--- sandbox kept: {}\n    . {}/env.sh\n",
            r.sandbox.display(),
            r.sandbox.display()
        ));
    } else {
        let _ = fs::remove_dir_all(&r.sandbox);
    }
    (if passed { Outcome::Pass } else { Outcome::Fail }, report)
}

// ---- helpers -------------------------------------------------------------------------------

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

fn join_with_timeout(h: std::thread::JoinHandle<Vec<u8>>, limit: Duration, pgid: i32) -> Vec<u8> {
    let deadline = Instant::now() + limit;
    while !h.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if !h.is_finished() {
        // Something in the upgrader's group still holds the pipe: kill the group.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
    h.join().unwrap_or_default()
}

pub fn digest(path: &str) -> String {
    let h = Sha256::digest(path.as_bytes());
    h.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn iso_offset(secs: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let t = time::OffsetDateTime::from_unix_timestamp(now.as_secs() as i64 + secs).unwrap()
        + time::Duration::microseconds(now.subsec_micros() as i64);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}+00:00",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
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

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn exit_class(code: Option<i32>) -> &'static str {
    match code {
        Some(0) => "ok",
        Some(2) => "usage",
        Some(_) => "failure",
        None => "signal",
    }
}

fn toml_to_json(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => json!(s),
        toml::Value::Integer(i) => json!(i),
        toml::Value::Float(f) => json!(f),
        toml::Value::Boolean(b) => json!(b),
        toml::Value::Datetime(d) => json!(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

/// Subset match: objects by key (`"<absent>"` = key must be missing), arrays of equal
/// length matched without regard to order (a leading `"..."` element: at least these), strings with placeholders, `"<any>"`,
/// `"<nonempty>"`, `"~substring"` (case-insensitive); a string also matches a number
/// that prints the same (so `"{pid:main}"` matches a pid).
fn json_match(
    r: &Runner,
    want: &Value,
    got: &Value,
    path: &str,
    errs: &mut Vec<String>,
    diff: bool,
) {
    match want {
        Value::Object(m) => {
            let Some(g) = got.as_object() else {
                errs.push(format!("{path}: expected an object, got {got}"));
                return;
            };
            for (k, w) in m {
                if diff && path.is_empty() && OURS_ONLY_KEYS.contains(&k.as_str()) {
                    continue;
                }
                let p = format!("{path}.{k}");
                match (w.as_str(), g.get(k)) {
                    (Some("<absent>"), None) => {}
                    (Some("<absent>"), Some(v)) => {
                        errs.push(format!("{p}: expected absent, got {v}"))
                    }
                    (_, None) => errs.push(format!("{p}: missing (expected {w})")),
                    (_, Some(v)) => json_match(r, w, v, &p, errs, diff),
                }
            }
        }
        Value::Array(ws) => {
            let Some(gs) = got.as_array() else {
                errs.push(format!("{path}: expected an array, got {got}"));
                return;
            };
            // A leading "..." means "at least these elements".
            let (ws, at_least) = match ws.first().and_then(Value::as_str) {
                Some("...") => (&ws[1..], true),
                _ => (&ws[..], false),
            };
            if (!at_least && ws.len() != gs.len()) || ws.len() > gs.len() {
                errs.push(format!(
                    "{path}: expected {} elements {want}, got {}: {got}",
                    ws.len(),
                    gs.len()
                ));
                return;
            }
            let mut used = vec![false; gs.len()];
            for w in ws {
                let hit = (0..gs.len()).find(|&i| {
                    if used[i] {
                        return false;
                    }
                    let mut e = vec![];
                    json_match(r, w, &gs[i], path, &mut e, diff);
                    e.is_empty()
                });
                match hit {
                    Some(i) => used[i] = true,
                    None => {
                        errs.push(format!("{path}: no element matches {w} in {got}"));
                        return;
                    }
                }
            }
        }
        Value::String(s) => {
            let s = match r.expand(s) {
                Ok(s) => s,
                Err(e) => {
                    errs.push(format!("{path}: {e}"));
                    return;
                }
            };
            let got_text = match got {
                Value::String(g) => g.clone(),
                other => other.to_string(),
            };
            let ok = match s.as_str() {
                "<any>" => true,
                "<nonempty>" => match got {
                    Value::String(g) => !g.is_empty(),
                    Value::Array(a) => !a.is_empty(),
                    Value::Object(o) => !o.is_empty(),
                    Value::Null => false,
                    _ => true,
                },
                // A message text: not compared against another upgrader (its wording differs).
                _ if s.starts_with('~') && diff => true,
                _ if s.starts_with('~') => got_text.to_lowercase().contains(&s[1..].to_lowercase()),
                _ => got_text == s && !got.is_null(),
            };
            if !ok {
                errs.push(format!("{path}: expected {s:?}, got {got}"));
            }
        }
        Value::Number(n) => {
            if got.as_f64() != n.as_f64() {
                errs.push(format!("{path}: expected {n}, got {got}"));
            }
        }
        other => {
            if other != got {
                errs.push(format!("{path}: expected {other}, got {got}"));
            }
        }
    }
}

/// An event pattern as written, or its counterpart for another upgrader (differential
/// mode): mm-upgrade's `switched`/`installed` is its in-place `uv:install`; mm-upgrade's
/// other events and the stage call have none (None: not checked).
fn pattern_for(pat: &str, diff: bool) -> Option<String> {
    if !diff {
        return Some(pat.to_string());
    }
    let mut parts = pat.splitn(3, ':');
    let (src, event) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    match (src, event) {
        ("mm", "switched" | "installed") => Some("uv:install".into()),
        ("mm", _) | ("uv", "stage") => None,
        _ => Some(pat.to_string()),
    }
}

/// `source:event[:detail]`; `*` as source matches any; detail matches any string or
/// number in the record (argv elements included).
fn ev_matches(ev: &Ev, pat: &str) -> bool {
    let mut parts = pat.splitn(3, ':');
    let src = parts.next().unwrap_or("");
    let event = parts.next().unwrap_or("");
    let detail = parts.next();
    if src != "*" && src != ev.source {
        return false;
    }
    if event != "*" && event != ev.event {
        return false;
    }
    match detail {
        None => true,
        Some(d) => {
            let mut vals = vec![];
            flatten(&ev.fields, &mut vals);
            vals.iter().any(|v| v == d)
        }
    }
}

fn flatten(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Number(n) => out.push(n.to_string()),
        Value::Array(a) => a.iter().for_each(|x| flatten(x, out)),
        Value::Object(o) => o.values().for_each(|x| flatten(x, out)),
        _ => {}
    }
}

/// Paths matching `pat`, where `*` in any component matches any run of characters.
/// Does not follow symlinks when deciding existence (a dangling link exists).
fn glob(pat: &str) -> Vec<PathBuf> {
    let mut cur = vec![PathBuf::from("/")];
    for comp in Path::new(pat).components().skip(1) {
        let c = comp.as_os_str().to_string_lossy().into_owned();
        let mut next = vec![];
        for base in &cur {
            if c.contains('*') {
                if let Ok(rd) = fs::read_dir(base) {
                    for e in rd.flatten() {
                        if wild(&c, &e.file_name().to_string_lossy()) {
                            next.push(e.path());
                        }
                    }
                }
            } else {
                let p = base.join(&c);
                if fs::symlink_metadata(&p).is_ok() {
                    next.push(p);
                }
            }
        }
        cur = next;
    }
    cur
}

fn wild(pat: &str, s: &str) -> bool {
    let parts: Vec<&str> = pat.split('*').collect();
    if parts.len() == 1 {
        return pat == s;
    }
    let mut rest = s;
    if !rest.starts_with(parts[0]) {
        return false;
    }
    rest = &rest[parts[0].len()..];
    for (i, p) in parts.iter().enumerate().skip(1) {
        if i == parts.len() - 1 {
            return rest.ends_with(p);
        }
        match rest.find(p) {
            Some(j) => rest = &rest[j + p.len()..],
            None => return false,
        }
    }
    true
}

fn list_dir(dir: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        let mut entries: Vec<_> = rd.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let md = fs::symlink_metadata(&p);
            let desc = match &md {
                Ok(m) if m.file_type().is_symlink() => format!(
                    "-> {}",
                    fs::read_link(&p)
                        .map(|t| t.display().to_string())
                        .unwrap_or_default()
                ),
                Ok(m) if m.is_dir() => {
                    stack.push(p.clone());
                    format!("dir {:o}", m.permissions().mode() & 0o7777)
                }
                Ok(m) => format!("{} bytes {:o}", m.len(), m.permissions().mode() & 0o7777),
                Err(e) => e.to_string(),
            };
            out.push_str(&format!(
                "  {} {desc}\n",
                p.strip_prefix(dir).unwrap_or(&p).display()
            ));
        }
    }
    out
}

fn installed_version(tools: &Path) -> Option<String> {
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

impl Proc {
    fn ready_from_file(&mut self, path: &Path, deadline: Instant) -> bool {
        loop {
            if let Ok(Ok(v)) = fs::read_to_string(path).map(|t| serde_json::from_str::<Value>(&t)) {
                self.ready = Some(v);
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(3));
        }
    }
}

#[allow(dead_code)]
fn unused(_: HashMap<(), ()>) {}

/// Kills a helper's process group when dropped (on every path, panics included).
struct GroupGuard(i32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.0 > 1 {
            unsafe { libc::kill(-self.0, libc::SIGKILL) };
        }
    }
}

/// A process's start time (/proc/<pid>/stat field 22), if it is alive and not a zombie.
fn live_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rfind(')')?;
    let fields: Vec<&str> = stat[after + 1..].split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    if state == 'Z' || state == 'X' {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Record every entry under `root` (not following links) as `label/<relative path>`.
fn tree_of(root: &Path, label: &str, out: &mut Tree) {
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
fn tree_diff(before: &Tree, after: &Tree, max: usize) -> Vec<String> {
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

/// Watches the old generation and mm-upgrade's `--events` file while the upgrader runs
/// (every millisecond): when each managed process was last seen alive and first seen
/// gone in /proc (the runner's own view, independent of the upgrader's, as the fake uv's
/// check at install time was), and what ran right after the `switched` record appeared.
/// "Seen alive after `switched` was logged" means alive at the switch (the record is
/// written after the exchange): never a false alarm.
struct SwitchWatch {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<Watched>>,
}

#[derive(Clone, Debug, Default)]
struct Watched {
    /// pid -> mono_ns just before the last look that found it alive.
    last_alive: HashMap<i32, u64>,
    /// pid -> mono_ns just after the first look that found it gone.
    first_gone: HashMap<i32, u64>,
    at_switch: Option<SwitchSnapshot>,
}

impl SwitchWatch {
    fn start(events: PathBuf, managed: Vec<Managed>) -> SwitchWatch {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("switch-watch".into())
            .spawn(move || {
                let mut w = Watched::default();
                let mut offset = 0usize;
                let mut pending = String::new();
                loop {
                    // Read the flag first: after it is set, one last look.
                    let last = flag.load(std::sync::atomic::Ordering::SeqCst);
                    for m in &managed {
                        if w.first_gone.contains_key(&m.pid) {
                            continue;
                        }
                        let before = sys::mono_ns();
                        if live_start_time(m.pid) == Some(m.start) {
                            w.last_alive.insert(m.pid, before);
                        } else {
                            w.first_gone.insert(m.pid, sys::mono_ns());
                        }
                    }
                    if w.at_switch.is_none() {
                        if let Ok(bytes) = fs::read(&events) {
                            if bytes.len() > offset {
                                pending.push_str(&String::from_utf8_lossy(&bytes[offset..]));
                                offset = bytes.len();
                            }
                        }
                        while let Some(nl) = pending.find('\n') {
                            let line: String = pending.drain(..=nl).collect();
                            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                                continue;
                            };
                            if v.get("event").and_then(Value::as_str) == Some("switched") {
                                w.at_switch = Some(SwitchSnapshot::take(
                                    v.get("mono_ns").and_then(Value::as_u64).unwrap_or(0),
                                ));
                                break;
                            }
                        }
                    }
                    if last {
                        return w;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
            .ok();
        SwitchWatch { stop, handle }
    }

    /// Stop watching (the upgrader has exited) and return what was seen.
    fn finish(mut self) -> Watched {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for SwitchWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl SwitchSnapshot {
    fn take(switched: u64) -> SwitchSnapshot {
        let seen = sys::mono_ns();
        let me = std::process::id() as i32;
        let alive = sys::descendants(me)
            .into_iter()
            .map(|d| (d.pid, sys::cmdline(d.pid)))
            .collect();
        SwitchSnapshot {
            switched,
            seen,
            alive,
        }
    }
}

/// One MCP session of a `[[host]]`, from fake-host's log (CLOCK_MONOTONIC ns).
#[derive(Debug)]
struct HostSession {
    n: u64,
    server: i32,
    version: String,
    spawned: u64,
    answered: u64,
    died: Option<u64>,
}

fn host_sessions(log: &[Value]) -> Vec<HostSession> {
    let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let mut out: Vec<HostSession> = log
        .iter()
        .filter(|v| v["event"] == "session")
        .map(|v| HostSession {
            n: num(v, "n"),
            server: num(v, "server") as i32,
            version: v["version"].as_str().unwrap_or("").to_string(),
            spawned: num(v, "spawned_mono_ns"),
            answered: num(v, "mono_ns"),
            died: None,
        })
        .collect();
    for d in log.iter().filter(|v| v["event"] == "died") {
        if let Some(s) = out.iter_mut().find(|s| s.n == num(d, "n")) {
            s.died = Some(num(d, "mono_ns"));
        }
    }
    out.sort_by_key(|s| s.answered);
    out
}

/// The sessions in one line, the client-visible gap (the last old-version session's
/// death to the first new-version answer), and how long the host had no session while
/// the upgrader ran.
fn host_summary(
    name: &str,
    sessions: &[HostSession],
    old: &str,
    (start, end): (Option<u64>, Option<u64>),
) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for s in sessions {
        *counts.entry(&s.version).or_default() += 1;
    }
    let counts: Vec<String> = counts.iter().map(|(v, n)| format!("{v} x{n}")).collect();
    let mut text = format!(
        "host {name}: {} sessions ({})",
        sessions.len(),
        counts.join(", ")
    );
    let first_new = sessions.iter().find(|s| s.version != old);
    match first_new {
        Some(f) => {
            let last_old_death = sessions
                .iter()
                .filter(|s| s.version == old)
                .filter_map(|s| s.died)
                .filter(|d| *d <= f.answered)
                .max();
            match last_old_death {
                Some(d) => text.push_str(&format!(
                    "; client-visible gap {:.1} ms (last {old} session died -> first {} session answered)",
                    (f.answered - d) as f64 / 1e6,
                    f.version
                )),
                None => text.push_str("; no old-version session died before the first new one"),
            }
        }
        None => text.push_str(&format!("; no session of another version than {old}")),
    }
    if let (Some(a), Some(b)) = (start, end) {
        // Covered: [answered, died) of every session, clipped to the upgrader's run.
        let mut spans: Vec<(u64, u64)> = sessions
            .iter()
            .map(|s| (s.answered.max(a), s.died.unwrap_or(u64::MAX).min(b)))
            .filter(|(x, y)| x < y)
            .collect();
        spans.sort();
        let (mut covered, mut cur): (u64, Option<(u64, u64)>) = (0, None);
        for (x, y) in spans {
            cur = match cur {
                Some((cx, cy)) if x <= cy => Some((cx, cy.max(y))),
                Some((cx, cy)) => {
                    covered += cy - cx;
                    Some((x, y))
                }
                None => Some((x, y)),
            };
        }
        if let Some((cx, cy)) = cur {
            covered += cy - cx;
        }
        text.push_str(&format!(
            "; without a session {:.1} ms of the upgrader's {:.1} ms",
            (b - a).saturating_sub(covered) as f64 / 1e6,
            (b - a) as f64 / 1e6
        ));
    }
    text
}
