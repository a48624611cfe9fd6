//! fake-host, the respawning MCP client double: sessions and their versions, respawn at
//! once, initialize timeouts, and a clean stop that takes its server with it.

mod common;

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

const HOST: &str = env!("CARGO_BIN_EXE_fake-host");

/// Starts fake-host in its own process group (the guard kills it and its servers) with
/// `--log`, `--ready-file` and the given flags, then `--` and the server command.
fn host(sb: &Sandbox, tag: &str, flags: &[&str], server: &[&str]) -> Proc {
    let ready = sb.path(&format!("{tag}.ready"));
    let log = sb.path(&format!("{tag}.log"));
    let stderr = sb.path(&format!("{tag}.stderr"));
    let mut c = Command::new(HOST);
    c.arg("--log")
        .arg(&log)
        .arg("--ready-file")
        .arg(&ready)
        .args(flags)
        .arg("--")
        .args(server)
        .env("HOME", &sb.home)
        .env_remove("FAKE_SERVER_EVENTS")
        .env_remove("FAKE_SERVER_RUNTIME_DIR")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(File::create(&stderr).unwrap())
        .process_group(0);
    Proc::start(c, ready, log, stderr)
}

/// A fake-server in the sandbox's runtime dir, as a host's server command.
fn server_cmd<'a>(sb: &'a Sandbox, events: &'a str, extra: &[&'a str]) -> Vec<String> {
    let mut v = vec![
        BIN.to_string(),
        "--runtime-dir".into(),
        sb.rt.display().to_string(),
        "--events".into(),
        sb.path(events).display().to_string(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn of(log: &[Value], event: &str) -> Vec<Value> {
    log.iter()
        .filter(|e| e["event"] == event)
        .cloned()
        .collect()
}

fn wait_for_log(p: &Proc, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let mut last = vec![];
    let ok = wait_until(DEADLINE, || {
        last = p.events();
        pred(&last)
    });
    assert!(
        ok,
        "log never got there: {last:#?}\nstderr: {}",
        p.stderr_text()
    );
    last
}

#[test]
fn a_session_reports_the_server_version_pings_and_stdin_eof_stops_host_and_server() {
    let sb = Sandbox::new();
    let cmd = server_cmd(&sb, "server.events", &["--server-version", "0.6.11"]);
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    // A generous stop grace: on a loaded machine the server's clean exit may take a while,
    // and this test wants to see it (not the SIGKILL after the grace).
    let mut h = host(
        &sb,
        "h",
        &["--ping-ms", "10", "--stop-grace-ms", "5000"],
        &cmd,
    );
    let ready = h.ready();
    assert_eq!(ready["version"], "0.6.11");
    assert_eq!(ready["session"], 1);
    let server = ready["pid"].as_i64().unwrap() as i32;
    assert_eq!(ready["pids"][0].as_i64().unwrap() as i32, h.pid());

    // The server saw the whole handshake, then pings.
    let events = sb.path("server.events");
    assert!(wait_until(DEADLINE, || {
        read_events(&events)
            .iter()
            .filter(|e| e["event"] == "mcp" && e["method"] == "ping")
            .count()
            >= 3
    }));
    let methods: Vec<String> = read_events(&events)
        .iter()
        .filter(|e| e["event"] == "mcp")
        .map(|e| e["method"].as_str().unwrap_or("").to_string())
        .take(3)
        .collect();
    assert_eq!(methods, ["initialize", "notifications/initialized", "ping"]);

    let log = h.events();
    let s = &of(&log, "session")[0];
    assert_eq!(s["server"].as_i64().unwrap() as i32, server);
    assert_eq!(s["name"], "memtomem");
    assert_eq!(s["protocolVersion"], "2025-06-18");
    assert!(s["mono_ns"].as_u64().unwrap() >= s["spawned_mono_ns"].as_u64().unwrap());

    h.close_stdin();
    let st = h.wait_exit(DEADLINE).expect("the host exits on stdin EOF");
    assert_eq!(st.code(), Some(0));
    assert!(!alive(server), "the host's server is gone with it");
    let log = h.events();
    let kinds: Vec<&str> = log.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(kinds, ["start", "spawn", "session", "stop", "died", "exit"]);
    let died = &of(&log, "died")[0];
    assert_eq!(died["stopped"], true);
    assert_eq!(
        died["status"], "exited(0)",
        "the server shut down on its EOF"
    );
    assert!(died["pings"].as_u64().unwrap() >= 3, "{died}");
    assert_eq!(of(&log, "stop")[0]["reason"], "stdin-eof");
}

#[test]
fn a_dead_server_is_started_again_at_once_and_the_new_session_reports_its_version() {
    let sb = Sandbox::new();
    let version = sb.path("version");
    std::fs::write(&version, "0.6.11").unwrap();
    // The version is read at each start, as an entry point resolves the installed env.
    let script = format!(
        "exec {BIN} --runtime-dir {} --server-version \"$(cat {})\"",
        sb.rt.display(),
        version.display()
    );
    let mut h = host(&sb, "h", &[], &["/bin/sh", "-c", &script]);
    let first = h.ready();
    assert_eq!(first["version"], "0.6.11");
    let old = first["pid"].as_i64().unwrap() as i32;

    std::fs::write(&version, "0.6.12").unwrap();
    kill(old, libc::SIGTERM);
    let second = h.ready_where(|v| v["session"] == 2);
    assert_eq!(second["version"], "0.6.12");
    assert_ne!(second["pid"].as_i64().unwrap() as i32, old);

    let log = h.events();
    let died = &of(&log, "died")[0];
    assert_eq!(died["server"].as_i64().unwrap() as i32, old);
    assert_eq!(died["status"], "exited(0)");
    assert_eq!(died["version"], "0.6.11");
    let spawn2 = &of(&log, "spawn")[1];
    let session2 = &of(&log, "session")[1];
    let mono = |v: &Value| v["mono_ns"].as_u64().unwrap();
    // Monotonic stamps in order: the death, the respawn, the new session.
    assert!(mono(died) <= mono(spawn2) && mono(spawn2) <= mono(session2));
    let gap_ms = (mono(session2) - mono(died)) as f64 / 1e6;
    eprintln!("death -> new session: {gap_ms:.2} ms");
}

#[test]
fn sigterm_stops_the_host_and_kills_a_server_that_ignores_its_eof() {
    let sb = Sandbox::new();
    // `sleep` never reads stdin and never answers: closing its stdin does not stop it.
    let mut h = host(
        &sb,
        "h",
        &["--stop-grace-ms", "20", "--init-timeout-ms", "60000"],
        &["sleep", "300"],
    );
    let log = wait_for_log(&h, |l| !of(l, "spawn").is_empty());
    let server = of(&log, "spawn")[0]["server"].as_i64().unwrap() as i32;
    assert!(alive(server));
    kill(h.pid(), libc::SIGTERM);
    let st = h.wait_exit(DEADLINE).expect("the host exits on SIGTERM");
    assert_eq!(st.code(), Some(0));
    assert!(!alive(server), "the host killed and reaped its server");
    let log = h.events();
    assert_eq!(of(&log, "stop")[0]["reason"], "SIGTERM");
    let died = &of(&log, "died")[0];
    assert_eq!(died["status"], "killed(SIGKILL)");
    assert!(died["version"].is_null(), "no session: {died}");
}

#[test]
fn an_unanswered_initialize_is_killed_and_retried_until_max_spawns() {
    let sb = Sandbox::new();
    let cmd = server_cmd(&sb, "server.events", &["--mode", "hang-initialize"]);
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let h = host(
        &sb,
        "h",
        &["--init-timeout-ms", "100", "--max-spawns", "2"],
        &cmd,
    );
    let log = wait_for_log(&h, |l| !of(l, "gave-up").is_empty());
    assert_eq!(of(&log, "init-timeout").len(), 2);
    assert!(of(&log, "session").is_empty());
    let died = of(&log, "died");
    assert_eq!(died.len(), 2);
    assert!(died.iter().all(|d| d["status"] == "killed(SIGKILL)"));
    assert_eq!(of(&log, "gave-up")[0]["spawns"], 2);
    assert!(alive(h.pid()), "a host that gave up keeps running");
    assert!(!Path::new(&sb.path("h.ready")).exists());
}

#[test]
fn a_command_that_cannot_start_is_retried_and_counted() {
    let sb = Sandbox::new();
    let missing = sb.path("bin/memtomem-server");
    let h = host(
        &sb,
        "h",
        &["--max-spawns", "3"],
        &[missing.to_str().unwrap()],
    );
    let log = wait_for_log(&h, |l| !of(l, "gave-up").is_empty());
    assert_eq!(of(&log, "spawn-failed").len(), 3);
    assert!(of(&log, "spawn").is_empty());
}
