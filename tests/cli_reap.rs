//! `mm-upgrade reap` (issue 12, point 3): the orphans (servers whose host is
//! gone) are stopped with the upgrade's proofs and stop engine, a plan first,
//! a prompt or `-y`, `--dry-run`, `--json`; a server with a host is never
//! touched. fake-server's `orphan` and `many=N` modes; each test in its own
//! sandbox.

mod common;
#[path = "common/hosts.rs"]
mod hosts;

use common::{exists, json_run, Sandbox};
use serde_json::json;

#[test]
fn reap_stops_the_orphan_and_leaves_a_server_with_a_host_alone() {
    let sb = Sandbox::new();
    let orphan = hosts::Orphan::start(&sb, "orphan");
    let hosted = sb.server("hosted", &["--store", "/tmp/another-store.db"]);
    let doc = json_run(sb.upgrader().args(["reap", "-y", "--json"]), 0);
    assert_eq!(doc["ok"], true, "{doc}");
    assert_eq!(doc["killed"], json!([orphan.pid()]), "{doc}");
    assert_eq!(doc["orphans"][0]["pid"], orphan.pid());
    assert_eq!(doc["stops"][0]["signals"], json!(["SIGTERM"]));
    assert!(!orphan.alive(), "the orphan was stopped");
    assert!(!exists(&orphan.pid_file()), "its pid file is gone");
    assert!(hosted.alive(), "a server whose host lives is not an orphan");
    assert!(exists(&hosted.pid_file()));
    assert_eq!(doc["exit_code"], 0);
}

#[test]
fn reap_dry_run_shows_the_plan_and_changes_nothing() {
    let sb = Sandbox::new();
    let orphan = hosts::Orphan::start(&sb, "orphan");
    let doc = json_run(sb.upgrader().args(["reap", "--dry-run", "--json"]), 0);
    assert_eq!(doc["dry_run"], true);
    assert_eq!(doc["would_kill"], json!([orphan.pid()]), "{doc}");
    let text = hosts::text_run(sb.upgrader().args(["reap", "--dry-run"]), 0);
    assert!(
        text.contains(&format!("Stop orphaned server (pid {}", orphan.pid())),
        "{text}"
    );
    assert!(text.contains("orphan: its host is gone"), "{text}");
    // The proof, as the upgrade's plan shows it; no advice to run reap.
    assert!(
        text.contains(&format!(
            "evidence: pid {} holds the flock on {}",
            orphan.pid(),
            orphan.pid_file().display()
        )),
        "{text}"
    );
    assert!(!text.contains("`mm-upgrade reap` stops it"), "{text}");
    assert!(orphan.alive());
    assert!(exists(&orphan.pid_file()));
}

#[test]
fn reap_without_confirmation_off_a_terminal_is_refused() {
    let sb = Sandbox::new();
    let orphan = hosts::Orphan::start(&sb, "orphan");
    let doc = json_run(sb.upgrader().args(["reap", "--json"]), 3);
    assert_eq!(doc["ok"], false);
    assert!(doc["error"].as_str().unwrap().contains("Pass -y"), "{doc}");
    assert!(orphan.alive());
}

#[test]
fn reap_leaves_many_servers_of_a_live_host_alone() {
    let sb = Sandbox::new();
    let many = sb.server("many", &["--mode", "many=3"]);
    let text = hosts::text_run(sb.upgrader().args(["reap", "-y"]), 0);
    assert!(text.contains("No orphaned memtomem server"), "{text}");
    for pid in many.info["pids"].as_array().unwrap() {
        assert!(common::alive(pid.as_i64().unwrap() as i32), "{pid}");
    }
}

#[test]
fn reap_flags_are_its_own_and_upgrade_flags_are_refused() {
    let sb = Sandbox::new();
    sb.upgrader()
        .args(["reap", "--version", "0.6.12"])
        .assert()
        .code(2);
    sb.upgrader()
        .args(["reap", "--grace", "-1"])
        .assert()
        .code(2);
}

#[test]
fn reap_beside_another_run_is_refused_and_stops_nothing() {
    let sb = Sandbox::new();
    let orphan = hosts::Orphan::start(&sb, "orphan");
    // uv's tool lock, as an upgrade or a `uv tool` command holds it.
    let _held = common::FlockHolder::hold(&sb.path("tools/.lock"));
    let doc = json_run(sb.upgrader().args(["reap", "-y", "--json"]), 3);
    assert!(
        doc["error"].as_str().unwrap().contains("tools/.lock"),
        "{doc}"
    );
    assert!(orphan.alive());
    // A dry run changes nothing, so it does not need the lock.
    json_run(sb.upgrader().args(["reap", "--dry-run", "--json"]), 0);
}

/// Status promises reap only for what reap stops: of an orphaned host's
/// many=3 servers, reap proves and stops the pid-file holder; the two
/// secondaries (nothing proves them ours) are left, and status says so
/// (it said "`mm-upgrade reap` stops them" of all three).
#[test]
fn status_promises_reap_only_for_the_orphans_it_stops() {
    let sb = Sandbox::new();
    sb.set_install_time(std::time::Duration::from_secs(5));
    let orphan = hosts::Orphan::start_with(&sb, "orphan", &["--mode", "many=3"]);
    let status = json_run(sb.upgrader().args(["status", "--json"]), 0);
    let secondaries: Vec<i32> = status["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["role"] == "secondary")
        .map(|p| p["pid"].as_i64().unwrap() as i32)
        .collect();
    assert_eq!(secondaries.len(), 2, "{status}");
    assert_eq!(status["orphans"].as_array().unwrap().len(), 3, "{status}");
    let text = hosts::text_run(sb.upgrader().arg("status"), 0);
    assert!(
        text.contains(&format!(
            "3 orphan(s) (their host is gone, nothing will reconnect them): `mm-upgrade reap` stops 1 of them ({})",
            orphan.pid()
        )),
        "{text}"
    );
    assert_eq!(
        text.matches("`mm-upgrade reap` leaves it: stop it by hand")
            .count(),
        2,
        "{text}"
    );
    assert_eq!(
        text.matches("`mm-upgrade reap` stops it").count(),
        1,
        "{text}"
    );
    let doc = json_run(sb.upgrader().args(["reap", "-y", "--json"]), 0);
    assert_eq!(doc["killed"], json!([orphan.pid()]), "{doc}");
    for pid in secondaries {
        assert!(common::alive(pid), "secondary {pid} was left alone");
    }
}
