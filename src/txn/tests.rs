//! Switch, rollback and recovery on a scratch tool dir with hand-made
//! environments (real uv and memtomem: tests/transaction.rs).

use super::*;
use rusty_fork::rusty_fork_test;

/// A tool dir with an environment of `version` at `<tool>/memtomem` (or at
/// `dir`), its receipt naming `bin`.
fn make_env(dir: &Path, version: &str, bin: &Path, names: &[&str]) {
    let site = dir.join(format!(
        "lib/python3.12/site-packages/memtomem-{version}.dist-info"
    ));
    fs::create_dir_all(&site).unwrap();
    fs::create_dir_all(dir.join("bin")).unwrap();
    std::os::unix::fs::symlink("/bin/sh", dir.join("bin/python")).unwrap();
    let mut eps = String::new();
    for n in names {
        fs::write(dir.join("bin").join(n), "#!/bin/sh\n").unwrap();
        eps.push_str(&format!(
            "{{ name = \"{n}\", install-path = \"{}/{n}\", from = \"memtomem\" }},",
            bin.display()
        ));
    }
    fs::write(
        dir.join("uv-receipt.toml"),
        format!("[tool]\nrequirements = [{{ name = \"memtomem\" }}]\nentrypoints = [{eps}]\n"),
    )
    .unwrap();
}

struct Fixture {
    _tmp: tempfile::TempDir,
    layout: Layout,
}

/// Old 0.6.11 installed and linked; a staged 0.6.12 with one more entry point.
fn fixture() -> (Fixture, Journal) {
    let tmp = tempfile::tempdir().unwrap();
    let tool = tmp.path().join("tools");
    let bin = tmp.path().join("bin");
    fs::create_dir_all(&bin).unwrap();
    let layout = Layout {
        tool_dir: tool.clone(),
        bin_dir: Some(bin.clone()),
    };
    make_env(&layout.env(), "0.6.11", &bin, &["mm", "old-only"]);
    for n in ["mm", "old-only"] {
        std::os::unix::fs::symlink(layout.env().join("bin").join(n), bin.join(n)).unwrap();
    }
    let stage = layout.work().join("stage-1/memtomem");
    make_env(&stage, "0.6.12", &bin, &["mm", "new-only"]);
    let old = receipt::read(&layout.env()).unwrap();
    let new = receipt::read(&stage).unwrap();
    let (old_links, new_links) = plan_links(&layout, Some(&old), &new).unwrap();
    let j = Journal {
        id: "1".into(),
        state: State::Staging,
        env: layout.env(),
        stage_env: stage.clone(),
        old_ino: ino(&layout.env()),
        new_ino: ino(&stage),
        version: "0.6.12".into(),
        old_links,
        new_links,
    };
    journal::store(&layout.work(), &j).unwrap();
    (Fixture { _tmp: tmp, layout }, j)
}

fn version_at(layout: &Layout) -> Option<String> {
    install::installed_version(&layout.tool_dir)
}

fn links(layout: &Layout) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(layout.bin_dir.as_ref().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn switch_commit_leaves_only_the_new_env_and_its_links() {
    let (f, mut j) = fixture();
    let work = f.layout.work();
    arm(&work, &mut j).unwrap();
    switch(&j).unwrap();
    assert_eq!(version_at(&f.layout).as_deref(), Some("0.6.12"));
    assert_eq!(links(&f.layout), ["mm", "new-only"]);
    check_in_place(&j).unwrap();
    commit(&work, &mut j).unwrap().join().unwrap();
    assert!(!work.exists(), "the old env and the journal are gone");
    assert_eq!(recover(&f.layout).unwrap(), None);
}

#[test]
fn rollback_is_the_exchange_back() {
    let (f, mut j) = fixture();
    let work = f.layout.work();
    let old_ino = ino(&f.layout.env());
    arm(&work, &mut j).unwrap();
    switch(&j).unwrap();
    rollback(&work, &mut j).unwrap();
    assert_eq!(
        ino(&f.layout.env()),
        old_ino,
        "the very same directory is back"
    );
    assert_eq!(version_at(&f.layout).as_deref(), Some("0.6.11"));
    assert_eq!(links(&f.layout), ["mm", "old-only"]);
    assert!(!work.exists());
}

#[test]
fn recovery_from_every_state_ends_with_one_complete_env() {
    // (state written, exchange done?) -> expected version
    let cases = [
        (State::Staging, false, "0.6.11"),
        (State::Switching, false, "0.6.11"),
        (State::Switching, true, "0.6.12"),
        (State::RollingBack, true, "0.6.11"),
        (State::RollingBack, false, "0.6.11"),
    ];
    for (state, exchanged, want) in cases {
        let (f, mut j) = fixture();
        let work = f.layout.work();
        j.state = state;
        journal::store(&work, &j).unwrap();
        if exchanged {
            swap(&j).unwrap();
        }
        let r = recover(&f.layout).unwrap().unwrap();
        assert_eq!(
            version_at(&f.layout).as_deref(),
            Some(want),
            "{state:?} {exchanged}: {r:?}"
        );
        let want_links: &[&str] = if want == "0.6.12" {
            &["mm", "new-only"]
        } else {
            &["mm", "old-only"]
        };
        assert_eq!(links(&f.layout), want_links, "{state:?} {exchanged}");
        for l in links(&f.layout) {
            let p = f.layout.bin_dir.as_ref().unwrap().join(&l);
            assert!(fs::metadata(&p).is_ok(), "{} dangles", p.display());
        }
        assert!(!work.exists(), "{state:?}: work dir left");
    }
}

#[test]
fn a_switched_env_that_fails_the_check_is_rolled_back_on_recovery() {
    let (f, mut j) = fixture();
    let work = f.layout.work();
    arm(&work, &mut j).unwrap();
    switch(&j).unwrap();
    // The new env lost its interpreter after the switch (a crash mid-write, a
    // hand edit): recovery must not roll forward onto it.
    fs::remove_file(f.layout.env().join("bin/python")).unwrap();
    assert_eq!(recover(&f.layout).unwrap(), Some(Recovered::RolledBack));
    assert_eq!(version_at(&f.layout).as_deref(), Some("0.6.11"));
}

#[test]
fn a_foreign_link_in_the_bin_dir_is_refused_before_anything_changes() {
    let (f, _) = fixture();
    let bin = f.layout.bin_dir.clone().unwrap();
    std::os::unix::fs::symlink("/usr/bin/true", bin.join("new-only")).unwrap();
    let old = receipt::read(&f.layout.env()).unwrap();
    let new = receipt::read(&f.layout.work().join("stage-1/memtomem")).unwrap();
    let err = plan_links(&f.layout, Some(&old), &new).unwrap_err();
    assert!(
        err.contains("new-only") && err.contains("/usr/bin/true"),
        "{err}"
    );
}

#[test]
fn first_install_moves_the_staged_env_in() {
    let (f, mut j) = fixture();
    let work = f.layout.work();
    fs::remove_dir_all(f.layout.env()).unwrap();
    j.old_ino = None;
    arm(&work, &mut j).unwrap();
    switch(&j).unwrap();
    assert_eq!(version_at(&f.layout).as_deref(), Some("0.6.12"));
    rollback(&work, &mut j).unwrap();
    assert!(!f.layout.env().exists());
}

// Own process (rusty-fork) for what takes real flocks: a child that a
// sibling test spawns in this process shares a lock's open file description
// until its exec, so the lock could outlive its release (issue 11).
rusty_fork_test! {
    #[test]
    fn the_tool_lock_is_uvs_lock_file() {
        let tmp = tempfile::tempdir().unwrap();
        let first = lock_tool_dir(tmp.path()).unwrap();
        assert!(tmp.path().join(".lock").is_file());
        // Another open file description conflicts even in this process (flock).
        assert!(lock_tool_dir(tmp.path()).unwrap_err().contains(".lock"));
        drop(first);
        lock_tool_dir(tmp.path()).unwrap();
    }

    #[test]
    fn tool_lock_and_barrier_are_closed_on_exec() {
        use std::os::fd::AsRawFd;
        let cloexec = |f: &File| {
            nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFD)
                .is_ok_and(|flags| flags & libc::FD_CLOEXEC != 0)
        };
        let tmp = tempfile::tempdir().unwrap();
        let tool = lock_tool_dir(&tmp.path().join("tools")).unwrap();
        assert!(cloexec(&tool._file));
        let rt = tmp.path().join("rt");
        fs::create_dir(&rt).unwrap();
        let barrier = take_barrier(&[rt], Duration::from_secs(1));
        assert!(barrier.missed.is_empty(), "{:?}", barrier.missed);
        assert_eq!(barrier._files.len(), 1);
        assert!(barrier._files.iter().all(cloexec));
    }
}
