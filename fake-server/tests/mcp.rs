//! MCP over stdio: the handshake a client (or an upgrader's post-install check) sees, and
//! the MCP fault modes.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const SOON: Duration = Duration::from_secs(5);
/// Long enough to be sure no answer is coming.
const SILENCE: Duration = Duration::from_millis(500);

fn kinds(p: &Proc) -> Vec<String> {
    p.events()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn initialize_answer_has_the_real_shape_and_version() {
    let sb = Sandbox::new();
    let (mut p, mcp) = sb.spawn_mcp("s", &[]);
    p.ready();

    // The envelope's keys come in the real server's order.
    Mcp::send(&mut p, &initialize(1, "2025-06-18"));
    let raw = mcp.recv_raw(DEADLINE).expect("an answer to initialize");
    assert!(
        raw.starts_with(r#"{"jsonrpc":"2.0","id":1,"result":{"#),
        "{raw}"
    );
    let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        v["result"],
        json!({
            "protocolVersion": "2025-06-18",
            "capabilities": {
                "prompts": {"listChanged": false},
                "resources": {"subscribe": false, "listChanged": false},
                "tools": {"listChanged": false},
            },
            "serverInfo": {"name": "memtomem", "version": "0.6.12"},
            "instructions": "memtomem — fake-server double",
        })
    );
    assert_eq!(v.as_object().unwrap().len(), 3, "{v}");

    // The notification gets no answer: the next line answers the next request.
    Mcp::send(
        &mut p,
        &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    );
    let ping = mcp.request(&mut p, &rpc(2, "ping"));
    assert_eq!(ping, json!({"jsonrpc": "2.0", "id": 2, "result": {}}));

    let tools = mcp.request(&mut p, &rpc(3, "tools/list"));
    let list = tools["result"]["tools"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{tools}");
    assert_eq!(list[0]["name"], "mem_search");
    assert!(list[0]["description"].is_string());
    assert_eq!(
        list[0]["inputSchema"],
        json!({"type": "object", "properties": {}})
    );

    let unknown = mcp.request(
        &mut p,
        &json!({"jsonrpc": "2.0", "id": "u", "method": "bogus/x"}),
    );
    assert_eq!(
        unknown,
        json!({"jsonrpc": "2.0", "id": "u", "error": {"code": -32601, "message": "Method not found", "data": "bogus/x"}})
    );

    // What the real server does not answer, the fake does not answer either.
    Mcp::send(&mut p, &json!({"jsonrpc": "2.0", "id": 9}));
    let mut stdin = p.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, b"not json\n").unwrap();
    p.stdin = Some(stdin);
    let bad = mcp.request(
        &mut p,
        &json!({"jsonrpc": "2.0", "id": 10, "method": "initialize"}),
    );
    assert_eq!(
        bad["id"], 10,
        "not-JSON and a request without method: no answers"
    );
    assert_eq!(bad["error"]["code"], -32602);

    let ev = p.events();
    let handled: Vec<(String, String)> = ev
        .iter()
        .filter(|e| e["event"] == "mcp")
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["method"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("answered", "initialize"),
        ("notification", "notifications/initialized"),
        ("answered", "ping"),
        ("answered", "tools/list"),
        ("error", "bogus/x"),
        ("ignored", ""),
        ("ignored", ""),
        ("error", "initialize"),
    ]
    .iter()
    .map(|(a, m)| (a.to_string(), m.to_string()))
    .collect();
    assert_eq!(handled, want);
    let init = ev.iter().find(|e| e["event"] == "mcp").unwrap();
    assert_eq!(init["protocolVersion"], "2025-06-18");
    assert_eq!(init["id"], 1);
}

#[test]
fn protocol_version_is_echoed_when_known_else_the_newest() {
    let sb = Sandbox::new();
    let (mut p, mcp) = sb.spawn_mcp("s", &[]);
    // Requests written before the server is ready wait in the pipe.
    let asked = [
        ("2024-11-05", "2024-11-05"),
        ("2025-03-26", "2025-03-26"),
        ("2025-06-18", "2025-06-18"),
        ("2025-11-25", "2025-11-25"),
        ("2026-07-28", "2025-11-25"),
        ("1999-01-01", "2025-11-25"),
    ];
    for (i, (ask, _)) in asked.iter().enumerate() {
        Mcp::send(&mut p, &initialize(i as u64, ask));
    }
    for (i, (ask, got)) in asked.iter().enumerate() {
        let v = mcp.recv(DEADLINE).expect("an answer");
        assert_eq!(v["id"], i, "{v}");
        assert_eq!(v["result"]["protocolVersion"], *got, "asked {ask}");
    }
}

#[test]
fn server_version_flag_and_env() {
    let sb = Sandbox::new();
    let (mut p, mcp) = sb.spawn_mcp("flag", &["--server-version", "0.7.0"]);
    let v = mcp.request(&mut p, &initialize(1, "2025-06-18"));
    assert_eq!(
        v["result"]["serverInfo"],
        json!({"name": "memtomem", "version": "0.7.0"})
    );

    let (mut q, mcp) = sb.spawn_mcp_with("env", &[], |c| {
        c.env("FAKE_SERVER_VERSION", "0.6.99");
    });
    let v = mcp.request(&mut q, &initialize(1, "2025-06-18"));
    assert_eq!(v["result"]["serverInfo"]["version"], "0.6.99");
}

#[test]
fn eof_after_a_session_is_still_a_clean_shutdown() {
    let sb = Sandbox::new();
    let (mut p, mcp) = sb.spawn_mcp("s", &[]);
    let r = p.ready();
    let pid_file = ready_path(&r, "pid_file").unwrap();
    let marker = ready_path(&r, "presence").unwrap();
    mcp.request(&mut p, &initialize(1, "2025-06-18"));
    mcp.request(&mut p, &rpc(2, "ping"));
    // A last request in the same write as the EOF is still answered.
    Mcp::send(&mut p, &rpc(3, "ping"));
    p.close_stdin();
    assert_eq!(p.wait_exit(SOON).unwrap().code(), Some(0));
    assert_eq!(mcp.recv(SOON).unwrap()["id"], 3);
    assert!(!pid_file.exists() && !marker.exists());
    let last = p.events().last().unwrap().clone();
    assert_eq!(
        (last["how"].as_str(), last["cleaned"].as_bool()),
        (Some("stdin-eof"), Some(true))
    );
}

#[test]
fn no_stdin_reads_nothing_and_web_ignores_stdin() {
    let sb = Sandbox::new();
    for (tag, args) in [("n", &["--no-stdin"][..]), ("w", &["--web"][..])] {
        let (mut p, mcp) = sb.spawn_mcp(tag, args);
        p.ready();
        Mcp::send(&mut p, &rpc(1, "ping"));
        assert_eq!(mcp.recv(SILENCE), None, "{tag}");
        p.close_stdin();
        assert!(p.wait_exit(SILENCE).is_none(), "{tag}: EOF is not watched");
    }
}

#[test]
fn hang_initialize_never_answers_but_exits_on_eof() {
    let sb = Sandbox::new();
    let (mut p, mcp) = sb.spawn_mcp("s", &["--mode", "hang-initialize"]);
    let r = p.ready();
    // Before initialize, the server answers.
    assert_eq!(mcp.request(&mut p, &rpc(1, "ping"))["result"], json!({}));
    Mcp::send(&mut p, &initialize(2, "2025-06-18"));
    Mcp::send(&mut p, &rpc(3, "ping"));
    assert_eq!(mcp.recv(SILENCE), None);
    assert!(p.wait_exit(Duration::ZERO).is_none());
    let hung: Vec<_> = p
        .events()
        .into_iter()
        .filter(|e| e["action"] == "hang")
        .map(|e| e["method"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(hung, ["initialize", "ping"]);
    p.close_stdin();
    assert_eq!(p.wait_exit(SOON).unwrap().code(), Some(0));
    assert!(!ready_path(&r, "pid_file").unwrap().exists());
    assert!(!ready_path(&r, "presence").unwrap().exists());
    assert_eq!(p.events().last().unwrap()["how"], "stdin-eof");
}

#[test]
fn hang_initialize_still_exits_on_sigterm() {
    let sb = Sandbox::new();
    let (mut p, mcp) = sb.spawn_mcp("s", &["--mode", "hang-initialize"]);
    let r = p.ready();
    Mcp::send(&mut p, &initialize(1, "2025-06-18"));
    assert_eq!(mcp.recv(SILENCE), None);
    kill(p.pid(), libc::SIGTERM);
    assert_eq!(p.wait_exit(SOON).unwrap().code(), Some(0));
    assert!(!ready_path(&r, "pid_file").unwrap().exists());
    assert_eq!(p.events().last().unwrap()["how"], "sigterm-cleanup");
}

#[test]
fn crash_on_initialize_exits_1_after_the_atexit_cleanup() {
    let sb = Sandbox::new();
    let (mut p, mcp) = sb.spawn_mcp("s", &["--mode", "crash-on-initialize"]);
    let r = p.ready();
    let pid_file = ready_path(&r, "pid_file").unwrap();
    let marker = ready_path(&r, "presence").unwrap();
    assert_eq!(mcp.request(&mut p, &rpc(1, "ping"))["id"], 1);
    Mcp::send(&mut p, &initialize(2, "2025-06-18"));
    assert_eq!(p.wait_exit(SOON).unwrap().code(), Some(1));
    assert_eq!(mcp.recv(SILENCE), None, "no answer to initialize");
    assert!(p.stderr_text().contains("Traceback"), "{}", p.stderr_text());
    assert!(!pid_file.exists() && !marker.exists());
    let ev = p.events();
    let last = ev.last().unwrap();
    assert_eq!(last["event"], "exit");
    assert_eq!(last["how"], "crash-on-initialize");
    assert_eq!(
        (last["code"].as_i64(), last["cleaned"].as_bool()),
        (Some(1), Some(true))
    );
    assert!(ev
        .iter()
        .any(|e| e["event"] == "mcp" && e["action"] == "crash" && e["id"] == 2));
}

#[test]
fn slow_start_delays_everything_and_sigterm_meanwhile_leaves_nothing() {
    const MS: u64 = 600;
    let sb = Sandbox::new();
    let t0 = Instant::now();
    let (mut p, mcp) = sb.spawn_mcp("s", &["--mode", &format!("slow-start={MS}")]);
    Mcp::send(&mut p, &initialize(1, "2025-06-18"));
    std::thread::sleep(Duration::from_millis(150));
    assert!(!p.ready.exists(), "ready while still importing");
    assert!(!sb.rt.exists(), "runtime dir made while still importing");
    let v = mcp.request(&mut p, &rpc(2, "ping"));
    assert_eq!(v["id"], 1, "the queued initialize is answered first");
    assert!(
        t0.elapsed() >= Duration::from_millis(MS),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(mcp.recv(DEADLINE).unwrap()["id"], 2);
    let k = kinds(&p);
    assert_eq!(&k[..2], ["slow-start", "start"], "{k:?}");
    let ev = p.events();
    assert_eq!(ev[0]["ms"], MS);

    // SIGTERM during the imports: default action, nothing to clean up.
    use std::os::unix::process::ExitStatusExt;
    let sb = Sandbox::new();
    let (mut q, _mcp) = sb.spawn_mcp("t", &["--mode", "slow-start=5000"]);
    assert!(wait_until(SOON, || kinds(&q).first().map(String::as_str)
        == Some("slow-start")));
    kill(q.pid(), libc::SIGTERM);
    assert_eq!(q.wait_exit(SOON).unwrap().signal(), Some(libc::SIGTERM));
    assert!(!sb.rt.exists());
}
