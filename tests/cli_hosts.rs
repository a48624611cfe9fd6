//! The hosts of the servers (issue 12, point 1): the upgrade names the process
//! that launched each stopped server and what to do next, or that it already
//! runs the new version; `status` names each process's host, orphans and
//! duplicates. With fake-server, fake-host and fake-uv; each test in its own
//! sandbox.

mod common;
#[path = "common/hosts.rs"]
mod hosts;

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use common::{fake_server_bin, json_run, Sandbox};
use serde_json::{json, Value};

/// A process group this test started: SIGKILLed and its leader reaped on
/// drop, panics included.
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        testkit::kill_group(self.0.id() as i32, libc::SIGKILL);
        let _ = self.0.wait();
    }
}

fn read_json(p: &std::path::Path) -> Option<Value> {
    serde_json::from_str(&fs::read_to_string(p).ok()?).ok()
}

/// The name the process table gives this test binary.
fn own_command() -> String {
    let exe = std::env::args().next().unwrap();
    exe.rsplit('/').next().unwrap().to_string()
}

/// A fake server launched the way an MCP client often does it, through
/// `sh -c` (a shell that stays its parent), from this test process.
fn server_through_sh(sb: &Sandbox) -> (Owned, i32) {
    let ready = sb.path("sh-server.ready");
    let mut sh = Command::new("/bin/sh");
    // Not `exec`: the shell stays the server's parent, as with `sh -c "a; b"`.
    sh.args(["-c", "\"$0\" \"$@\"; exit $?"]);
    let child = hosts::fake_server_cmd(sh, sb, &ready).spawn().unwrap();
    let owned = Owned(child);
    common::wait_for("the server under sh -c is ready", || ready.exists());
    let pid = read_json(&ready).unwrap()["pid"].as_i64().unwrap() as i32;
    assert_eq!(
        testkit::proc::stat(pid).unwrap().ppid,
        owned.0.id() as i32,
        "the shell is the server's parent"
    );
    (owned, pid)
}

#[test]
fn the_launching_client_is_named_past_its_shell_with_a_next_step() {
    let sb = Sandbox::new();
    let (_sh, server) = server_through_sh(&sb);
    let doc = json_run(
        sb.upgrader().args(["-y", "--json", "--version", "0.6.12"]),
        0,
    );
    assert_eq!(doc["killed"], json!([server]), "{doc}");
    let clients = doc["clients"].as_array().expect("a clients list");
    assert_eq!(clients.len(), 1, "{doc}");
    let c = &clients[0];
    assert_eq!(c["pid"], std::process::id(), "{c}");
    assert_eq!(c["host"], "mcp-client");
    assert_eq!(c["command"], own_command());
    assert_eq!(c["servers"], json!([server]));
    assert_eq!(c["respawned"], Value::Null);
    assert!(
        c["next_step"].as_str().unwrap().contains("reconnect"),
        "{c}"
    );
}

#[test]
fn the_report_says_in_words_who_lost_which_server() {
    let sb = Sandbox::new();
    let (_sh, server) = server_through_sh(&sb);
    let text = hosts::text_run(sb.upgrader().args(["-y", "--version", "0.6.12"]), 0);
    let want = format!(
        "an MCP client (pid {}, {}) lost server {server}: restart or reconnect",
        std::process::id(),
        own_command()
    );
    assert!(text.contains("The hosts of the stopped servers:"), "{text}");
    assert!(text.contains(&want), "{text}");
}

#[test]
fn the_plan_names_the_host_and_the_dry_run_lists_the_clients() {
    let sb = Sandbox::new();
    let (_sh, server) = server_through_sh(&sb);
    let doc = json_run(
        sb.upgrader()
            .args(["--dry-run", "--json", "--version", "0.6.12"]),
        0,
    );
    assert_eq!(doc["clients"][0]["servers"], json!([server]), "{doc}");
    assert_eq!(doc["clients"][0]["pid"], std::process::id());
    let text = hosts::text_run(sb.upgrader().args(["--dry-run", "--version", "0.6.12"]), 0);
    let want = format!(
        "launched by an MCP client (pid {}, {}) via sh",
        std::process::id(),
        own_command()
    );
    assert!(text.contains(&want), "{text}");
}

/// fake-host (run as `program`, a link to it: hosts are recognised by name)
/// on the sandbox's `bin/memtomem-server` (fake-server through fake-uv's
/// entry script), with `args`; returns once its first session is on 0.6.11,
/// with the host and its first server's pid.
fn fake_host(sb: &Sandbox, program: &str, args: &[&str]) -> (Owned, PathBuf, i64) {
    let host_bin: PathBuf = fake_server_bin().with_file_name("fake-host");
    assert!(host_bin.exists(), "build fake-host first");
    let link = sb.path(program);
    if link != host_bin {
        std::os::unix::fs::symlink(&host_bin, &link).unwrap();
    }
    let ready = sb.path("host.ready");
    let host = Owned(
        Command::new(&link)
            .arg("--log")
            .arg(sb.path("host.log"))
            .arg("--ready-file")
            .arg(&ready)
            .args(["--ping-ms", "20"])
            .args(args)
            .arg("--")
            .arg(sb.path("bin/memtomem-server"))
            .env("HOME", sb.path("home"))
            .env("FAKE_SERVER_RUNTIME_DIR", sb.rt())
            .env_remove("MEMTOMEM_STORAGE__SQLITE_PATH")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    common::wait_for("the host's first session", || {
        read_json(&ready).is_some_and(|r| r["version"] == "0.6.11")
    });
    let first = read_json(&ready).unwrap()["pid"].as_i64().unwrap();
    (host, ready, first)
}

/// A host that starts its server again at once whenever it dies.
#[test]
fn a_host_that_respawned_on_the_new_version_is_told_to_do_nothing() {
    let sb = Sandbox::new();
    let (host, ready, first) = fake_host(&sb, "fake-host", &[]);
    let host_pid = host.0.id() as i32;
    let doc = json_run(
        sb.upgrader()
            .args(["-y", "--json", "--grace", "1", "--version", "0.6.12"]),
        0,
    );
    assert!(
        doc["killed"].as_array().unwrap().contains(&json!(first)),
        "{doc}"
    );
    let clients = doc["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 1, "{doc}");
    let c = &clients[0];
    assert_eq!(c["pid"], host_pid, "{c}");
    assert_eq!(c["command"], "fake-host");
    assert_eq!(c["next_step"], Value::Null, "{c}");
    let again = c["respawned"]["pid"].as_i64().expect("respawned");
    assert_eq!(c["respawned"]["version"], "0.6.12");
    // The host itself says the same: its server is that pid, on 0.6.12.
    common::wait_for("the host's session on the respawned server", || {
        read_json(&ready).is_some_and(|r| r["pid"] == again && r["version"] == "0.6.12")
    });
    drop(host);
}

/// A host named `claude` is Claude Code; one that does not start its server
/// again is told how to reconnect it there.
#[test]
fn claude_code_that_lost_its_server_is_told_to_reconnect_with_mcp() {
    let sb = Sandbox::new();
    let (host, _ready, first) = fake_host(&sb, "claude", &["--max-spawns", "1"]);
    let doc = json_run(
        sb.upgrader().args(["-y", "--json", "--version", "0.6.12"]),
        0,
    );
    let c = &doc["clients"][0];
    assert_eq!(c["pid"], host.0.id(), "{doc}");
    assert_eq!(c["host"], "claude-code");
    assert_eq!(c["name"], "Claude Code");
    assert_eq!(c["command"], "claude");
    assert_eq!(c["servers"], json!([first]));
    assert_eq!(c["respawned"], Value::Null);
    assert_eq!(
        c["next_step"],
        "run `/mcp` in Claude Code and reconnect memtomem"
    );
}

#[test]
fn status_names_each_servers_host_and_flags_duplicates() {
    let sb = Sandbox::new();
    // Installed before the servers start: they are current, status exits 0.
    sb.set_install_time(std::time::Duration::from_secs(5));
    let many = sb.server("many", &["--mode", "many=3"]);
    let pids: Vec<i64> = many.info["pids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_i64)
        .collect();
    let (launcher, servers) = (pids[0], &pids[1..]);
    assert_eq!(servers.len(), 3, "{}", many.info);
    let doc = json_run(sb.upgrader().args(["status", "--json"]), 0);
    for p in doc["processes"].as_array().unwrap() {
        assert_eq!(p["client"]["pid"], launcher, "{p}");
        assert_eq!(p["client"]["host"], "mcp-client");
        assert_eq!(p["orphan"], false);
    }
    assert_eq!(doc["clients"].as_array().unwrap().len(), 1, "{doc}");
    let mut listed: Vec<i64> = doc["clients"][0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_i64)
        .collect();
    listed.sort();
    let mut want = servers.to_vec();
    want.sort();
    assert_eq!(listed, want);
    let dups = doc["duplicates"].as_array().unwrap();
    let kinds: Vec<&str> = dups.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["host", "store"], "{doc}");
    assert_eq!(dups[0]["key"], launcher.to_string());
    assert_eq!(dups[1]["pids"].as_array().unwrap().len(), 3, "{doc}");
    assert_eq!(doc["orphans"], json!([]));
    let out = sb.upgrader().arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "launched by an MCP client (pid {launcher}, fake-server)"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "Duplicate: an MCP client (pid {launcher}, fake-server) runs 3 memtomem servers"
        )),
        "{text}"
    );
}

#[test]
fn status_flags_an_orphan_whose_host_is_gone() {
    let sb = Sandbox::new();
    sb.set_install_time(std::time::Duration::from_secs(5));
    let orphan = hosts::Orphan::start(&sb, "o");
    let pid = orphan.pid();
    let doc = json_run(sb.upgrader().args(["status", "--json"]), 0);
    let p = &doc["processes"][0];
    assert_eq!(p["pid"], pid, "{doc}");
    assert_eq!(p["orphan"], true, "{p}");
    assert_eq!(p["client"]["host"], "gone", "{p}");
    assert_eq!(doc["orphans"], json!([pid]));
    let out = sb.upgrader().arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("orphan: its host is gone"), "{text}");
    assert!(text.contains("`mm-upgrade reap` stops them"), "{text}");
    assert!(common::alive(pid), "status signals nothing");
}
