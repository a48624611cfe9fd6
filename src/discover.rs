//! Stage 1: find every live memtomem instance. Liveness is the flock, never
//! "the pid exists". Discovery gathers the facts; whether a process may
//! become a stop target is decided by the rules of [`crate::proof`] (it
//! holds the lock its pid file is about, or it runs this installation's
//! interpreter on one of its entry points).

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::paths::{self, PathEnv};
use crate::pidfile::{self, LegacyMode, Payload, Probe};
pub use crate::proof::Installation;
use crate::proof::{self, Origin};
use crate::sys::{self, FileId, Os, Pid, ProcStat, RunState};

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

/// Processes of this installation that hold no memtomem file. One read of
/// argv per process filters the table (a thousand unrelated processes cost a
/// thousand small reads); only candidates get their owner, state,
/// executable and working directory read.
fn scan_installation(inv: &mut Inventory, cx: &Cx) {
    for pid in cx.os.pids() {
        if proof::never_signalled(pid, cx.scope.protected)
            || inv.instances.iter().any(|i| i.pid == Some(pid))
        {
            continue;
        }
        let argv = cx.os.cmdline(pid);
        if !argv
            .iter()
            .any(|a| a.contains("memtomem") || a.contains("python"))
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

fn collect_markers(
    inv: &mut Inventory,
    dir: &Path,
    out: &mut Vec<(Pid, PathBuf)>,
    cx: &Cx,
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
                    && cx
                        .os
                        .stat(marker.pid as Pid)
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
                    let id = FileId {
                        dev: m.dev(),
                        ino: m.ino(),
                    };
                    // Contended, and named by the marker's name.
                    let held_by_named = proof::holds_lock(&cx.os.open_files(pid, id), true, true);
                    if held_by_named {
                        out.push((pid, path));
                        continue;
                    }
                    let named_alive = cx
                        .os
                        .stat(pid)
                        .is_some_and(|s| s.state != RunState::Zombie);
                    let holders: Vec<Pid> = find_holders(id, cx, table)
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
    cx: &Cx,
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
                .extend(attribute(role, path, payload, id, cx, table));
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
    cx: &Cx,
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
        installation: Origin::Unknown,
    };
    let named = payload.signalable_pid();
    if let Some(pid) = named {
        if proof::never_signalled(pid, cx.scope.protected) {
            let holders = find_holders(id, cx, table);
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
        let st = cx.os.stat(pid).filter(|s| s.state != RunState::Zombie);
        if let Some(st) = &st {
            // The lock is contended (a held probe) and the payload names it.
            if proof::holds_lock(&cx.os.open_files(pid, id), true, true) {
                let evidence = vec![format!("pid {pid} holds the flock on {}", path.display())];
                return vec![base(Some(pid), Some(st), evidence, None, false)];
            }
        }
        let holders = find_holders(id, cx, table);
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
    let holders = find_holders(id, cx, table);
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
fn find_holders(id: FileId, cx: &Cx, table: &mut Option<Vec<ProcStat>>) -> Vec<ProcStat> {
    let table = table.get_or_insert_with(|| cx.os.table());
    let pids: Vec<Pid> = table
        .iter()
        .filter(|s| {
            s.state != RunState::Zombie && !proof::never_signalled(s.pid, cx.scope.protected)
        })
        .map(|s| s.pid)
        .collect();
    let holders = sys::flock_holders(cx.os, &pids, id);
    table
        .iter()
        .filter(|s| holders.iter().any(|h| h.pid == s.pid))
        .cloned()
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{lock_holder, wait_for, Proc, Rt};
    use rusty_fork::rusty_fork_test;
    use std::process::Command;

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

    // Own process (rusty-fork) for what takes real flocks: a child that a
    // sibling test spawns in this process shares a lock's open file description
    // until its exec, so the lock could outlive its release (issue 11).
    rusty_fork_test! {
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
                // flock(1)'s `sleep` holds the lock too and dies a moment later.
                wait_for(
                    || !matches!(pidfile::probe(&pid_file), Probe::Held { .. }),
                    "the lock to be released",
                );
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

    // ---- through the fake OS: the process table is scripted, files and
    // their lock contention are real (held by flock(1)).

    use crate::sys::fake::{FakeOs, FakeProc};
    use crate::sys::{Clock, LockKind, LockSeen};

    fn id_of(p: &Path) -> FileId {
        FileId::of(&fs::metadata(p).unwrap())
    }

    /// A pid file with `payload`, held by another program.
    fn held(rt: &Rt, name: &str, payload: &str) -> (PathBuf, FileId, Proc) {
        let path = rt.rt(name);
        fs::write(&path, payload).unwrap();
        let holder = lock_holder(&path);
        let id = id_of(&path);
        (path, id, holder)
    }

    fn scope<'a>(rt: &'a Rt, install: &'a Installation, protected: &'a [Pid]) -> Scope<'a> {
        Scope {
            env: &rt.env,
            install,
            protected,
            scan_processes: true,
        }
    }

    const W: LockSeen = LockSeen::Flock(LockKind::Write);

    // Own process (rusty-fork): takes real flocks (issue 11).
    rusty_fork_test! {
        #[test]
        fn fake_only_the_proven_lock_holder_is_a_target_and_what_persists_is_refused() {
            let rt = Rt::new();
            let (_, srv, _h1) = held(
                &rt,
                "server-0123456789abcdef.pid",
                "4242\n\n2026-11-26T11:32:39+00:00\n",
            );
            let (_, web, _h2) = held(&rt, "web.pid", "5000\n18081\n");
            let os = FakeOs::new();
            os.add(4242, FakeProc::new(10).holds(srv, W));
            // web.pid names 5000, which has it open without the lock; 6000 holds it.
            os.add(5000, FakeProc::new(11).holds(web, LockSeen::None));
            os.add(6000, FakeProc::new(12).holds(web, W));
            let install = Installation::default();
            let sc = scope(&rt, &install, &[]);
            let inv = discover_stable_with(&os, &sc, &|d| os.sleep(d));
            let targets: Vec<Pid> = inv.targets().filter_map(|i| i.pid).collect();
            assert_eq!(targets, vec![4242]);
            let t = inv.targets().next().unwrap();
            assert!(t.evidence[0].contains("holds the flock"), "{t:?}");
            assert_eq!(t.start_ticks, 10);
            let problems = inv.all_problems();
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(
                problems[0].contains("names pid 5000") && problems[0].contains("held by pid 6000"),
                "{problems:?}"
            );
            // Looked at again on the settle schedule, then refused.
            let slept: Vec<_> = os.log();
            assert_eq!(slept.len(), 5, "{slept:?}");
            assert_eq!(os.now(), Duration::from_millis(1550));
            assert!(os.signals().is_empty(), "discovery never signals");
        }

        #[test]
        fn fake_a_transient_state_that_settles_costs_one_pause() {
            let rt = Rt::new();
            let (_, web, _h) = held(&rt, "web.pid", "5000\n18081\n");
            let os = FakeOs::new();
            os.add(5000, FakeProc::new(11));
            os.add(6000, FakeProc::new(12).holds(web, W));
            // The successor writes its pid: the payload now names the holder.
            let path = rt.rt("web.pid");
            os.on_sleep(move |_| fs::write(&path, "6000\n18081\n").unwrap());
            let install = Installation::default();
            let sc = scope(&rt, &install, &[]);
            let inv = discover_stable_with(&os, &sc, &|d| os.sleep(d));
            assert!(inv.all_problems().is_empty(), "{:?}", inv.all_problems());
            assert_eq!(
                inv.targets().filter_map(|i| i.pid).collect::<Vec<_>>(),
                vec![6000]
            );
            assert_eq!(os.log().len(), 1);
        }

        #[test]
        fn fake_an_inherited_lock_goes_to_its_heir_and_unknown_locks_need_the_payload() {
            let rt = Rt::new();
            let (_, bare, _h1) = held(&rt, "server.pid", "7000\n");
            let (_, mac, _h2) = held(&rt, "server-00000000000000aa.pid", "8000\n");
            let (_, orphan, _h3) = held(&rt, "server-00000000000000bb.pid", "8100\n");
            let os = FakeOs::new();
            // 7000 exited; its child 7001 inherited the locked descriptor.
            os.add(7001, FakeProc::new(20).child_of(7000).holds(bare, W));
            // macOS shows open files but not their locks: the payload-named
            // process with the very file open while it is contended is the holder…
            os.add(8000, FakeProc::new(21).holds(mac, LockSeen::Unknown));
            // …but a process that merely has a file open is no heir.
            os.add(8101, FakeProc::new(22).holds(orphan, LockSeen::Unknown));
            let install = Installation::default();
            let sc = scope(&rt, &install, &[]);
            let inv = discover_in(&os, &sc);
            let mut targets: Vec<Pid> = inv.targets().filter_map(|i| i.pid).collect();
            targets.sort();
            assert_eq!(targets, vec![7001, 8000]);
            let heir = inv.targets().find(|i| i.pid == Some(7001)).unwrap();
            assert!(heir.evidence[1].contains("inherited"), "{heir:?}");
            let problems = inv.all_problems();
            assert!(
                problems.len() == 1 && problems[0].contains("cannot see"),
                "{problems:?}"
            );
            assert!(inv.unsettled(), "an invisible holder may be in mid-exit");
        }

        #[test]
        fn fake_payloads_naming_init_or_ourselves_are_refused() {
            let rt = Rt::new();
            let (_, _one, _h1) = held(&rt, "server-00000000000000cc.pid", "1\n");
            let (_, _us, _h2) = held(&rt, "server-00000000000000dd.pid", "777\n");
            let os = FakeOs::new();
            os.add(777, FakeProc::new(1));
            let install = Installation::default();
            let sc = scope(&rt, &install, &[777]);
            let inv = discover_in(&os, &sc);
            assert_eq!(inv.targets().count(), 0);
            let problems = inv.all_problems().join("\n");
            assert!(problems.contains("no signalable PID"), "{problems}");
            assert!(problems.contains("mm-upgrade itself"), "{problems}");
        }
    }

    /// A uv tool dir with a verified memtomem env whose `bin/python` leads
    /// to /bin/sh: the executable identity the fake reports for its
    /// interpreter.
    fn env() -> (tempfile::TempDir, Installation, String, FileId) {
        let tmp = tempfile::tempdir().unwrap();
        let env = tmp.path().join("tools/memtomem");
        fs::create_dir_all(env.join("bin")).unwrap();
        fs::write(
            env.join("uv-receipt.toml"),
            "[tool]\nrequirements = [{ name = \"memtomem\" }]\nentrypoints = [{ name = \"memtomem-server\", install-path = \"/b/memtomem-server\" }]\n",
        )
        .unwrap();
        std::os::unix::fs::symlink("/bin/sh", env.join("bin/python")).unwrap();
        fs::write(env.join("bin/memtomem-server"), "").unwrap();
        let install = Installation::at(tmp.path().join("tools"), None);
        let py = env.join("bin/python").to_str().unwrap().to_string();
        let exe = id_of(&env.join("bin/python"));
        (tmp, install, py, exe)
    }

    #[test]
    fn fake_the_scan_finds_only_this_installations_interpreter_on_its_entry_points() {
        let rt = Rt::new();
        let (_tmp, install, py, exe) = env();
        let script = py.replace("/python", "/memtomem-server");
        let lib = py.replace("/bin/python", "/lib/x.py");
        let os = FakeOs::new();
        os.add(100, FakeProc::new(1).argv(&[&py, &script]).exe(exe));
        os.add(
            101,
            FakeProc::new(1)
                .argv(&[&py, "-m", "memtomem.server"])
                .exe(exe),
        );
        os.add(102, FakeProc::new(1).argv(&["less", &lib]));
        os.add(
            103,
            FakeProc::new(1).argv(&[&py, &script]).exe(exe).uid(4321),
        );
        os.add(
            104,
            FakeProc::new(1)
                .argv(&[&py, &script])
                .exe(FileId { dev: 1, ino: 1 }),
        );
        os.add(105, FakeProc::new(1).argv(&[&py, &script]).exe(exe));
        os.add(106, FakeProc::new(1).argv(&[&py, &lib]).exe(exe));
        os.add(
            107,
            FakeProc::new(1)
                .argv(&[&py, &script])
                .exe(exe)
                .state(RunState::Zombie),
        );
        let sc = scope(&rt, &install, &[105]);
        let inv = discover_in(&os, &sc);
        let found: Vec<(Pid, Role)> = inv.targets().map(|i| (i.pid.unwrap(), i.role)).collect();
        assert_eq!(
            found,
            vec![(100, Role::Unregistered), (101, Role::Unregistered)]
        );
        assert!(inv.instances[1].evidence[0].contains("-m memtomem.server"));
    }

    // Own process (rusty-fork): takes real flocks (issue 11).
    rusty_fork_test! {
        #[test]
        fn fake_a_secondary_is_a_target_only_with_installation_proof() {
            let rt = Rt::new();
            let (_tmp, install, py, exe) = env();
            let script = py.replace("/python", "/memtomem-server");
            fs::create_dir(rt.rt("presence")).unwrap();
            let mut holders = Vec::new();
            let os = FakeOs::new();
            for (pid, ours) in [(300, true), (301, false)] {
                let name = format!("presence/{pid}-1-0123456789abcdef-01234567-89abcdef.lock");
                let path = rt.rt(&name);
                fs::write(&path, "").unwrap();
                holders.push(lock_holder(&path));
                let p = FakeProc::new(5).holds(id_of(&path), W);
                os.add(
                    pid,
                    if ours {
                        p.argv(&[&py, &script]).exe(exe)
                    } else {
                        p.argv(&["/opt/other/bin/memtomem-server"])
                    },
                );
            }
            let sc = scope(&rt, &install, &[]);
            let inv = discover_in(&os, &sc);
            let found: Vec<(Pid, Role)> = inv.targets().map(|i| (i.pid.unwrap(), i.role)).collect();
            assert_eq!(found, vec![(300, Role::Secondary)]);
            let problems = inv.all_problems();
            assert!(
                problems.len() == 1 && problems[0].contains("live pid 301"),
                "{problems:?}"
            );
        }

        /// A pinned plugin server (`uvx --from memtomem[onnx]==V memtomem-server`)
        /// holding its pid file is stopped — it holds the store — but reported as
        /// another installation, with a warning; as a secondary (no pid lock) it
        /// is refused, never stopped as ours.
        #[test]
        fn fake_a_uvx_server_is_another_installation_stopped_only_by_its_lock() {
            let rt = Rt::new();
            let (_tmp, install, py, exe) = env();
            let cache = rt.file("cache/uv/archive-v0/Fk3kHc2vZ8dLxq1a");
            fs::create_dir_all(cache.join("bin")).unwrap();
            fs::write(cache.join("pyvenv.cfg"), "home = /usr/bin\n").unwrap();
            let uvx_py = cache.join("bin/python").display().to_string();
            let uvx_script = cache.join("bin/memtomem-server").display().to_string();
            let (_, srv, _h1) = held(&rt, "server-00000000000000ee.pid", "500\n");
            let (_, ours, _h2) = held(&rt, "server-00000000000000ff.pid", "501\n");
            fs::create_dir(rt.rt("presence")).unwrap();
            let marker = rt.rt("presence/502-1-0123456789abcdef-01234567-89abcdef.lock");
            fs::write(&marker, "").unwrap();
            let _h3 = lock_holder(&marker);
            let os = FakeOs::new();
            os.add(
                500,
                FakeProc::new(1).argv(&[&uvx_py, &uvx_script]).holds(srv, W),
            );
            os.add(
                501,
                FakeProc::new(1)
                    .argv(&[&py, "-m", "memtomem.server"])
                    .exe(exe)
                    .holds(ours, W),
            );
            os.add(
                502,
                FakeProc::new(1)
                    .argv(&[&uvx_py, &uvx_script])
                    .holds(id_of(&marker), W),
            );
            let sc = scope(&rt, &install, &[]);
            let inv = discover_in(&os, &sc);
            let by = |pid: Pid| inv.instances.iter().find(|i| i.pid == Some(pid)).unwrap();
            assert_eq!(by(500).installation, Origin::Other(cache.clone()));
            assert!(inv.targets().any(|i| i.pid == Some(500)));
            assert!(
                by(500).evidence[1].contains("another installation"),
                "{:?}",
                by(500)
            );
            assert_eq!(by(501).installation, Origin::This);
            assert!(
                inv.warnings.len() == 1 && inv.warnings[0].contains("pid 500"),
                "{:?}",
                inv.warnings
            );
            assert!(!inv.targets().any(|i| i.pid == Some(502)));
            assert!(
                inv.all_problems()
                    .iter()
                    .any(|p| p.contains("live pid 502") && p.contains("another installation")),
                "{:?}",
                inv.all_problems()
            );
            // In the JSON of a dry run.
            let json = serde_json::to_value(by(500)).unwrap();
            assert_eq!(json["installation"]["other"], cache.display().to_string());
            assert_eq!(
                serde_json::to_value(by(501)).unwrap()["installation"],
                "this"
            );
        }

        /// `wiki-commit-<digest16>.lock` (upstream #2225), held by a server in
        /// the middle of a wiki commit: not liveness, not stale, never removed.
        #[test]
        fn fake_wiki_commit_locks_are_tolerated_and_never_removed() {
            let rt = Rt::new();
            let wiki = rt.rt("wiki-commit-0123456789abcdef.lock");
            fs::write(&wiki, "").unwrap();
            let _held = lock_holder(&wiki);
            let idle = rt.rt("wiki-commit-fedcba9876543210.lock");
            fs::write(&idle, "").unwrap();
            let os = FakeOs::new();
            os.add(600, FakeProc::new(1).holds(id_of(&wiki), W));
            let install = Installation::default();
            let sc = scope(&rt, &install, &[]);
            let inv = discover_stable_with(&os, &sc, &|d| os.sleep(d));
            assert!(inv.instances.is_empty() && inv.stale.is_empty(), "{inv:?}");
            assert!(inv.all_problems().is_empty() && inv.warnings.is_empty());
            assert!(os.log().is_empty(), "nothing to settle");
            assert!(wiki.exists() && idle.exists());
        }
    }
}
