//! Stage 1: find every live memtomem instance. Liveness is the flock, never
//! "the pid exists". Discovery gathers the facts; whether a process may
//! become a stop target is decided by the rules of [`crate::proof`] (it
//! holds the lock its pid file is about, or it runs this installation's
//! interpreter on one of its entry points).
//!
//! One job per file: this one runs a pass (runtime dirs, secondaries, the
//! scan for unregistered processes, the settle-and-retry), `pidfiles.rs`
//! probes pid files and attributes each live one, `markers.rs` reads the
//! presence and instance markers.

mod markers;
mod pidfiles;
#[cfg(test)]
mod tests;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::paths::{self, PathEnv};
pub use crate::proof::Installation;
use crate::proof::{self, Origin};
use crate::sys::{self, FileId, Os, Pid, ProcStat, RunState};
use markers::collect_markers;
use pidfiles::probe_into;

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
    /// Which installation it runs: this one, another (a `uvx` cache env, a
    /// project venv), or unknown.
    pub installation: Origin,
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

    /// The instances [`proof::proven`] lets the stop stage act on.
    pub fn targets(&self) -> impl Iterator<Item = &Instance> {
        self.instances.iter().filter(|i| proof::proven(i))
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

/// One discovery pass on the real OS.
pub fn discover(scope: &Scope) -> Inventory {
    discover_in(sys::real(), scope)
}

/// What a pass reads through: the OS seam and the scope.
struct Cx<'a> {
    os: &'a dyn Os,
    scope: &'a Scope<'a>,
}

/// One discovery pass through `os`.
pub fn discover_in(os: &dyn Os, scope: &Scope) -> Inventory {
    let cx = &Cx { os, scope };
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
            probe_into(&mut inv, role, &path, cx, &mut table);
        }
        for sub in ["presence", "instances"] {
            collect_markers(
                &mut inv,
                &dir.path.join(sub),
                &mut marker_pids,
                cx,
                &mut table,
            );
        }
    }

    let legacy = scope.env.legacy_pid_path();
    probe_into(&mut inv, Role::LegacyServer, &legacy, cx, &mut table);

    // Presence/instance markers whose holder owns no pid file: secondary
    // servers. Stoppable only with proof they run this installation.
    for (pid, marker) in marker_pids {
        if inv.instances.iter().any(|i| i.pid == Some(pid))
            || proof::never_signalled(pid, scope.protected)
        {
            continue;
        }
        let Some(st) = os.stat(pid).filter(|s| s.state != RunState::Zombie) else {
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
        let (origin, proof) = proof::origin(os, scope.install, pid);
        let problem = match (&origin, proof) {
            (Origin::This, Some(p)) => {
                evidence.push(p);
                None
            }
            (Origin::Other(env), _) => Some(format!(
                "server registry: live pid {pid} has no authoritative pid lock (a secondary or starting server, marker {}) and runs another installation ({}), not this one; stop it manually",
                marker.display(),
                env.display()
            )),
            _ => Some(format!(
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
            installation: origin,
        });
    }

    if scope.scan_processes && scope.install.env_dir.is_some() {
        scan_installation(&mut inv, cx);
    }
    classify_holders(&mut inv, cx);
    // A process found both as a server and through a marker or scan is
    // reported once; children of a target are handled by the stop stage.
    inv
}

/// Processes of this installation that hold no memtomem file. Rule (b)
/// needs the executable to be one of the env's interpreters, so one look at
/// each process's executable (a `stat`, cheaper than reading its argv)
/// filters the table (on Linux an upgrade reads it ahead, while uv answers);
/// only candidates get their owner, state, executable, argv and working
/// directory read, afresh.
fn scan_installation(inv: &mut Inventory, cx: &Cx) {
    let interpreters = cx.scope.install.interpreters();
    if interpreters.is_empty() {
        return;
    }
    for (pid, exe) in cx.os.executables() {
        if !interpreters.contains(&exe)
            || proof::never_signalled(pid, cx.scope.protected)
            || inv.instances.iter().any(|i| i.pid == Some(pid))
        {
            continue;
        }
        let Some(st) = cx
            .os
            .stat(pid)
            .filter(|s| s.state != RunState::Zombie && s.uid == Some(cx.scope.env.euid))
        else {
            continue;
        };
        if let Some(proof) = cx.scope.install.evidence(cx.os, pid) {
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
                installation: Origin::This,
            });
        }
    }
}

/// Lock holders of pid files say which installation they run (their
/// launch shape): this one, another one (stopped all the same — they hold
/// the store — but named, since a client that launches them pinned, e.g.
/// `uvx --from memtomem==V`, starts that same version again), or unknown.
fn classify_holders(inv: &mut Inventory, cx: &Cx) {
    for i in inv.instances.iter_mut() {
        let Some(pid) = i.pid else { continue };
        if i.installation != Origin::Unknown || i.file_id.is_none() {
            continue;
        }
        let (origin, evidence) = proof::origin(cx.os, cx.scope.install, pid);
        if let Some(e) = evidence {
            i.evidence.push(e);
        }
        if let (Origin::Other(env), true) = (&origin, proof::proven(i)) {
            inv.warnings.push(format!(
                "pid {pid} ({}{}) runs another installation ({}): it holds the store, so it is stopped, but a client that starts it pinned (uvx --from memtomem==V …) starts that same version again; point that client at this installation",
                i.role.label(),
                i.source
                    .as_ref()
                    .map(|s| format!(", {}", s.display()))
                    .unwrap_or_default(),
                env.display()
            ));
        }
        i.installation = origin;
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

/// Re-run discovery while a transient state is visible (a startup gap, a
/// holder in mid-exit, a pid file that vanished or was replaced during its
/// probe), on the schedule of [`proof::SETTLE`]. Only an unsettled inventory
/// costs time; a complete one returns at once, and what stays unverifiable
/// is refused.
pub fn discover_stable(scope: &Scope, sleep: &dyn Fn(Duration)) -> Inventory {
    discover_stable_with(sys::real(), scope, sleep)
}

/// [`discover_stable`] through `os`, sleeping with `sleep`.
pub fn discover_stable_with(os: &dyn Os, scope: &Scope, sleep: &dyn Fn(Duration)) -> Inventory {
    let mut inv = discover_in(os, scope);
    for pause in proof::SETTLE {
        if !inv.unsettled() {
            break;
        }
        sleep(pause);
        inv = discover_in(os, scope);
    }
    inv
}
