//! What this OS lets mm-upgrade do to a running process, and the policy
//! where it cannot stop one. On Linux and macOS a proven process gets
//! SIGTERM, then SIGKILL ([`crate::stop`]). Windows has no signals to send
//! to a console-less Python server, so mm-upgrade does what memtomem 0.6.12's
//! `mm upgrade` does there: it stops nothing, and refuses (exit 3, before
//! anything changed) while any memtomem server or `mm web` is live; with
//! none live it installs. The decision is here, in shared code, so the
//! Linux tests exercise it through the fake OS.

use crate::discover::Inventory;

/// Whether processes can be stopped on this OS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// SIGTERM, grace, SIGKILL (Linux, macOS).
    Signals,
    /// No way to stop a process (Windows): live servers are refused.
    Unavailable,
}

impl Termination {
    /// The OS this binary was built for.
    pub const fn this_os() -> Termination {
        if cfg!(windows) {
            Termination::Unavailable
        } else {
            Termination::Signals
        }
    }
}

/// Where termination is unavailable, a live instance is a reason to refuse:
/// one problem naming every live server, web UI and process, so the run
/// stops before anything changed and the user knows what to stop by hand.
/// Where it is available, the inventory is left as it is.
pub fn gate(inv: &mut Inventory, termination: Termination) {
    if termination == Termination::Signals || inv.instances.is_empty() {
        return;
    }
    let live: Vec<String> = inv
        .instances
        .iter()
        .map(|i| {
            let pid = i.pid.map_or("pid unknown".into(), |p| format!("pid {p}"));
            match &i.source {
                Some(src) => format!("{} {pid} ({})", i.role.label(), src.display()),
                None => format!("{} {pid}", i.role.label()),
            }
        })
        .collect();
    inv.problems.push(format!(
        "process termination is unavailable on this platform: stop every memtomem server and `mm web` by hand, then run again (live: {})",
        live.join(", ")
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::{discover_stable_with, Installation, Scope};
    use crate::sys::fake::{FakeOs, FakeProc};
    use crate::sys::{Clock, FileId, LockKind, LockSeen, Pid};
    use crate::testutil::{lock_holder, Rt};
    use rusty_fork::rusty_fork_test;
    use std::fs;

    fn inventory(os: &FakeOs, rt: &Rt) -> Inventory {
        let install = Installation::default();
        let protected: [Pid; 0] = [];
        let scope = Scope {
            env: &rt.env,
            install: &install,
            protected: &protected,
            scan_processes: true,
        };
        discover_stable_with(os, &scope, &|d| os.sleep(d))
    }

    // Own process (rusty-fork): takes real flocks (issue 11).
    rusty_fork_test! {
        #[test]
        fn without_signals_live_servers_are_refused_and_none_live_proceeds() {
            let rt = Rt::new();
            let os = FakeOs::new();
            // Nothing live: the policy adds nothing, the install proceeds,
            // with or without signals; a stale pid file is still cleaned.
            fs::write(rt.rt("server-0123456789abcdef.pid"), "4242\n\n").unwrap();
            let mut inv = inventory(&os, &rt);
            assert_eq!(inv.stale.len(), 1, "{inv:?}");
            gate(&mut inv, Termination::Unavailable);
            assert!(inv.all_problems().is_empty(), "{:?}", inv.all_problems());

            // A live server (its pid file locked) and `mm web`.
            let srv = rt.rt("server-0123456789abcdef.pid");
            let _h1 = lock_holder(&srv);
            let web = rt.rt("web.pid");
            fs::write(&web, "5000\n18081\n").unwrap();
            let _h2 = lock_holder(&web);
            let id = |p: &std::path::Path| FileId::of(&fs::metadata(p).unwrap());
            let w = LockSeen::Flock(LockKind::Write);
            os.add(4242, FakeProc::new(10).holds(id(&srv), w));
            os.add(5000, FakeProc::new(11).holds(id(&web), w));
            let live = inventory(&os, &rt);
            assert_eq!(live.targets().count(), 2, "{live:?}");

            // With signals: both are stop targets, nothing is refused.
            let mut with = live.clone();
            gate(&mut with, Termination::Signals);
            assert!(with.all_problems().is_empty(), "{:?}", with.all_problems());

            // Without: one refusal naming both, and the run stops there.
            let mut without = live;
            gate(&mut without, Termination::Unavailable);
            let problems = without.all_problems();
            assert_eq!(problems.len(), 1, "{problems:?}");
            let p = &problems[0];
            assert!(p.contains("termination is unavailable"), "{p}");
            assert!(p.contains("server pid 4242") && p.contains("server-0123456789abcdef.pid"), "{p}");
            assert!(p.contains("web UI pid 5000") && p.contains("web.pid"), "{p}");
            assert!(os.signals().is_empty(), "nothing is ever signalled");
        }
    }

    #[cfg(unix)]
    #[test]
    fn unix_builds_stop_processes_with_signals() {
        assert_eq!(Termination::this_os(), Termination::Signals);
    }
}
