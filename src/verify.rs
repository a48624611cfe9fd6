//! After the switch: which processes are of the old generation? (The new
//! release was proven before anything stopped: [`crate::txn::prove`].)

use crate::discover::{Instance, Inventory};
use crate::proof;

/// Split live targets into old (started no later than the install finished)
/// and new generation. Start times come from `/proc` in boot-clock ticks, not
/// from payload stamps, so a file cannot make an old process look new. A
/// process that started within the install's own tick counts as old.
pub fn split_generations(inv: &Inventory, installed_ticks: u64) -> (Vec<Instance>, Vec<Instance>) {
    inv.instances
        .iter()
        .filter(|i| proof::proven(i))
        .cloned()
        .partition(|i| i.start_ticks <= installed_ticks)
}

/// Inventory problems that concern the old generation (or cannot be dated).
/// A lock whose holder started after the install is new code, and is not a
/// reason to call the cleanup incomplete.
pub fn old_generation_problems(inv: &Inventory, installed_ticks: u64) -> Vec<String> {
    let mut out: Vec<String> = inv.problems.clone();
    for i in &inv.instances {
        let Some(p) = &i.problem else { continue };
        let new_gen = i.pid.is_some() && i.start_ticks > installed_ticks;
        if !new_gen && !out.contains(p) {
            out.push(p.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::{discover_in, Installation, Scope};
    use crate::sys::fake::{FakeOs, FakeProc};
    use crate::sys::{Clock, FileId, LockKind, LockSeen, Pid};
    use crate::testutil::{lock_holder, Rt};
    use rusty_fork::rusty_fork_test;
    use std::fs;

    // Own process (rusty-fork) for what takes real flocks: a child that a
    // sibling test spawns in this process shares a lock's open file description
    // until its exec, so the lock could outlive its release (issue 11).
    rusty_fork_test! {
        /// Through the fake OS: servers holding their pid files, secondaries
        /// (markers) nothing proves ours; some started before the install, some
        /// after, on the start-time clock.
        #[test]
        fn fake_generations_split_on_the_start_clock_and_only_old_problems_count() {
            let rt = Rt::new();
            fs::create_dir(rt.rt("presence")).unwrap();
            let os = FakeOs::new();
            let installed = os.start_now();
            let mut holders = Vec::new();
            let files = [
                (4242, "server-000000000000000a.pid", installed - 50),
                (4343, "server-000000000000000b.pid", installed + 1),
                (
                    301,
                    "presence/301-1-0123456789abcdef-01234567-89abcdef.lock",
                    installed - 50,
                ),
                (
                    302,
                    "presence/302-1-0123456789abcdef-01234567-89abcdef.lock",
                    installed + 1,
                ),
            ];
            for (pid, name, start) in files {
                let path = rt.rt(name);
                fs::write(&path, format!("{pid}\n")).unwrap();
                holders.push(lock_holder(&path));
                let id = FileId::of(&fs::metadata(&path).unwrap());
                os.add(
                    pid,
                    FakeProc::new(start).holds(id, LockSeen::Flock(LockKind::Write)),
                );
            }
            let install = Installation::default();
            let scope = Scope {
                env: &rt.env,
                install: &install,
                protected: &[],
                scan_processes: false,
            };
            let inv = discover_in(&os, &scope);
            let (old, new) = split_generations(&inv, installed);
            let pids = |v: &[Instance]| v.iter().filter_map(|i| i.pid).collect::<Vec<Pid>>();
            assert_eq!(pids(&old), vec![4242]);
            assert_eq!(pids(&new), vec![4343]);
            // Both secondaries are unproven; only the old one makes the cleanup
            // incomplete (the new one runs new code, whatever else is unclear).
            assert_eq!(inv.all_problems().len(), 2);
            let problems = old_generation_problems(&inv, installed);
            assert!(
                problems.len() == 1 && problems[0].contains("live pid 301"),
                "{problems:?}"
            );
            assert!(os.signals().is_empty());
        }
    }
}
