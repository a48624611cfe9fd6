//! Stage 1: find every live memtomem instance. Liveness is the flock, never
//! "the pid exists", and a process becomes a stop target only when `/proc`
//! proves it holds the lock its pid file is about (or, for processes without a
//! pid file, that it runs code of this tool's installation).

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::paths::{self, PathEnv};
use crate::pidfile::{self, LegacyMode, Payload, Probe};
use crate::sys::{self, FileId, Pid, ProcStat, RunState};

/// What kind of memtomem process an instance is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Holder of a store-scoped `server-<digest>.pid`.
    Server,
    /// Holder of the bare, transitional `server.pid`.
    BareServer,
    /// Exclusive holder of `~/.memtomem/.server.pid` (pre-0.1.25).
    LegacyServer,
    /// `mm web`, holder of `web.pid`.
    Web,
    /// A server with a presence marker but no pid file (lost the store lock).
    Secondary,
    /// A process of this installation that holds no memtomem file at all.
    Unregistered,
}

impl Role {
    pub fn label(self) -> &'static str {
        match self {
            Role::Server | Role::BareServer => "server",
            Role::LegacyServer => "legacy server",
            Role::Web => "web UI",
            Role::Secondary => "secondary server",
            Role::Unregistered => "process",
        }
    }
}

/// One live instance: a process we may stop, or a lock we cannot attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Instance {
    pub role: Role,
    /// The pid file or marker that makes it ours (`None` for unregistered).
    pub source: Option<PathBuf>,
    /// The verified process; `None` when it could not be attributed.
    pub pid: Option<Pid>,
    #[serde(skip)]
    pub start_ticks: u64,
    #[serde(skip)]
    pub ppid: Pid,
    /// The start stamp from the payload, if any.
    pub started: Option<String>,
    /// How we know this process is what we say it is.
    pub evidence: Vec<String>,
    /// Why it cannot be stopped automatically (the run refuses).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// A transient state (a startup gap: lock held, payload not written
    /// yet; a holder in mid-exit; a file replaced under the probe): the
    /// inventory is retried briefly before its problem counts.
    #[serde(skip)]
    pub transient: bool,
    #[serde(skip)]
    pub file_id: Option<FileId>,
}

/// A memtomem file nobody holds, safe to remove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StaleFile {
    pub path: PathBuf,
    pub pid: Option<i64>,
}

/// Everything discovery found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Inventory {
    pub instances: Vec<Instance>,
    pub stale: Vec<StaleFile>,
    /// Reasons the inventory is incomplete: the run refuses on any.
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
    /// Shared legacy aliases seen (not stop targets, reported only).
    pub aliases: Vec<PathBuf>,
    /// A problem of `problems` may be transient (a file that vanished or
    /// was replaced during its probe, a marker whose holder is changing).
    #[serde(skip)]
    pub unsettled: bool,
}

impl Inventory {
    /// Something seen may be a transient state: worth another look before
    /// its problem counts.
    pub fn unsettled(&self) -> bool {
        self.unsettled || self.instances.iter().any(|i| i.transient)
    }

    /// Problems, including the per-instance ones, de-duplicated in order.
    pub fn all_problems(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for p in self
            .problems
            .iter()
            .cloned()
            .chain(self.instances.iter().filter_map(|i| i.problem.clone()))
        {
            if !out.contains(&p) {
                out.push(p);
            }
        }
        out
    }

    pub fn targets(&self) -> impl Iterator<Item = &Instance> {
        self.instances
            .iter()
            .filter(|i| i.pid.is_some() && i.problem.is_none())
    }
}

/// Where this tool's installation lives, to prove a process belongs to it.
#[derive(Debug, Clone, Default)]
pub struct Installation {
    /// uv's tool dir exactly as uv named it (the transaction's layout checks
    /// it is absolute); `None` when uv printed nothing.
    pub tool_dir: Option<PathBuf>,
    /// uv's bin dir, for entry-point links.
    pub bin_dir: Option<PathBuf>,
    /// `<uv tool dir>/memtomem`, only when it is verified: an absolute path
    /// naming a real directory that holds a uv receipt. Without it nothing
    /// is proven by installation (a relative or empty path would make any
    /// process whose argv[0] is `memtomem` "ours").
    pub env_dir: Option<PathBuf>,
    /// The console scripts the receipt lists (`memtomem`, `mm`,
    /// `memtomem-server`…): the entry points a process may run.
    pub entry_points: Vec<String>,
}

impl Installation {
    /// Ask uv where its tools and entry points live.
    pub fn from_uv(uv: &crate::install::Uv) -> Result<Installation, crate::install::UvError> {
        let (tool_dir, bin_dir) = uv.tool_dirs()?;
        Ok(Installation::at(tool_dir, bin_dir))
    }

    /// The installation under `tool_dir`, verified as [`Installation::env_dir`] says.
    pub fn at(tool_dir: PathBuf, bin_dir: Option<PathBuf>) -> Installation {
        let tool_dir = (!tool_dir.as_os_str().is_empty()).then_some(tool_dir);
        let env_dir = tool_dir
            .as_ref()
            .map(|t| t.join(crate::install::PACKAGE))
            .filter(|e| verified_env(e));
        let entry_points = env_dir
            .as_deref()
            .and_then(|e| crate::receipt::read(e).ok())
            .map(|r| r.entrypoints.into_iter().map(|e| e.name).collect())
            .unwrap_or_default();
        Installation {
            tool_dir,
            bin_dir: bin_dir.filter(|b| !b.as_os_str().is_empty()),
            env_dir,
            entry_points,
        }
    }

    /// uv's tool dir (the environment's parent).
    pub fn tool_dir(&self) -> Option<&Path> {
        self.tool_dir.as_deref()
    }

    /// Evidence that `pid` runs this installation's own interpreter on one
    /// of its entry points, if it does. Only the process's executable, argv
    /// and working directory are read; nothing of it is executed, and an
    /// argument that merely names a file inside the env proves nothing.
    pub fn evidence(&self, pid: Pid) -> Option<String> {
        let env_dir = self.env_dir.as_ref()?;
        let argv = sys::cmdline(pid);
        let cwd = || fs::read_link(format!("/proc/{pid}/cwd")).ok();
        let exe = fs::metadata(format!("/proc/{pid}/exe"))
            .ok()
            .map(|m| FileId::of(&m));
        runs_entry_point(env_dir, &self.entry_points, &argv, exe, cwd)
    }
}

/// A directory (not a link) at an absolute path, holding uv's receipt.
fn verified_env(env: &Path) -> bool {
    env.is_absolute()
        && fs::symlink_metadata(env).is_ok_and(|m| m.is_dir())
        && fs::symlink_metadata(env.join(crate::receipt::FILE)).is_ok_and(|m| m.is_file())
}

/// How a Python command line says what to run (CPython's own option rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PyLaunch {
    /// `-m <module>`
    Module(String),
    /// A script path, as Python will open it.
    Script(String),
    /// `-c <code>`, `-` (stdin) or an interactive session.
    Other,
}

/// Parse what a Python interpreter runs from its arguments (after argv[0]):
/// grouped flags (`-BEs`), options with an argument (`-W`, `-X`, attached
/// or separate, `--check-hash-based-pycs`), `-m`/`-c` ending the options,
/// `--`, and the first operand as the script.
pub fn python_launch(args: &[String]) -> PyLaunch {
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if a == "--" {
            return args
                .get(i + 1)
                .map_or(PyLaunch::Other, |s| PyLaunch::Script(s.clone()));
        }
        if a == "-" || !a.starts_with('-') {
            return match a {
                "-" => PyLaunch::Other,
                _ => PyLaunch::Script(a.to_string()),
            };
        }
        if let Some(long) = a.strip_prefix("--") {
            // Only one long option takes a separate value.
            i += if long == "check-hash-based-pycs" {
                2
            } else {
                1
            };
            continue;
        }
        let flags = &a[1..];
        for (k, c) in flags.char_indices() {
            let rest = &flags[k + c.len_utf8()..];
            match c {
                'm' | 'c' | 'W' | 'X' => {
                    let value = if rest.is_empty() {
                        i += 1;
                        args.get(i).cloned()
                    } else {
                        Some(rest.to_string())
                    };
                    match c {
                        'm' => return value.map_or(PyLaunch::Other, PyLaunch::Module),
                        'c' => return PyLaunch::Other,
                        _ => break,
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    PyLaunch::Other
}

/// Rule (b): the process runs this installation's own interpreter on one
/// of its entry points.
/// - argv[0] names a `python*` in the env's `bin/` (that is how Python knows
///   it is the env's interpreter), and the running executable is the very
///   file that path leads to;
/// - Python runs `-m memtomem…`, or a script that resolves (links followed,
///   a relative path against the process's working directory) to one of the
///   receipt's entry points in the env's `bin/`.
pub fn runs_entry_point(
    env_dir: &Path,
    entry_points: &[String],
    argv: &[String],
    exe: Option<FileId>,
    cwd: impl Fn() -> Option<PathBuf>,
) -> Option<String> {
    let bin = env_dir.join("bin");
    let bin_id = fs::metadata(&bin).ok().map(|m| FileId::of(&m))?;
    let resolve = |p: &str| -> Option<PathBuf> {
        let p = Path::new(p);
        if p.is_absolute() {
            Some(p.to_path_buf())
        } else if p.components().count() > 1 {
            Some(cwd()?.join(p))
        } else {
            // A bare name was found on PATH, which we do not read.
            None
        }
    };
    let in_bin = |p: &Path| {
        p.parent()
            .and_then(|d| fs::metadata(d).ok())
            .is_some_and(|m| FileId::of(&m) == bin_id)
    };
    let argv0 = resolve(argv.first()?)?;
    let is_python = argv0
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("python"));
    if !is_python || !in_bin(&argv0) {
        return None;
    }
    let interp = fs::metadata(&argv0).ok().map(|m| FileId::of(&m))?;
    if exe? != interp {
        return None;
    }
    match python_launch(&argv[1..]) {
        PyLaunch::Module(m) if m == "memtomem" || m.starts_with("memtomem.") => Some(format!(
            "runs this installation's interpreter {} -m {m}",
            argv0.display()
        )),
        PyLaunch::Script(s) => {
            let script = fs::canonicalize(resolve(&s)?).ok()?;
            let name = script.file_name()?.to_string_lossy().into_owned();
            (in_bin(&script) && entry_points.contains(&name)).then(|| {
                format!(
                    "runs this installation's interpreter {} on its entry point {s}",
                    argv0.display()
                )
            })
        }
        _ => None,
    }
}

/// Inputs of one discovery pass.
pub struct Scope<'a> {
    pub env: &'a PathEnv,
    pub install: &'a Installation,
    /// Never targets: ourselves and our ancestors.
    pub protected: &'a [Pid],
    /// Scan the process table for unregistered processes of the installation.
    pub scan_processes: bool,
}

/// Unlocked markers younger than this may belong to a server that is still
/// starting (upstream's `_STALE_GRACE_S`); older ones are garbage.
const MARKER_GRACE: Duration = Duration::from_secs(60);
/// A held marker without a pid lock this young is a server that may still be
/// taking its pid lock (upstream retries contention for 0.5 s).
const STARTING_GRACE: Duration = Duration::from_millis(1500);

pub fn discover(scope: &Scope) -> Inventory {
    let mut inv = Inventory::default();
    let mut table: Option<Vec<ProcStat>> = None;
    let mut marker_pids: Vec<(Pid, PathBuf)> = Vec::new();

    for dir in scope.env.runtime_dirs() {
        match paths::validate_runtime_dir(&dir.path, scope.env.euid) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(reason) if dir.canonical => {
                inv.problems.push(format!(
                    "runtime directory {} is unsafe ({reason}); fix or remove it, e.g. rm -rf -- {}",
                    dir.path.display(),
                    paths::shell_quote(&dir.path)
                ));
                continue;
            }
            Err(reason) => {
                let w = format!(
                    "Server liveness probe used a narrowed runtime inventory (skipped: {} ({reason})). Only validated runtime directories were checked.",
                    dir.path.display()
                );
                if !inv.warnings.contains(&w) {
                    inv.warnings.push(w);
                }
                continue;
            }
        }
        let mut names = match list_dir(&dir.path) {
            Ok(n) => n,
            Err(e) => {
                inv.problems.push(format!(
                    "memtomem-server: enumerating pid files failed ({}: {e})",
                    dir.path.display()
                ));
                continue;
            }
        };
        names.sort();
        let pid_files = names
            .iter()
            .filter(|n| paths::is_server_pid_name(n))
            .map(|n| (Role::Server, n))
            .chain(
                names
                    .iter()
                    .filter(|n| *n == "server.pid")
                    .map(|n| (Role::BareServer, n)),
            )
            .chain(
                names
                    .iter()
                    .filter(|n| *n == "web.pid")
                    .map(|n| (Role::Web, n)),
            );
        for (role, name) in pid_files {
            let path = dir.path.join(name);
            probe_into(&mut inv, role, &path, scope, &mut table);
        }
        for sub in ["presence", "instances"] {
            collect_markers(
                &mut inv,
                &dir.path.join(sub),
                &mut marker_pids,
                scope,
                &mut table,
            );
        }
    }

    let legacy = scope.env.legacy_pid_path();
    probe_into(&mut inv, Role::LegacyServer, &legacy, scope, &mut table);

    // Presence/instance markers whose holder owns no pid file: secondary
    // servers. Stoppable only with proof they run this installation.
    for (pid, marker) in marker_pids {
        if inv.instances.iter().any(|i| i.pid == Some(pid)) || scope.protected.contains(&pid) {
            continue;
        }
        let Some(st) = sys::proc_stat(pid).filter(|s| s.state != RunState::Zombie) else {
            continue;
        };
        let mut evidence = vec![format!("holds marker {}", marker.display())];
        // A server registers its marker just before it takes its pid lock
        // (which it retries for 0.5 s): a young marker may be a server that is
        // still starting, so it is re-inventoried before it counts.
        let young = fs::symlink_metadata(&marker)
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < STARTING_GRACE);
        let proof = scope.install.evidence(pid);
        let problem = match &proof {
            Some(p) => {
                evidence.push(p.clone());
                None
            }
            None => Some(format!(
                "server registry: live pid {pid} has no authoritative pid lock (a secondary or starting server, marker {}) and nothing proves it runs this installation; stop it manually",
                marker.display()
            )),
        };
        inv.instances.push(Instance {
            role: Role::Secondary,
            source: Some(marker),
            pid: Some(pid),
            start_ticks: st.start_ticks,
            ppid: st.ppid,
            started: None,
            evidence,
            transient: young && problem.is_some(),
            problem,
            file_id: None,
        });
    }

    if scope.scan_processes && scope.install.env_dir.is_some() {
        scan_installation(&mut inv, scope);
    }
    // A process found both as a server and through a marker or scan is
    // reported once; children of a target are handled by the stop stage.
    inv
}

/// Processes of this installation that hold no memtomem file. One read of
/// `cmdline` per process filters the table (a thousand unrelated processes
/// cost a thousand small reads); only candidates get their owner, state and
/// mappings read.
fn scan_installation(inv: &mut Inventory, scope: &Scope) {
    use std::os::unix::fs::MetadataExt as _;
    for pid in sys::all_pids() {
        if scope.protected.contains(&pid) || inv.instances.iter().any(|i| i.pid == Some(pid)) {
            continue;
        }
        let Some(argv) = sys::read_proc(&format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let mentions = |needle: &[u8]| argv.windows(needle.len()).any(|w| w == needle);
        if !mentions(b"memtomem") && !mentions(b"python") {
            continue;
        }
        if fs::metadata(format!("/proc/{pid}")).map(|m| m.uid()).ok() != Some(scope.env.euid) {
            continue;
        }
        let Some(st) = sys::proc_stat(pid).filter(|s| s.state != RunState::Zombie) else {
            continue;
        };
        if let Some(proof) = scope.install.evidence(pid) {
            inv.instances.push(Instance {
                role: Role::Unregistered,
                source: None,
                pid: Some(pid),
                start_ticks: st.start_ticks,
                ppid: st.ppid,
                started: None,
                evidence: vec![proof],
                problem: None,
                transient: false,
                file_id: None,
            });
        }
    }
}

fn list_dir(dir: &Path) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(name) = entry.file_name().to_str() {
            out.push(name.to_string());
        }
    }
    Ok(out)
}

fn collect_markers(
    inv: &mut Inventory,
    dir: &Path,
    out: &mut Vec<(Pid, PathBuf)>,
    scope: &Scope,
    table: &mut Option<Vec<ProcStat>>,
) {
    let meta = match fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(_) => return,
    };
    if !meta.is_dir() {
        inv.problems.push(format!(
            "server registry: {} is not a real directory",
            dir.display()
        ));
        return;
    }
    let Ok(names) = list_dir(dir) else {
        inv.problems
            .push(format!("server registry: cannot read {}", dir.display()));
        return;
    };
    for name in names {
        let Some(marker) = pidfile::parse_marker_name(&name) else {
            continue;
        };
        let path = dir.join(&name);
        let Ok(m) = fs::symlink_metadata(&path) else {
            continue;
        };
        if !m.file_type().is_file() {
            continue;
        }
        // A second name for another file (a hard link to some program's
        // lock) proves nothing: never removed, refused if it is held.
        let linked = m.nlink() != 1;
        let Ok(file) = pidfile::open_nofollow(&path) else {
            continue;
        };
        match pidfile::try_flock(&file, libc::LOCK_EX) {
            Ok(true) if linked => pidfile::unlock(&file),
            Ok(false) if linked => inv.problems.push(format!(
                "server registry: marker {} has {} hard links (it may be another program's lock file); unverifiable, stop its holder manually",
                path.display(),
                m.nlink()
            )),
            Ok(true) => {
                pidfile::unlock(&file);
                let age = m
                    .modified()
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok());
                let pid_dead = marker.pid > 0
                    && sys::proc_stat(marker.pid as Pid)
                        .is_none_or(|s| s.state == RunState::Zombie);
                // Unlocked and old (or its process is gone): garbage. Young
                // and unlocked: a server may be between create and lock.
                if pid_dead || age.is_some_and(|a| a > MARKER_GRACE) {
                    inv.stale.push(StaleFile {
                        path,
                        pid: Some(marker.pid),
                    });
                }
            }
            Ok(false) => {
                if marker.pid > 1 && marker.pid <= i32::MAX as i64 {
                    // The name is only a claim: require that the named
                    // process really holds the marker's lock.
                    let pid = marker.pid as Pid;
                    let held_by_named = sys::open_files_of(pid, m.dev(), m.ino())
                        .iter()
                        .any(|o| o.flock.is_some());
                    if held_by_named {
                        out.push((pid, path));
                        continue;
                    }
                    let named_alive =
                        sys::proc_stat(pid).is_some_and(|s| s.state != RunState::Zombie);
                    let id = FileId {
                        dev: m.dev(),
                        ino: m.ino(),
                    };
                    let holders: Vec<Pid> = find_holders(id, scope, table)
                        .iter()
                        .map(|h| h.pid)
                        .collect();
                    if !named_alive && !holders.is_empty() {
                        // The named process exited and a child inherited the
                        // marker's lock: the holder is what is alive.
                        for h in holders {
                            out.push((h, path.clone()));
                        }
                    } else {
                        // A marker changing hands (its server in mid-exit, or
                        // a successor starting) settles: looked at again.
                        inv.unsettled = true;
                        let held = match holders.as_slice() {
                            [] => String::new(),
                            hs => format!(
                                "; the lock is held by pid {}",
                                hs.iter()
                                    .map(|h| h.to_string())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        };
                        inv.problems.push(format!(
                            "server registry: marker {} names pid {pid}, which does not hold it{held}",
                            path.display()
                        ));
                    }
                }
            }
            Err(e) => inv.problems.push(format!(
                "server registry: cannot lock {}: {e}",
                path.display()
            )),
        }
    }
}

fn probe_into(
    inv: &mut Inventory,
    role: Role,
    path: &Path,
    scope: &Scope,
    table: &mut Option<Vec<ProcStat>>,
) {
    match pidfile::probe(path) {
        Probe::Missing => {}
        Probe::Unverifiable { reason } => {
            inv.problems.push(format!(
                "{}: probing {} failed ({reason})",
                prefix(role),
                path.display()
            ));
        }
        Probe::Transient { reason } => {
            inv.unsettled = true;
            inv.problems.push(format!(
                "{}: probing {} failed ({reason})",
                prefix(role),
                path.display()
            ));
        }
        Probe::Stale { payload, .. } => inv.stale.push(StaleFile {
            path: path.to_path_buf(),
            pid: payload.pid,
        }),
        Probe::Held { payload, id } => {
            if role == Role::LegacyServer {
                match pidfile::classify_legacy(path, id) {
                    Ok(LegacyMode::Shared) => {
                        inv.aliases.push(path.to_path_buf());
                        return;
                    }
                    Ok(LegacyMode::Exclusive) => {}
                    Err(e) => {
                        inv.problems.push(format!(
                            "legacy memtomem-server: probing {} failed ({e})",
                            path.display()
                        ));
                        return;
                    }
                }
            }
            inv.instances
                .extend(attribute(role, path, payload, id, scope, table));
        }
    }
}

fn prefix(role: Role) -> &'static str {
    match role {
        Role::Web => "web UI",
        Role::LegacyServer => "legacy memtomem-server",
        _ => "memtomem-server",
    }
}

/// Decide who holds a live pid file, with proof from `/proc`.
fn attribute(
    role: Role,
    path: &Path,
    payload: Payload,
    id: FileId,
    scope: &Scope,
    table: &mut Option<Vec<ProcStat>>,
) -> Vec<Instance> {
    let base = |pid: Option<Pid>,
                st: Option<&ProcStat>,
                evidence: Vec<String>,
                problem: Option<String>,
                transient: bool| Instance {
        role,
        source: Some(path.to_path_buf()),
        pid,
        start_ticks: st.map_or(0, |s| s.start_ticks),
        ppid: st.map_or(0, |s| s.ppid),
        started: payload.started.clone(),
        evidence,
        problem,
        transient,
        file_id: Some(id),
    };
    let named = payload.signalable_pid();
    if let Some(pid) = named {
        if scope.protected.contains(&pid) {
            let holders = find_holders(id, scope, table);
            return vec![base(
                None,
                None,
                vec![],
                Some(format!(
                    "{}: {} names pid {pid}, which is mm-upgrade itself or one of its parents{}; refusing to signal it",
                    prefix(role),
                    path.display(),
                    holders_text(&holders)
                )),
                false,
            )];
        }
        let st = sys::proc_stat(pid).filter(|s| s.state != RunState::Zombie);
        if let Some(st) = &st {
            if sys::open_files_of(pid, id.dev, id.ino)
                .iter()
                .any(|o| o.flock.is_some())
            {
                let evidence = vec![format!("pid {pid} holds the flock on {}", path.display())];
                return vec![base(Some(pid), Some(st), evidence, None, false)];
            }
        }
        let holders = find_holders(id, scope, table);
        if st.is_some() {
            // Transient under churn: a holder in mid-exit (its descriptors
            // closed, not yet a zombie) or a successor that took the lock
            // and has not written its pid yet. Looked at again before it
            // counts; only what persists is refused.
            return vec![base(
                None,
                None,
                vec![],
                Some(format!(
                    "{}: {} names pid {pid}, but that process does not hold its lock{}; refusing to signal either",
                    prefix(role),
                    path.display(),
                    holders_text(&holders)
                )),
                true,
            )];
        }
        // The named process is gone, yet the lock lives: a child inherited
        // the locked descriptor. The lock itself is the proof for the holder.
        if holders.is_empty() {
            // Or the holder was exiting and the lock is being released.
            return vec![base(None, None, vec![], Some(invisible(role, path)), true)];
        }
        return holders
            .iter()
            .map(|h| {
                let ev = vec![
                    format!("pid {} holds the flock on {}", h.pid, path.display()),
                    format!(
                        "the payload names pid {pid}, which has exited (the lock was inherited)"
                    ),
                ];
                base(Some(h.pid), Some(h), ev, None, false)
            })
            .collect();
    }
    let holders = find_holders(id, scope, table);
    let startup_gap = payload.unreadable.as_deref() == Some("payload is empty");
    let what = match (&payload.pid, &payload.unreadable) {
        (Some(p), _) => format!("payload pid {p} is not a process that may be signalled"),
        (None, Some(why)) => why.clone(),
        (None, None) => "no pid".into(),
    };
    vec![base(
        None,
        None,
        vec![],
        Some(format!(
            "{}: live lock {} has no signalable PID ({what}){}",
            prefix(role),
            path.display(),
            holders_text(&holders)
        )),
        startup_gap,
    )]
}

fn invisible(role: Role, path: &Path) -> String {
    format!(
        "{}: live lock {} is held by a process this user cannot see (another pid namespace or user)",
        prefix(role),
        path.display()
    )
}

fn holders_text(holders: &[ProcStat]) -> String {
    match holders {
        [] => String::new(),
        hs => format!(
            "; the lock is held by pid {}",
            hs.iter()
                .map(|h| h.pid.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Every visible process holding a flock on `id`. Scans `/proc/*/fd`, so it
/// runs only on the unusual path where the payload's pid is not the holder.
fn find_holders(id: FileId, scope: &Scope, table: &mut Option<Vec<ProcStat>>) -> Vec<ProcStat> {
    let table = table.get_or_insert_with(sys::process_table);
    let pids: Vec<Pid> = table
        .iter()
        .filter(|s| s.state != RunState::Zombie && !scope.protected.contains(&s.pid))
        .map(|s| s.pid)
        .collect();
    let holders = sys::flock_holders(&pids, id.dev, id.ino);
    table
        .iter()
        .filter(|s| holders.iter().any(|h| h.pid == s.pid))
        .cloned()
        .collect()
}

/// Re-run discovery while a transient state is visible (a startup gap, a
/// holder in mid-exit, a pid file that vanished or was replaced during its
/// probe): 50, 100, 200 ms as upstream (contract §4.5), then 400 and 800 ms,
/// because a server with a marker may wait up to 0.5 s for a pid lock its
/// predecessor still holds. Only an unsettled inventory costs time; a
/// complete one returns at once, and what stays unverifiable is refused.
pub fn discover_stable(scope: &Scope, sleep: &dyn Fn(Duration)) -> Inventory {
    let mut inv = discover(scope);
    for ms in [50, 100, 200, 400, 800] {
        if !inv.unsettled() {
            break;
        }
        sleep(Duration::from_millis(ms));
        inv = discover(scope);
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    /// A child process killed (with its group) and reaped on drop.
    struct Proc(Child);
    impl Drop for Proc {
        fn drop(&mut self) {
            let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
            let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    impl Proc {
        fn spawn(cmd: &mut Command) -> Proc {
            Proc(
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .process_group(0)
                    .spawn()
                    .unwrap(),
            )
        }
        fn pid(&self) -> Pid {
            self.0.id() as Pid
        }
        /// Wait until the exec happened: its argv is `want`.
        fn exec_done(self, want: &[&str]) -> Proc {
            let pid = self.pid();
            wait_for(|| sys::cmdline(pid) == want, "exec");
            self
        }
    }

    fn wait_for(mut ok: impl FnMut() -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn s(p: &Path) -> String {
        p.to_str().unwrap().to_string()
    }

    /// A uv tool dir with a memtomem env: receipt listing `memtomem-server`,
    /// `bin/python` (a link to /bin/sh, standing in for the interpreter) and
    /// the entry point (a shell script that idles), and a bin-dir link.
    struct Env {
        tmp: tempfile::TempDir,
    }
    impl Env {
        fn new() -> Env {
            let tmp = tempfile::tempdir().unwrap();
            let env = tmp.path().join("tools/memtomem");
            fs::create_dir_all(env.join("bin")).unwrap();
            fs::create_dir_all(env.join("lib")).unwrap();
            fs::create_dir_all(tmp.path().join("bin")).unwrap();
            fs::write(
                env.join("uv-receipt.toml"),
                "[tool]\nrequirements = [{ name = \"memtomem\" }]\nentrypoints = [\n    { name = \"memtomem-server\", install-path = \"/b/memtomem-server\", from = \"memtomem\" },\n]\n",
            )
            .unwrap();
            symlink("/bin/sh", env.join("bin/python")).unwrap();
            for f in ["bin/memtomem-server", "lib/x.py"] {
                fs::write(env.join(f), "sleep 30 & wait\n").unwrap();
                fs::set_permissions(env.join(f), fs::Permissions::from_mode(0o755)).unwrap();
            }
            symlink(
                env.join("bin/memtomem-server"),
                tmp.path().join("bin/memtomem-server"),
            )
            .unwrap();
            Env { tmp }
        }
        fn path(&self, rel: &str) -> PathBuf {
            self.tmp.path().join(rel)
        }
        fn install(&self) -> Installation {
            Installation::at(self.path("tools"), Some(self.path("bin")))
        }
    }

    #[test]
    fn the_envs_interpreter_on_one_of_its_entry_points_is_proof() {
        let e = Env::new();
        let install = e.install();
        assert_eq!(install.entry_points, vec!["memtomem-server".to_string()]);
        let py = s(&e.path("tools/memtomem/bin/python"));
        // Direct, and through uv's bin-dir link (the path the shebang got).
        for script in [
            e.path("tools/memtomem/bin/memtomem-server"),
            e.path("bin/memtomem-server"),
        ] {
            let p = Proc::spawn(Command::new(&py).arg(&script))
                .exec_done(&[py.as_str(), s(&script).as_str()]);
            let proof = install.evidence(p.pid()).expect("proven");
            assert!(proof.contains("entry point"), "{proof}");
        }
    }

    /// Finding 1: a pager (or anything) with a file of the env among its
    /// arguments, and even the env's interpreter on a file that is not an
    /// entry point, is not this installation's server.
    #[test]
    fn an_argument_naming_a_file_inside_the_env_is_not_proof() {
        let e = Env::new();
        let install = e.install();
        let file = s(&e.path("tools/memtomem/lib/x.py"));
        // `less <env>/lib/x.py`: GNU tail, named less, following the file.
        let pager = Proc::spawn(Command::new("tail").arg0("less").args([&file, "-f"]))
            .exec_done(&["less", file.as_str(), "-f"]);
        assert_eq!(install.evidence(pager.pid()), None);
        // An interpreter of its own on a file of the env.
        let sh = Proc::spawn(Command::new("/bin/sh").arg(&file)).exec_done(&["/bin/sh", &file]);
        assert_eq!(install.evidence(sh.pid()), None);
        // The env's interpreter, but on a file that is not an entry point.
        let py = s(&e.path("tools/memtomem/bin/python"));
        let lib = Proc::spawn(Command::new(&py).arg(&file)).exec_done(&[&py, &file]);
        assert_eq!(install.evidence(lib.pid()), None);
        // argv[0] claims the env's interpreter, but another program runs.
        let script = s(&e.path("tools/memtomem/bin/memtomem-server"));
        let liar = Proc::spawn(Command::new("tail").arg0(&py).args(["-f", &script]))
            .exec_done(&[&py, "-f", &script]);
        assert_eq!(install.evidence(liar.pid()), None);
    }

    /// Finding 2: `uv tool dir` printing nothing made the installation the
    /// relative path `memtomem`, and any `memtomem` process "ours".
    #[test]
    fn an_installation_path_that_is_not_absolute_and_verified_proves_nothing() {
        let e = Env::new();
        let uv = e.path("uv");
        fs::write(&uv, "#!/bin/sh\nexit 0\n").unwrap();
        fs::set_permissions(&uv, fs::Permissions::from_mode(0o755)).unwrap();
        let uv = crate::install::Uv {
            program: uv,
            timeout: Duration::from_secs(10),
            interruptible: false,
        };
        let install = Installation::from_uv(&uv).unwrap();
        assert_eq!((&install.tool_dir, &install.env_dir), (&None, &None));
        let named = Proc::spawn(Command::new("sleep").arg0("memtomem").arg("30"))
            .exec_done(&["memtomem", "30"]);
        assert_eq!(install.evidence(named.pid()), None);
        // Absolute, but without uv's receipt: not verified either, even for
        // the env's interpreter on its entry point.
        fs::remove_file(e.path("tools/memtomem/uv-receipt.toml")).unwrap();
        let unverified = e.install();
        assert_eq!(unverified.env_dir, None);
        let py = s(&e.path("tools/memtomem/bin/python"));
        let script = s(&e.path("tools/memtomem/bin/memtomem-server"));
        let p = Proc::spawn(Command::new(&py).arg(&script)).exec_done(&[&py, &script]);
        assert_eq!(unverified.evidence(p.pid()), None);
    }

    #[test]
    fn python_command_lines_are_read_as_python_reads_them() {
        let v = |a: &[&str]| python_launch(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let m = |s: &str| PyLaunch::Module(s.into());
        let sc = |s: &str| PyLaunch::Script(s.into());
        assert_eq!(v(&["-m", "memtomem.server"]), m("memtomem.server"));
        assert_eq!(v(&["-BEs", "-mmemtomem.server"]), m("memtomem.server"));
        assert_eq!(
            v(&["-W", "ignore", "-X", "dev", "/e/bin/mm", "serve"]),
            sc("/e/bin/mm")
        );
        assert_eq!(v(&["-Wignore", "--", "-x.py"]), sc("-x.py"));
        assert_eq!(v(&["--check-hash-based-pycs", "never", "s.py"]), sc("s.py"));
        // The script is the first operand: later arguments are its own.
        assert_eq!(v(&["/tmp/a.py", "-m", "memtomem"]), sc("/tmp/a.py"));
        assert_eq!(v(&["-c", "import memtomem", "/e/bin/mm"]), PyLaunch::Other);
        assert_eq!(v(&["-Ic", "x"]), PyLaunch::Other);
        assert_eq!(v(&["-"]), PyLaunch::Other);
        assert_eq!(v(&[]), PyLaunch::Other);
        assert_eq!(v(&["-m"]), PyLaunch::Other);
    }

    /// Finding 5: a pid file unlinked between its `lstat` and `open`, or
    /// replaced during the probe, is what a churning server leaves: a
    /// transient state, retried before it is refused.
    #[test]
    fn a_pid_file_removed_or_replaced_during_its_probe_is_transient() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("server.pid");
        fs::write(&path, b"4242\n").unwrap();
        let p = pidfile::probe_with(&path, &|| fs::remove_file(&path).unwrap());
        assert!(
            matches!(&p, Probe::Transient { reason } if reason.contains("cannot open")),
            "{p:?}"
        );
        fs::write(&path, b"4242\n").unwrap();
        let p = pidfile::probe_with(&path, &|| {
            fs::write(tmp.path().join("next"), b"4343\n").unwrap();
            fs::rename(tmp.path().join("next"), &path).unwrap();
        });
        assert!(
            matches!(&p, Probe::Transient { reason } if reason.contains("changed identity")),
            "{p:?}"
        );
        // A second hard link is no transient state.
        fs::hard_link(&path, tmp.path().join("other")).unwrap();
        let p = pidfile::probe(&path);
        assert!(
            matches!(&p, Probe::Unverifiable { reason } if reason.contains("2 hard links")),
            "{p:?}"
        );
    }

    /// A private runtime dir and HOME for discovery (never the real ones).
    struct Rt {
        tmp: tempfile::TempDir,
        env: PathEnv,
    }
    impl Rt {
        fn new() -> Rt {
            let tmp = tempfile::tempdir().unwrap();
            let rt = tmp.path().join("rt");
            fs::create_dir(&rt).unwrap();
            fs::set_permissions(&rt, fs::Permissions::from_mode(0o700)).unwrap();
            let env = PathEnv {
                euid: sys::euid(),
                home: tmp.path().join("home"),
                runtime_override: Some(rt),
                ..Default::default()
            };
            Rt { tmp, env }
        }
        fn rt(&self, name: &str) -> PathBuf {
            self.tmp.path().join("rt").join(name)
        }
        fn file(&self, name: &str) -> PathBuf {
            self.tmp.path().join(name)
        }
    }

    /// `flock -x <file> sleep 30`: another program holding a BSD lock
    /// (flock(1) and its child both hold it).
    fn lock_holder(file: &Path) -> Proc {
        let p = Proc::spawn(
            Command::new("flock")
                .arg("-x")
                .arg(file)
                .args(["sleep", "30"]),
        );
        wait_for(
            || matches!(pidfile::probe(file), Probe::Held { .. }),
            "the lock",
        );
        p
    }

    /// Finding 3: a pid file that is a second name of another program's lock
    /// file (holder and payload agree) must not get that program killed.
    #[test]
    fn a_hard_linked_pid_file_is_unverifiable_and_nothing_is_signalled() {
        let rt = Rt::new();
        let victim = rt.file("victim.lock");
        fs::write(&victim, b"").unwrap();
        let holder = lock_holder(&victim);
        fs::write(&victim, format!("{}\n", holder.pid())).unwrap();
        fs::hard_link(&victim, rt.rt("server.pid")).unwrap();
        let protected = sys::self_and_ancestors();
        let install = Installation::default();
        let scope = Scope {
            env: &rt.env,
            install: &install,
            protected: &protected,
            scan_processes: false,
        };
        let inv = discover(&scope);
        assert_eq!(inv.targets().count(), 0, "{inv:?}");
        let problems = inv.all_problems();
        assert!(
            problems.len() == 1 && problems[0].contains("2 hard links"),
            "{problems:?}"
        );
        assert!(!inv.unsettled(), "a persistent state is refused at once");
        // Never removed as stale either, and a marker of the same kind is
        // refused too.
        assert!(pidfile::unlink_if_stale(&rt.rt("server.pid")).is_err());
        fs::remove_file(rt.rt("server.pid")).unwrap();
        fs::create_dir(rt.rt("presence")).unwrap();
        let marker = rt.rt(&format!(
            "presence/{}-1-0123456789abcdef-01234567-89abcdef.lock",
            holder.pid()
        ));
        fs::hard_link(&victim, &marker).unwrap();
        let inv = discover(&scope);
        assert_eq!(inv.targets().count(), 0, "{inv:?}");
        assert!(
            inv.all_problems()
                .iter()
                .any(|p| p.contains("2 hard links")),
            "{inv:?}"
        );
    }

    /// Finding 5: a holder in mid-exit (the payload names a process that no
    /// longer holds the lock, which is being released) settles: the
    /// inventory is looked at again instead of refusing the run.
    #[test]
    fn a_holder_in_mid_exit_is_retried_and_settles() {
        let rt = Rt::new();
        let pid_file = rt.rt("server.pid");
        fs::write(&pid_file, b"").unwrap();
        let exiting = std::cell::RefCell::new(Some(
            Proc::spawn(Command::new("sleep").arg("30")).exec_done(&["sleep", "30"]),
        ));
        let lock = std::cell::RefCell::new(Some(lock_holder(&pid_file)));
        let named = exiting.borrow().as_ref().unwrap().pid();
        fs::write(&pid_file, format!("{named}\n\n2026-11-26T11:32:39+00:00\n")).unwrap();
        let protected = sys::self_and_ancestors();
        let install = Installation::default();
        let scope = Scope {
            env: &rt.env,
            install: &install,
            protected: &protected,
            scan_processes: false,
        };
        let first = discover(&scope);
        assert!(first.unsettled(), "{first:?}");
        let sleeps = std::cell::Cell::new(0);
        let inv = discover_stable(&scope, &|_| {
            // The exit completes: the process is gone, its lock released.
            sleeps.set(sleeps.get() + 1);
            drop(exiting.borrow_mut().take());
            drop(lock.borrow_mut().take());
        });
        // (flock(1)'s own child may take a moment longer to exit.)
        assert!(sleeps.get() >= 1);
        assert!(inv.all_problems().is_empty(), "{:?}", inv.all_problems());
        assert_eq!(inv.stale.len(), 1);
        // What persists is refused after the bounded retries.
        let _other = Proc::spawn(Command::new("sleep").arg("30")).exec_done(&["sleep", "30"]);
        let _lock = lock_holder(&pid_file);
        fs::write(&pid_file, format!("{}\n", _other.pid())).unwrap();
        let waited = std::cell::Cell::new(Duration::ZERO);
        let inv = discover_stable(&scope, &|d| waited.set(waited.get() + d));
        assert_eq!(inv.targets().count(), 0);
        assert!(
            inv.all_problems()[0].contains("does not hold its lock"),
            "{inv:?}"
        );
        assert_eq!(waited.get(), Duration::from_millis(1550));
    }
}
