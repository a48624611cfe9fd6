use super::*;
use crate::pidfile::{self, Probe};
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
