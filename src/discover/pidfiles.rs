//! Pid files: probe each, and decide who holds a live one, with proof.

use std::path::Path;

use super::{Cx, Instance, Inventory, Role, StaleFile};
use crate::pidfile::{self, LegacyMode, Payload, Probe};
use crate::proof::{self, Origin};
use crate::sys::{self, FileId, Pid, ProcStat, RunState};

pub(super) fn probe_into(
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
pub(super) fn find_holders(
    id: FileId,
    cx: &Cx,
    table: &mut Option<Vec<ProcStat>>,
) -> Vec<ProcStat> {
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
