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
    /// A startup gap: lock held, payload not written yet. Retried briefly.
    #[serde(skip)]
    pub gap: bool,
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
}

impl Inventory {
    pub fn has_gap(&self) -> bool {
        self.instances.iter().any(|i| i.gap)
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
    /// `<uv tool dir>/memtomem`.
    pub env_dir: Option<PathBuf>,
    /// uv's bin dir, for entry-point links.
    pub bin_dir: Option<PathBuf>,
}

impl Installation {
    /// Ask uv where its tools and entry points live.
    pub fn from_uv(uv: &crate::install::Uv) -> Result<Installation, crate::install::UvError> {
        let (tool_dir, bin_dir) = uv.tool_dirs()?;
        Ok(Installation {
            env_dir: Some(tool_dir.join(crate::install::PACKAGE)),
            bin_dir,
        })
    }

    /// uv's tool dir (the environment's parent).
    pub fn tool_dir(&self) -> Option<&Path> {
        self.env_dir.as_deref()?.parent()
    }

    /// Evidence that `pid` runs code of this installation, if any. Only
    /// `/proc` data is read; nothing of the target is executed.
    pub fn evidence(&self, pid: Pid) -> Option<String> {
        let env_dir = self.env_dir.as_ref()?;
        let argv = sys::cmdline(pid);
        for arg in argv.iter().take(2) {
            let p = Path::new(arg);
            if p.starts_with(env_dir) {
                return Some(format!("command line runs {arg}"));
            }
            if let Some(bin) = &self.bin_dir {
                if p.starts_with(bin) {
                    if let Ok(target) = fs::canonicalize(p) {
                        if target.starts_with(env_dir)
                            || fs::canonicalize(env_dir).is_ok_and(|e| target.starts_with(e))
                        {
                            return Some(format!("command line runs entry point {arg}"));
                        }
                    }
                }
            }
        }
        sys::maps(pid)
            .into_iter()
            .find(|m| Path::new(&m.path).starts_with(env_dir))
            .map(|m| {
                format!(
                    "maps {}{}",
                    m.path,
                    if m.deleted { " (deleted)" } else { "" }
                )
            })
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
            gap: young && problem.is_some(),
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
                gap: false,
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
        let Ok(file) = pidfile::open_nofollow(&path) else {
            continue;
        };
        match pidfile::try_flock(&file, libc::LOCK_EX) {
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
                gap: bool| Instance {
        role,
        source: Some(path.to_path_buf()),
        pid,
        start_ticks: st.map_or(0, |s| s.start_ticks),
        ppid: st.map_or(0, |s| s.ppid),
        started: payload.started.clone(),
        evidence,
        problem,
        gap,
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
                false,
            )];
        }
        // The named process is gone, yet the lock lives: a child inherited
        // the locked descriptor. The lock itself is the proof for the holder.
        if holders.is_empty() {
            return vec![base(None, None, vec![], Some(invisible(role, path)), false)];
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
    let gap = payload.unreadable.as_deref() == Some("payload is empty");
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
        gap,
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

/// Re-run discovery while a startup gap is visible: 50, 100, 200 ms as
/// upstream (contract §4.5), then 400 and 800 ms, because a server with a
/// marker may wait up to 0.5 s for a pid lock its predecessor still holds.
/// Only a gap costs time; a complete inventory returns at once.
pub fn discover_stable(scope: &Scope, sleep: &dyn Fn(Duration)) -> Inventory {
    let mut inv = discover(scope);
    for ms in [50, 100, 200, 400, 800] {
        if !inv.has_gap() {
            break;
        }
        sleep(Duration::from_millis(ms));
        inv = discover(scope);
    }
    inv
}
