//! One test per `--mode`, proving it does what its name says.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// How long a test waits to be sure something did NOT happen.
const GRACE: Duration = Duration::from_millis(400);
const SOON: Duration = Duration::from_secs(3);

fn pid_of(v: &Value) -> i32 {
    v["pid"].as_i64().unwrap() as i32
}

fn pid_file(v: &Value) -> PathBuf {
    ready_path(v, "pid_file").expect("pid_file")
}

/// SIGTERM leaves the server running and locked past a grace; SIGKILL then
/// kills it and leaves its pid file stale (payload intact, unlocked).
fn survives_sigterm_and_dies_on_sigkill_leaving_pid_file(p: &mut Proc, r: &Value) {
    kill(p.pid(), libc::SIGTERM);
    assert!(p.wait_exit(GRACE).is_none(), "survived SIGTERM");
    assert!(is_locked(&pid_file(r)));
    kill(p.pid(), libc::SIGKILL);
    assert_eq!(p.wait_exit(SOON).unwrap().signal(), Some(libc::SIGKILL));
    assert_server_payload(&std::fs::read(pid_file(r)).unwrap(), p.pid());
    assert!(!is_locked(&pid_file(r)));
}

#[cfg(target_os = "linux")] // SigIgn of /proc/<pid>/status
#[test]
fn ignore_sigterm_survives_grace_and_dies_on_sigkill_leaving_pid_file() {
    let sb = Sandbox::new();
    let mut p = sb.spawn("s", &["--mode", "ignore-sigterm"]);
    let r = p.ready();
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.pid())).unwrap();
    let sigign = status.lines().find(|l| l.starts_with("SigIgn:")).unwrap();
    let mask = u64::from_str_radix(sigign.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_ne!(
        mask & (1 << (libc::SIGTERM - 1)),
        0,
        "SIGTERM must be SIG_IGN: {sigign}"
    );
    survives_sigterm_and_dies_on_sigkill_leaving_pid_file(&mut p, &r);
}

#[test]
fn catch_sigterm_logs_it_survives_and_dies_on_sigkill() {
    let sb = Sandbox::new();
    let mut p = sb.spawn("s", &["--mode", "catch-sigterm"]);
    let r = p.ready();
    survives_sigterm_and_dies_on_sigkill_leaving_pid_file(&mut p, &r);
    assert!(p
        .events()
        .iter()
        .any(|e| e["event"] == "signal" && e["signal"] == "SIGTERM" && e["action"] == "ignored"));
}

#[test]
fn slow_shutdown_keeps_lock_for_ms_then_cleans_up() {
    let sb = Sandbox::new();
    let mut p = sb.spawn("s", &["--mode", "slow-shutdown=600"]);
    let r = p.ready();
    let t0 = Instant::now();
    kill(p.pid(), libc::SIGTERM);
    assert!(p.wait_exit(Duration::from_millis(300)).is_none());
    assert!(is_locked(&pid_file(&r)));
    let st = p.wait_exit(SOON).unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(600));
    assert_eq!(st.code(), Some(0));
    assert!(!pid_file(&r).exists());
}

#[test]
fn leak_pidfile_exits_zero_without_cleanup() {
    let sb = Sandbox::new();
    let mut p = sb.spawn("s", &["--mode", "leak-pidfile"]);
    let r = p.ready();
    kill(p.pid(), libc::SIGTERM);
    assert_eq!(p.wait_exit(SOON).unwrap().code(), Some(0));
    assert!(pid_file(&r).exists() && !is_locked(&pid_file(&r)));
    assert!(ready_path(&r, "presence").unwrap().exists());
    assert_eq!(p.events().last().unwrap()["how"], "sigterm-leak");
}

#[test]
fn exit_code_on_term_cleans_up_and_exits_n() {
    let sb = Sandbox::new();
    let mut p = sb.spawn("s", &["--mode", "exit-code-on-term=3"]);
    let r = p.ready();
    kill(p.pid(), libc::SIGTERM);
    assert_eq!(p.wait_exit(SOON).unwrap().code(), Some(3));
    assert!(!pid_file(&r).exists());
    assert_eq!(p.events().last().unwrap()["code"], 3);
}

#[test]
fn fork_children_share_the_group_and_keep_the_lock_alive() {
    let sb = Sandbox::new();
    let mut p = sb.spawn("s", &["--mode", "fork-children=2"]);
    let r = p.ready();
    let pids: Vec<i32> = r["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap() as i32)
        .collect();
    assert_eq!(pids.len(), 3);
    assert_eq!(pids[0], p.pid());
    for c in &pids[1..] {
        // SAFETY: getpgid query.
        assert_eq!(unsafe { libc::getpgid(*c) }, p.pid(), "same process group");
    }
    kill(p.pid(), libc::SIGKILL);
    p.wait_exit(SOON).unwrap();
    assert!(is_locked(&pid_file(&r)), "children inherited the lock fd");
    for c in &pids[1..] {
        kill(*c, libc::SIGTERM);
    }
    assert!(
        wait_until(SOON, || !is_locked(&pid_file(&r))),
        "children die when signalled"
    );
}

#[test]
fn children_close_lock_releases_with_the_parent() {
    let sb = Sandbox::new();
    let mut p = sb.spawn(
        "s",
        &["--mode", "fork-children=2", "--mode", "children-close-lock"],
    );
    let r = p.ready();
    assert_eq!(r["pids"].as_array().unwrap().len(), 3);
    kill(p.pid(), libc::SIGKILL);
    p.wait_exit(SOON).unwrap();
    assert!(!is_locked(&pid_file(&r)));
    let kids: Vec<i32> = r["pids"].as_array().unwrap()[1..]
        .iter()
        .map(|x| x.as_i64().unwrap() as i32)
        .collect();
    assert!(kids.iter().all(|k| alive(*k)));
}

#[test]
fn child_holds_flock_after_parent_exit_and_pid_file_names_dead_parent() {
    let sb = Sandbox::new();
    let mut p = sb.spawn("s", &["--mode", "child-holds-flock"]);
    let r = p.ready();
    let parent = p.pid();
    let heir = pid_of(&r);
    assert_ne!(heir, parent);
    assert_eq!(r["pids"], serde_json::json!([heir]));
    assert_eq!(
        p.wait_exit(SOON).unwrap().code(),
        Some(0),
        "parent exited (reaped here)"
    );
    assert!(!alive(parent));
    assert!(is_locked(&pid_file(&r)), "heir keeps the inherited lock");
    assert_server_payload(&std::fs::read(pid_file(&r)).unwrap(), parent);
    // The heir is pid-guarded: SIGTERM ends it without unlinking the parent's files.
    kill(heir, libc::SIGTERM);
    assert!(wait_until(SOON, || !is_locked(&pid_file(&r))));
    assert!(pid_file(&r).exists());
}

#[test]
fn daemonize_double_forks_into_a_new_session_and_the_grandchild_owns_the_pid_file() {
    let sb = Sandbox::new();
    let mut p = sb.spawn("s", &["--mode", "daemonize"]);
    let r = p.ready();
    let d = pid_of(&r);
    assert_eq!(p.wait_exit(SOON).unwrap().code(), Some(0));
    assert_ne!(d, p.pid());
    // SAFETY: session / group queries.
    let (sid, pgid) = unsafe { (libc::getsid(d), libc::getpgid(d)) };
    assert_ne!(pgid, p.pid(), "escaped the launcher's group");
    assert_ne!(sid, d, "grandchild is not a session leader");
    assert!(alive(sid) || sid > 0);
    assert_server_payload(&std::fs::read(pid_file(&r)).unwrap(), d);
    assert!(is_locked(&pid_file(&r)));
    kill(d, libc::SIGTERM);
    assert!(wait_until(SOON, || !pid_file(&r).exists()));
}

#[test]
fn respawn_supervisor_restarts_its_worker_with_a_fresh_stamp() {
    let sb = Sandbox::new();
    let mut p = sb.spawn("s", &["--mode", "respawn"]);
    let r1 = p.ready_where(|v| v["pid"] != Value::Null);
    let w1 = pid_of(&r1);
    assert_ne!(w1, p.pid());
    assert_eq!(r1["pids"], serde_json::json!([p.pid(), w1]));
    kill(w1, libc::SIGKILL);
    let r2 = p.ready_where(|v| pid_of(v) != w1);
    let w2 = pid_of(&r2);
    assert!(alive(p.pid()) && alive(w2));
    let stamp = assert_server_payload(&std::fs::read(pid_file(&r2)).unwrap(), w2);
    assert!(
        stamp.as_str() > r1["started"].as_str().unwrap(),
        "fresh stamp"
    );
    // SIGTERM to the worker: it cleans up, and the supervisor starts another one.
    kill(w2, libc::SIGTERM);
    let r3 = p.ready_where(|v| pid_of(v) != w2 && pid_of(v) != w1);
    assert!(alive(pid_of(&r3)));
    // Closing the supervisor's stdin stops everything cleanly.
    p.close_stdin();
    assert_eq!(p.wait_exit(SOON).unwrap().code(), Some(0));
    assert!(wait_until(SOON, || !pid_file(&r3).exists()));
    assert!(p.events().iter().any(|e| e["event"] == "respawn"));
}

#[test]
fn respawn_delay_is_honoured() {
    let sb = Sandbox::new();
    let mut p = sb.spawn("s", &["--mode", "respawn=500"]);
    let w1 = pid_of(&p.ready());
    let t0 = Instant::now();
    kill(w1, libc::SIGKILL);
    p.ready_where(|v| pid_of(v) != w1);
    assert!(t0.elapsed() >= Duration::from_millis(500));
}

#[test]
fn respawn_on_term_replaces_itself_with_a_new_pid() {
    let sb = Sandbox::new();
    let mut p = sb.spawn("s", &["--mode", "respawn-on-term"]);
    let r1 = p.ready();
    kill(p.pid(), libc::SIGTERM);
    assert_eq!(p.wait_exit(SOON).unwrap().code(), Some(0));
    let r2 = p.ready_where(|v| pid_of(v) != pid_of(&r1));
    let new = pid_of(&r2);
    assert!(alive(new));
    assert_eq!(pid_file(&r2), pid_file(&r1));
    assert_server_payload(&std::fs::read(pid_file(&r2)).unwrap(), new);
    assert!(is_locked(&pid_file(&r2)));
    // SAFETY: group query.
    assert_eq!(
        unsafe { libc::getpgid(new) },
        p.pgid,
        "replacement stays in the group"
    );
}

#[test]
fn lock_before_payload_holds_an_empty_locked_file_first() {
    let sb = Sandbox::new();
    let mut p = sb.spawn("s", &["--mode", "lock-before-payload=500"]);
    let mut locked_at = None;
    assert!(wait_until(SOON, || {
        locked_at = p
            .events()
            .into_iter()
            .find(|e| e["event"] == "lock" && e["kind"] == "pid");
        locked_at.is_some()
    }));
    let path = PathBuf::from(locked_at.unwrap()["path"].as_str().unwrap());
    assert!(is_locked(&path));
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"",
        "startup gap: locked, empty"
    );
    let r = p.ready();
    assert_server_payload(&std::fs::read(&path).unwrap(), p.pid());
    assert_eq!(pid_file(&r), path);
}

#[test]
fn crash_on_start_leaves_a_stale_marker_and_no_pid_file() {
    let sb = Sandbox::new();
    let mut p = sb.spawn("s", &["--mode", "crash-on-start"]);
    assert_eq!(p.wait_exit(SOON).unwrap().code(), Some(1));
    assert!(!p.ready.exists());
    let markers = list(&sb.rt.join("presence"));
    assert_eq!(markers.len(), 1);
    assert!(!is_locked(&sb.rt.join("presence").join(&markers[0])));
    assert!(!list(&sb.rt).iter().any(|n| n.ends_with(".pid")));
}

#[test]
fn stopped_is_in_state_t_ignores_pending_sigterm_and_dies_on_sigkill() {
    let sb = Sandbox::new();
    let mut p = sb.spawn("s", &["--mode", "stopped"]);
    let r = p.ready();
    assert!(wait_until(SOON, || proc_state(p.pid()) == Some('T')));
    kill(p.pid(), libc::SIGTERM);
    assert!(p.wait_exit(GRACE).is_none());
    assert_eq!(proc_state(p.pid()), Some('T'));
    kill(p.pid(), libc::SIGKILL);
    assert_eq!(p.wait_exit(SOON).unwrap().signal(), Some(libc::SIGKILL));
    assert!(pid_file(&r).exists());
}

#[test]
fn zombie_server_is_never_reaped_by_its_launcher() {
    let sb = Sandbox::new();
    let mut p = sb.spawn("s", &["--mode", "zombie"]);
    let r = p.ready();
    let server = pid_of(&r);
    assert_eq!(r["pids"], serde_json::json!([p.pid(), server]));
    assert_server_payload(&std::fs::read(pid_file(&r)).unwrap(), server);
    kill(server, libc::SIGTERM);
    assert!(wait_until(SOON, || proc_state(server) == Some('Z')));
    assert!(!pid_file(&r).exists(), "it cleaned up before exiting");
    assert!(alive(server), "kill(pid, 0) still succeeds on a zombie");
    assert!(p.wait_exit(GRACE).is_none(), "the launcher stays alive");
}

#[test]
fn secondary_has_only_a_presence_marker() {
    let sb = Sandbox::new();
    let mut p = sb.spawn("s", &["--mode", "secondary"]);
    let r = p.ready();
    assert_eq!(r["pid_file"], Value::Null);
    assert!(is_locked(&ready_path(&r, "presence").unwrap()));
    assert!(!list(&sb.rt).iter().any(|n| n.ends_with(".pid")));
    assert!(p
        .stderr_text()
        .contains("Another memtomem-server is already writing"));
}

#[test]
fn corrupt_pidfile_kinds_hold_the_lock_over_bad_payloads() {
    let sb = Sandbox::new();
    for kind in [
        "empty", "garbage", "zero", "negative", "one", "self", "oversize", "non-utf8", "no-stamp",
    ] {
        let mut p = sb.spawn(kind, &["--mode", &format!("corrupt-pidfile={kind}")]);
        let r = p.ready();
        let bytes = std::fs::read(pid_file(&r)).unwrap();
        assert!(is_locked(&pid_file(&r)), "{kind}");
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let first = text.lines().next().unwrap_or("").to_string();
        match kind {
            "empty" => assert!(bytes.is_empty()),
            "garbage" => assert!(first.parse::<i64>().is_err()),
            "zero" => assert_eq!(first, "0"),
            "negative" => assert!(first.parse::<i64>().unwrap() < 0),
            "one" => assert_eq!(first, "1"),
            "self" => assert_eq!(first, std::process::id().to_string()),
            "oversize" => assert!(bytes.len() > 4096),
            "non-utf8" => assert!(std::str::from_utf8(&bytes).is_err()),
            "no-stamp" => assert_eq!(text, format!("{}\n\n", p.pid())),
            _ => unreachable!(),
        }
        kill(p.pid(), libc::SIGTERM);
        assert_eq!(p.wait_exit(SOON).unwrap().code(), Some(0));
    }
}

#[test]
fn pidfile_symlink_locks_the_link_target() {
    let sb = Sandbox::new();
    let mut p = sb.spawn("s", &["--mode", "pidfile-symlink"]);
    let r = p.ready();
    let path = pid_file(&r);
    assert!(std::fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_symlink());
    let target = std::fs::read_link(&path).unwrap();
    assert!(is_locked(&target));
    assert_server_payload(&std::fs::read(&target).unwrap(), p.pid());
}

#[test]
fn pidfile_fifo_runs_with_presence_marker_only() {
    use std::os::unix::fs::FileTypeExt;
    let sb = Sandbox::new();
    let mut p = sb.spawn("s", &["--mode", "pidfile-fifo"]);
    let r = p.ready();
    assert_eq!(r["pid_file"], Value::Null);
    let digest = digest_of(&format!("{}/.memtomem/memtomem.db", sb.home.display()));
    let path = sb.rt.join(format!("server-{digest}.pid"));
    assert!(std::fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_fifo());
    assert!(is_locked(&ready_path(&r, "presence").unwrap()));
}

#[test]
fn unsafe_runtime_dir_kinds_are_set_up_and_used() {
    use std::os::unix::fs::MetadataExt;
    let sb = Sandbox::new();
    let mut p = sb.spawn("w", &["--mode", "unsafe-runtime-dir=0777"]);
    let r = p.ready();
    assert_eq!(mode_bits(&sb.rt), 0o777);
    assert!(pid_file(&r).starts_with(&sb.rt));
    drop(p);

    let sb = Sandbox::new();
    let mut p = sb.spawn("l", &["--mode", "unsafe-runtime-dir=link"]);
    let r = p.ready();
    assert!(std::fs::symlink_metadata(&sb.rt)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(is_locked(&pid_file(&r)));
    drop(p);

    let sb = Sandbox::new();
    let mut p = sb.spawn("o", &["--mode", "unsafe-runtime-dir=wrong-owner"]);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let r = p.ready();
        assert_eq!(std::fs::metadata(&sb.rt).unwrap().uid(), 65534);
        assert!(is_locked(&pid_file(&r)));
    } else {
        assert_eq!(p.wait_exit(SOON).unwrap().code(), Some(1));
        assert!(p.stderr_text().contains("needs root"));
    }
}

#[test]
fn db_writer_holds_a_sqlite_write_lock_without_pid_file() {
    let sb = Sandbox::new();
    let mut p = sb.spawn("s", &["--mode", "db-writer"]);
    let r = p.ready();
    assert_eq!(r["pid_file"], Value::Null);
    assert_eq!(r["presence"], Value::Null);
    let db = sb.home.join(".memtomem/memtomem.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.busy_timeout(Duration::from_millis(0)).unwrap();
    let err = conn.execute_batch("BEGIN IMMEDIATE").unwrap_err();
    assert!(
        err.to_string().contains("locked") || err.to_string().contains("busy"),
        "{err}"
    );
    kill(p.pid(), libc::SIGKILL);
    p.wait_exit(SOON).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK").unwrap();
}

#[cfg(target_os = "linux")] // /proc/<pid>/maps
#[test]
fn old_generation_maps_a_deleted_file_and_maps_keeps_one() {
    let sb = Sandbox::new();
    let lib = sb.path("tooldir/memtomem/lib/_old.so");
    let keep = sb.path("tooldir/memtomem/lib/_new.so");
    std::fs::create_dir_all(lib.parent().unwrap()).unwrap();
    std::fs::write(&lib, vec![7u8; 8192]).unwrap();
    std::fs::write(&keep, vec![8u8; 100]).unwrap();
    let mut p = sb.spawn(
        "s",
        &[
            "--mode",
            &format!("old-generation={}", lib.display()),
            "--mode",
            &format!("maps={}", keep.display()),
        ],
    );
    p.ready();
    assert!(!lib.exists());
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", p.pid())).unwrap();
    assert!(
        maps.contains(&format!("{} (deleted)", lib.display())),
        "{maps}"
    );
    assert!(
        maps.lines().any(|l| l.ends_with(keep.to_str().unwrap())),
        "{maps}"
    );
}

#[test]
fn combined_modes_apply_together() {
    let sb = Sandbox::new();
    let mut p = sb.spawn(
        "s",
        &[
            "--mode",
            "ignore-sigterm",
            "--mode",
            "fork-children=1",
            "--mode",
            "corrupt-pidfile=one",
        ],
    );
    let r = p.ready();
    assert_eq!(
        r["mode"],
        serde_json::json!(["ignore-sigterm", "fork-children=1", "corrupt-pidfile=one"])
    );
    assert_eq!(
        std::fs::read_to_string(pid_file(&r))
            .unwrap()
            .lines()
            .next(),
        Some("1")
    );
    kill(p.pid(), libc::SIGTERM);
    assert!(p.wait_exit(GRACE).is_none());
    assert_eq!(r["pids"].as_array().unwrap().len(), 2);
}
