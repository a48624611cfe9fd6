//! Stage 2: from an inventory to a plan. Pure: no I/O except reading the
//! process table for descendants in [`stop_targets`].

use std::path::PathBuf;

use crate::discover::{Instance, Inventory};
use crate::proof;
use crate::stop::StopTarget;
use crate::sys::{self, Pid, ProcStat};

/// What a run will do. Rendered for `--dry-run`, executed otherwise.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Instances to stop (verified pid, no problem).
    pub stops: Vec<Instance>,
    /// Instances left running because of `--skip-pkill`.
    pub kept: Vec<Instance>,
    /// Unheld memtomem files to remove.
    pub stale: Vec<PathBuf>,
    /// Reasons to refuse.
    pub problems: Vec<String>,
    /// The memtomem requirement installed (`memtomem[all]`, `memtomem==0.6.12`).
    pub spec: String,
    /// The argv after `uv` of the staged install.
    pub argv: Vec<String>,
}

pub fn plan(inv: &Inventory, spec: String, argv: Vec<String>, skip_pkill: bool) -> Plan {
    let targets: Vec<Instance> = inv.targets().cloned().collect();
    let (stops, kept) = if skip_pkill {
        (vec![], targets)
    } else {
        (targets, vec![])
    };
    Plan {
        stops,
        kept,
        stale: inv.stale.iter().map(|s| s.path.clone()).collect(),
        problems: inv.all_problems(),
        spec,
        argv,
    }
}

impl Plan {
    /// Pid files of the processes to stop, then stale files; each once.
    pub fn would_remove(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        let pid_files = self
            .stops
            .iter()
            .filter(|i| i.file_id.is_some())
            .filter_map(|i| i.source.clone());
        for p in pid_files.chain(self.stale.iter().cloned()) {
            if !out.contains(&p) {
                out.push(p);
            }
        }
        out
    }

    /// The install argv, `uv` first.
    pub fn install_argv(&self) -> Vec<String> {
        let mut v = vec!["uv".to_string()];
        v.extend(self.argv.iter().cloned());
        v
    }
}

/// Each instance's process and its descendants, parents first, each once.
/// Never a protected pid (ourselves, our ancestors), never pid ≤ 1, and
/// never a process group: an MCP client often shares its server's group.
pub fn stop_targets(instances: &[Instance], protected: &[Pid]) -> Vec<StopTarget> {
    let table = sys::Processes::table(sys::real());
    targets_from_table(instances, protected, &table)
}

pub fn targets_from_table(
    instances: &[Instance],
    protected: &[Pid],
    table: &[ProcStat],
) -> Vec<StopTarget> {
    let mut out: Vec<StopTarget> = Vec::new();
    let mut push = |t: StopTarget| {
        if !proof::never_signalled(t.pid, protected) && !out.iter().any(|o| o.pid == t.pid) {
            out.push(t);
        }
    };
    for i in instances {
        let Some(pid) = i.pid else { continue };
        push(StopTarget {
            pid,
            start_ticks: i.start_ticks,
            role: i.role.label().to_string(),
        });
        for d in sys::descendants(table, pid) {
            push(StopTarget {
                pid: d.pid,
                start_ticks: d.start_ticks,
                role: format!("descendant of {pid}"),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::{Role, StaleFile};
    use crate::sys::RunState;

    fn inst(pid: Option<Pid>, problem: Option<&str>) -> Instance {
        Instance {
            role: Role::Server,
            source: Some(PathBuf::from(format!(
                "/rt/server-{:016x}.pid",
                pid.unwrap_or(0)
            ))),
            pid,
            start_ticks: 10,
            ppid: 1,
            started: None,
            evidence: vec!["holds the flock".into()],
            problem: problem.map(str::to_string),
            transient: false,
            file_id: Some(crate::sys::FileId {
                dev: 1,
                ino: pid.unwrap_or(0) as u64,
            }),

            installation: Default::default(),
        }
    }

    fn st(pid: Pid, ppid: Pid) -> ProcStat {
        ProcStat {
            pid,
            ppid,
            pgrp: ppid,
            session: 1,
            state: RunState::Live,
            start_ticks: 5,
            comm: "x".into(),
            uid: None,
        }
    }

    #[test]
    fn unattributed_locks_are_problems_not_targets() {
        let inv = Inventory {
            instances: vec![
                inst(Some(100), None),
                inst(None, Some("live lock has no signalable PID")),
            ],
            stale: vec![StaleFile {
                path: "/rt/server.pid".into(),
                pid: Some(7),
            }],
            ..Default::default()
        };
        let argv: Vec<String> = ["tool", "install", "memtomem==0.6.12"]
            .map(String::from)
            .to_vec();
        let p = plan(&inv, "memtomem==0.6.12".into(), argv, false);
        assert_eq!(
            p.stops.iter().map(|i| i.pid).collect::<Vec<_>>(),
            vec![Some(100)]
        );
        assert_eq!(
            p.problems,
            vec!["live lock has no signalable PID".to_string()]
        );
        assert_eq!(
            p.would_remove(),
            vec![
                PathBuf::from("/rt/server-0000000000000064.pid"),
                PathBuf::from("/rt/server.pid")
            ]
        );
        assert_eq!(
            p.install_argv(),
            vec!["uv", "tool", "install", "memtomem==0.6.12"]
        );
    }

    #[test]
    fn skip_pkill_keeps_everything_running() {
        let inv = Inventory {
            instances: vec![inst(Some(100), None)],
            ..Default::default()
        };
        let p = plan(&inv, "memtomem[all]".into(), vec![], true);
        assert!(p.stops.is_empty());
        assert_eq!(p.kept.len(), 1);
    }

    #[test]
    fn descendants_follow_their_root_and_protected_pids_never_appear() {
        let table = vec![
            st(100, 50),
            st(101, 100),
            st(102, 101),
            st(200, 50),
            st(50, 1),
        ];
        let t = targets_from_table(&[inst(Some(100), None)], &[50], &table);
        assert_eq!(
            t.iter().map(|t| t.pid).collect::<Vec<_>>(),
            vec![100, 101, 102]
        );
        // The parent (an MCP client, pid 50) and its other child are untouched.
        let t = targets_from_table(&[inst(Some(50), None)], &[50], &table);
        assert!(!t.iter().any(|t| t.pid == 50));
        let t = targets_from_table(&[inst(Some(1), None)], &[], &table);
        assert!(!t.iter().any(|t| t.pid == 1));
    }
}
