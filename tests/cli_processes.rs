//! Processes end to end: stopping (SIGTERM-ignoring, zombie, pid 1), stale
//! pid files under the lifecycle barrier, and `status`. Each test in its own
//! sandbox.

mod common;

use std::fs;

use common::{exists, json_run, Sandbox};
use predicates::prelude::*;

#[test]
fn a_server_ignoring_sigterm_is_killed_without_waiting_out_the_grace() {
    let sb = Sandbox::new();
    let server = sb.server("s", &["--mode", "ignore-sigterm"]);
    let doc = json_run(
        sb.upgrader()
            .args(["-y", "--json", "--grace", "30", "--version", "0.6.12"]),
        0,
    );
    let stop = &doc["stops"][0];
    assert_eq!(stop["signals"], serde_json::json!(["SIGTERM", "SIGKILL"]));
    assert!(stop["escalated"].as_str().unwrap().contains("ignored"));
    assert!(!server.alive());
    // SIGKILL leaves the pid file; it is removed under its lock.
    assert!(!exists(&server.pid_file()));
    assert_eq!(doc["removed"][0], serde_json::json!(server.pid_file()));
}

#[test]
fn a_zombie_server_is_dead_and_is_not_signalled() {
    let sb = Sandbox::new();
    let server = sb.server("s", &["--mode", "zombie"]);
    // Make it exit (its launcher never reaps it): it is a zombie holding no lock.
    unsafe { libc::kill(server.pid(), libc::SIGTERM) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while common::alive(server.pid()) {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let doc = json_run(
        sb.upgrader()
            .args(["-y", "--json", "--grace", "30", "--version", "0.6.12"]),
        0,
    );
    assert_eq!(
        doc["killed"],
        serde_json::json!([]),
        "a zombie holds no lock and is no target"
    );
}

#[test]
fn a_pid_file_naming_pid_1_is_refused_and_nothing_is_signalled() {
    let sb = Sandbox::new();
    let server = sb.server("s", &["--mode", "corrupt-pidfile=one"]);
    let doc = json_run(
        sb.upgrader().args(["-y", "--json", "--version", "0.6.12"]),
        3,
    );
    let err = doc["error"].as_str().unwrap();
    assert!(err.contains("no signalable PID"), "{err}");
    assert!(
        err.contains(&format!("held by pid {}", server.pid())),
        "names the real holder: {err}"
    );
    assert!(server.alive());
    assert!(!sb.uv_log().contains("install"));
}

/// A reinstall rewrites uv's receipt: its mtime is the install time.
#[test]
fn status_calls_a_server_started_after_the_install_current() {
    let sb = Sandbox::new();
    sb.set_install_time(std::time::Duration::from_secs(5));
    let server = sb.server("s", &[]);
    let doc = json_run(sb.upgrader().args(["status", "--json"]), 0);
    let procs = doc["processes"].as_array().unwrap();
    assert_eq!(procs.len(), 1, "{doc}");
    assert_eq!(procs[0]["pid"], server.pid());
    assert_eq!(procs[0]["generation"], "current");
    assert_eq!(doc["stale"], 0);
}

#[test]
fn status_proves_a_server_that_survived_a_reinstall_is_stale() {
    let sb = Sandbox::new();
    let server = sb.server("s", &[]);
    sb.set_install_time(std::time::Duration::ZERO);
    let doc = json_run(sb.upgrader().args(["status", "--json"]), 6);
    let p = &doc["processes"][0];
    assert_eq!(p["pid"], server.pid());
    assert_eq!(p["generation"], "stale");
    assert!(
        p["evidence"].to_string().contains("before the install"),
        "{p}"
    );
    // Words, for people: the same verdict.
    sb.upgrader().arg("status").assert().code(6).stdout(
        predicate::str::contains("stale").and(predicate::str::contains("still run old code")),
    );
}

#[test]
fn status_sees_deleted_mappings_of_the_installation() {
    let sb = Sandbox::new();
    sb.set_install_time(std::time::Duration::from_secs(5));
    let lib = sb.path("tools/memtomem/lib/_native.so");
    fs::create_dir_all(lib.parent().unwrap()).unwrap();
    fs::write(&lib, vec![0u8; 8192]).unwrap();
    let server = sb.server(
        "s",
        &["--mode", &format!("old-generation={}", lib.display())],
    );
    let doc = json_run(sb.upgrader().args(["status", "--json"]), 6);
    let p = &doc["processes"][0];
    assert_eq!(p["pid"], server.pid());
    assert_eq!(p["generation"], "stale");
    assert!(p["evidence"].to_string().contains("_native.so"), "{p}");
}

#[test]
fn status_names_the_store_writer() {
    let sb = Sandbox::new();
    let writer = sb.server("w", &["--mode", "db-writer"]);
    // No server holds a pid file, so nothing is stale: exit 0.
    let doc = json_run(sb.upgrader().args(["status", "--json"]), 0);
    assert_eq!(doc["db_writer"], writer.pid(), "{doc}");
}

#[test]
fn stale_pid_files_are_removed_but_not_while_an_uninstall_holds_the_lifecycle_barrier() {
    let sb = Sandbox::new();
    let stale = sb.rt().join("server-00000000000000aa.pid");
    fs::write(&stale, "4242\n\n2026-11-26T11:32:39+00:00\n").unwrap();
    let barrier = common::FlockHolder::hold(&sb.rt().join("lifecycle.lock"));
    let doc = json_run(
        sb.upgrader().args(["-y", "--json", "--version", "0.6.12"]),
        0,
    );
    assert!(
        exists(&stale),
        "left alone while mm uninstall holds the barrier"
    );
    assert!(
        doc["warnings"].to_string().contains("mm uninstall"),
        "{doc}"
    );
    drop(barrier);
    // The next release (the same one again may be a no-op that touches nothing).
    let doc = json_run(
        sb.upgrader().args(["-y", "--json", "--version", "0.6.13"]),
        0,
    );
    assert_eq!(doc["version"], "0.6.13", "{doc}");
    assert!(!exists(&stale));
    assert_eq!(
        doc["killed"],
        serde_json::json!([]),
        "a stale file's pid is never signalled"
    );
}

/// `status`, `status --json` and the plan give one start time for one pid
/// (issue 12, point 5): the plan gave the pid file's stamp, status the
/// process table's time, and status moved by microseconds between runs.
#[test]
fn status_and_the_plan_give_one_start_time_per_pid() {
    let sb = Sandbox::new();
    sb.set_install_time(std::time::Duration::from_secs(5));
    let server = sb.server("s", &[]);
    let status = json_run(sb.upgrader().args(["status", "--json"]), 0);
    let plan = json_run(sb.upgrader().args(["--dry-run", "--json"]), 0);
    let started = status["processes"][0]["started"].as_str().unwrap();
    assert_eq!(status["processes"][0]["pid"], server.pid());
    assert_eq!(plan["processes"][0]["pid"], server.pid(), "{plan}");
    assert_eq!(plan["processes"][0]["started"], started, "{plan}\n{status}");
    for _ in 0..5 {
        let again = json_run(sb.upgrader().args(["status", "--json"]), 0);
        assert_eq!(again["processes"][0]["started"], started);
    }
    sb.upgrader()
        .arg("status")
        .assert()
        .code(0)
        .stdout(predicate::str::contains(format!("started {started}")));
}

/// `status` without memtomem in uv's tool directory says it is not
/// installed (it read "memtomem (unknown version) installed (unknown time)").
#[test]
fn status_says_memtomem_is_not_installed() {
    let sb = Sandbox::new();
    fs::remove_dir_all(sb.path("tools/memtomem")).unwrap();
    sb.upgrader()
        .arg("status")
        .assert()
        .code(0)
        .stdout(predicate::str::starts_with(format!(
            "memtomem is not installed (none in uv's tool directory {})\n",
            sb.path("tools").display()
        )));
}
