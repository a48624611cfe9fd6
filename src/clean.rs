//! Stage 4: remove pid files and markers, only while holding their lock and
//! only when nobody else holds it (a respawned server keeps its file).

use std::fs;
use std::path::{Path, PathBuf};
#[cfg(test)]
use std::time::Duration;

use serde_json::json;

use crate::discover::{Instance, StaleFile};
use crate::pidfile::{self, Unlink};
use crate::stop::StopRecord;
use crate::sys::{self, Clock};
use crate::ui::Ui;

fn note(path: &Path, removed: &mut Vec<PathBuf>) {
    if !removed.iter().any(|p| p == path) {
        removed.push(path.to_path_buf());
    }
}

/// After stopping `targets`: remove each stopped instance's pid file (a file
/// the server already removed itself is reported as removed, as upstream
/// does) and the markers a SIGKILLed server left behind.
pub fn after_stop(
    targets: &[Instance],
    records: &[StopRecord],
    removed: &mut Vec<PathBuf>,
    warnings: &mut Vec<String>,
    ui: &mut Ui,
) {
    after_stop_in(sys::real(), targets, records, removed, warnings, ui)
}

/// [`after_stop`], waiting on `clock`.
pub fn after_stop_in(
    clock: &dyn Clock,
    targets: &[Instance],
    records: &[StopRecord],
    removed: &mut Vec<PathBuf>,
    warnings: &mut Vec<String>,
    ui: &mut Ui,
) {
    for inst in targets {
        let Some(pid) = inst.pid else { continue };
        let stopped = records.iter().any(|r| r.pid == pid && r.stopped());
        if !stopped {
            continue;
        }
        if let Some(src) = &inst.source {
            unlink_one(clock, src, removed, warnings, ui, true);
            remove_markers_of(clock, runtime_dir_of(src), pid, removed, warnings, ui);
        }
    }
}

fn remove_markers_of(
    clock: &dyn Clock,
    runtime: &Path,
    pid: i32,
    removed: &mut Vec<PathBuf>,
    warnings: &mut Vec<String>,
    ui: &mut Ui,
) {
    for sub in ["presence", "instances"] {
        let dir = runtime.join(sub);
        let Ok(meta) = fs::symlink_metadata(&dir) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if pidfile::parse_marker_name(&name).is_some_and(|m| m.pid == pid as i64) {
                unlink_one(clock, &e.path(), removed, warnings, ui, false);
            }
        }
    }
}

fn unlink_one(
    clock: &dyn Clock,
    path: &Path,
    removed: &mut Vec<PathBuf>,
    warnings: &mut Vec<String>,
    ui: &mut Ui,
    report_missing: bool,
) {
    // Like upstream's stale unlink (#2595), under the lifecycle barrier held
    // shared: `mm uninstall`/`mm reset` hold it exclusive while they work.
    let _barrier = match lifecycle_shared(clock, path) {
        Ok(b) => b,
        Err(e) => {
            warnings.push(format!("left {} in place: {e}", path.display()));
            return;
        }
    };
    match pidfile::unlink_if_stale(path) {
        Ok(Unlink::Removed) => {
            ui.event("unlinked", json!({"path": path, "how": "lock-then-unlink"}));
            note(path, removed);
        }
        Ok(Unlink::Missing) => {
            if report_missing {
                ui.event("unlinked", json!({"path": path, "how": "removed by its owner"}));
                note(path, removed);
            }
        }
        Ok(Unlink::Held) => warnings.push(format!(
            "Skipping pid-file unlink — {} is now held by a freshly started writer (likely an auto-restart from your MCP client). Leaving its live lock intact.",
            path.display()
        )),
        Ok(Unlink::Replaced) => warnings.push(format!(
            "Skipping pid-file unlink — {} was replaced after the re-probe. Leaving it intact.",
            path.display()
        )),
        Err(e) => warnings.push(format!("failed to remove stale pid file {}: {e}", path.display())),
    }
}

/// The runtime dir a pid file or marker belongs to: its parent, or for a
/// marker in `<runtime>/presence` or `<runtime>/instances`, the one above.
fn runtime_dir_of(path: &Path) -> &Path {
    let dir = path.parent().unwrap_or(Path::new("/"));
    if dir.ends_with("presence") || dir.ends_with("instances") {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    }
}

/// Hold `<runtime>/lifecycle.lock` shared (if it exists; it is never
/// created here), waiting at most 2 s as upstream does.
fn lifecycle_shared(clock: &dyn Clock, path: &Path) -> Result<Option<fs::File>, String> {
    let lock = runtime_dir_of(path).join("lifecycle.lock");
    match fs::symlink_metadata(&lock) {
        Err(_) => return Ok(None),
        Ok(m) if !m.file_type().is_file() => {
            return Err(format!("{} is not a regular file", lock.display()))
        }
        Ok(_) => {}
    }
    let file = pidfile::open_nofollow(&lock)
        .map_err(|e| format!("cannot open {}: {e}", lock.display()))?;
    let deadline = clock.now() + std::time::Duration::from_secs(2);
    loop {
        match pidfile::try_flock(&file, libc::LOCK_SH) {
            Ok(true) => return Ok(Some(file)),
            Ok(false) if clock.now() < deadline => {
                clock.sleep(std::time::Duration::from_millis(20))
            }
            Ok(false) => {
                return Err(format!(
                    "{} is held exclusively (mm uninstall or mm reset is running)",
                    lock.display()
                ))
            }
            Err(e) => return Err(format!("cannot lock {}: {e}", lock.display())),
        }
    }
}

/// Remove stale (unheld) memtomem files found by discovery.
pub fn stale_files(
    stale: &[StaleFile],
    removed: &mut Vec<PathBuf>,
    warnings: &mut Vec<String>,
    ui: &mut Ui,
) {
    for s in stale {
        unlink_one(sys::real(), &s.path, removed, warnings, ui, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::Role;
    use crate::sys::fake::{Call, FakeOs};
    use crate::testutil::{wait_for, Proc};
    use rusty_fork::rusty_fork_test;
    use std::process::Command;

    fn inst(pid: i32, source: &Path) -> Instance {
        Instance {
            role: Role::Server,
            source: Some(source.to_path_buf()),
            pid: Some(pid),
            start_ticks: 1,
            ppid: 1,
            started: None,
            evidence: vec!["holds the flock".into()],
            problem: None,
            transient: false,
            file_id: None,

            installation: Default::default(),
        }
    }

    fn rec(pid: i32, stopped: bool) -> StopRecord {
        StopRecord {
            pid,
            role: "server".into(),
            signals: vec!["SIGTERM"],
            via: None,
            confirmed_by: None,
            after_ms: None,
            escalated: None,
            error: (!stopped).then(|| "did not exit".into()),
        }
    }

    /// Nobody holds `file` locked.
    fn free(file: &Path) -> bool {
        let f = fs::File::open(file).unwrap();
        let free = pidfile::try_flock(&f, libc::LOCK_EX).unwrap();
        if free {
            pidfile::unlock(&f);
        }
        free
    }

    /// Another program holding `file` locked (`-x` or `-s`).
    fn holder(file: &Path, mode: &str) -> Proc {
        let p = Proc::spawn(
            Command::new("flock")
                .arg(mode)
                .arg(file)
                .args(["sleep", "30"]),
        );
        wait_for(|| !free(file), "the lock");
        p
    }

    fn rt() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("presence")).unwrap();
        tmp
    }

    // Own process (rusty-fork) for what takes real flocks: a child that a
    // sibling test spawns in this process shares a lock's open file description
    // until its exec, so the lock could outlive its release (issue 11).
    rusty_fork_test! {
        #[test]
        fn fake_a_stopped_servers_files_go_and_a_respawned_or_running_servers_stay() {
            let tmp = rt();
            let p = |n: &str| tmp.path().join(n);
            for f in [
                "server-000000000000000a.pid",
                "server-000000000000000b.pid",
                "server-000000000000000c.pid",
                "presence/10-1-0123456789abcdef-01234567-89abcdef.lock",
            ] {
                fs::write(p(f), "").unwrap();
            }
            // 11's client respawned a server that holds the file again.
            let _respawned = holder(&p("server-000000000000000b.pid"), "-x");
            let targets = [
                inst(10, &p("server-000000000000000a.pid")),
                inst(11, &p("server-000000000000000b.pid")),
                inst(12, &p("server-000000000000000c.pid")),
            ];
            let records = [rec(10, true), rec(11, true), rec(12, false)];
            let (mut removed, mut warnings) = (Vec::new(), Vec::new());
            let mut ui = Ui::new(false, None).unwrap();
            let os = FakeOs::new();
            after_stop_in(
                &os,
                &targets,
                &records,
                &mut removed,
                &mut warnings,
                &mut ui,
            );
            assert_eq!(
                removed,
                vec![
                    p("server-000000000000000a.pid"),
                    p("presence/10-1-0123456789abcdef-01234567-89abcdef.lock")
                ]
            );
            assert!(p("server-000000000000000b.pid").exists());
            assert!(p("server-000000000000000c.pid").exists(), "12 did not stop");
            assert!(
                warnings.len() == 1 && warnings[0].contains("freshly started writer"),
                "{warnings:?}"
            );
            assert!(os.log().is_empty(), "no lifecycle lock: no wait");
        }

        #[test]
        fn fake_an_exclusive_lifecycle_barrier_is_waited_out_for_two_seconds_then_respected() {
            let tmp = rt();
            let pid_file = tmp.path().join("server-000000000000000a.pid");
            fs::write(&pid_file, "").unwrap();
            let barrier = tmp.path().join("lifecycle.lock");
            fs::write(&barrier, "").unwrap();
            // `mm uninstall` or `mm reset` at work.
            let _uninstall = holder(&barrier, "-x");
            let (mut removed, mut warnings) = (Vec::new(), Vec::new());
            let mut ui = Ui::new(false, None).unwrap();
            let os = FakeOs::new();
            after_stop_in(
                &os,
                &[inst(10, &pid_file)],
                &[rec(10, true)],
                &mut removed,
                &mut warnings,
                &mut ui,
            );
            assert!(pid_file.exists() && removed.is_empty());
            assert!(warnings[0].contains("held exclusively"), "{warnings:?}");
            let slept: Duration = os
                .log()
                .iter()
                .map(|c| match c {
                    Call::Sleep(d) => *d,
                    Call::Signal { .. } => panic!("clean never signals"),
                })
                .sum();
            assert_eq!(slept, Duration::from_secs(2));
            // A shared holder (a server starting) does not block the cleanup.
            drop(_uninstall);
            // flock(1)'s `sleep` holds the lock too and dies a moment later.
            wait_for(|| free(&barrier), "the uninstall to end");
            let _server = holder(&barrier, "-s");
            let (mut removed, mut warnings) = (Vec::new(), Vec::new());
            after_stop_in(
                &os,
                &[inst(10, &pid_file)],
                &[rec(10, true)],
                &mut removed,
                &mut warnings,
                &mut ui,
            );
            assert_eq!(removed, vec![pid_file.clone()], "{warnings:?}");
        }
    }

    #[test]
    fn a_second_hard_link_is_never_removed() {
        let tmp = rt();
        let other = tmp.path().join("someone-elses.lock");
        fs::write(&other, "").unwrap();
        let pid_file = tmp.path().join("server-000000000000000a.pid");
        fs::hard_link(&other, &pid_file).unwrap();
        let (mut removed, mut warnings) = (Vec::new(), Vec::new());
        let mut ui = Ui::new(false, None).unwrap();
        stale_files(
            &[StaleFile {
                path: pid_file.clone(),
                pid: None,
            }],
            &mut removed,
            &mut warnings,
            &mut ui,
        );
        assert!(pid_file.exists() && removed.is_empty());
        assert!(warnings[0].contains("hard links"), "{warnings:?}");
    }
}
