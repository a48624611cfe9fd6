//! Issue 12's "done when", against the real memtomem: a session of the
//! official MCP Python SDK client (tests/real_hosts/session.py: `stdio_client`
//! and `ClientSession`, a host that does not respawn its server) runs memtomem
//! 0.6.11's `memtomem-server`; `status` names it as that server's host, and
//! the upgrade to 0.6.12 names it as the host that lost its server, with the
//! next step (words and `--json`'s `clients`).
//!
//! As tests/real_memtomem.rs: a scratch HOME and uv tool dirs with memtomem
//! installed by real uv from the warm cache (`scripts/memtomem-env.sh`), and a
//! runtime dir of the test's own (0700; memtomem's hook
//! `_MEMTOMEM_TEST_RUNTIME_DIR` with `PYTEST_CURRENT_TEST`, mm-upgrade's
//! `--runtime-dir`), so `/tmp/memtomem-<uid>` is never touched. The client
//! (and the server, which the SDK may start in a session of its own) is
//! SIGKILLed and reaped on drop, panics included. Readiness is the client's
//! log line and the server's locked pid file, polled with a deadline.
#![cfg(feature = "real-memtomem")]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

#[path = "common/scratch.rs"]
mod scratch;
#[path = "common/testenv.rs"]
mod testenv;
use scratch::{Run, Scratch};

const OLD: &str = "0.6.11";
const NEW: &str = "0.6.12";
const DEADLINE: Duration = Duration::from_secs(60);

/// An MCP SDK client session on the scratch installation's server, in a
/// runtime dir of its own.
struct Session {
    child: Child,
    log: PathBuf,
    rt: PathBuf,
    /// The server, once the client logged it.
    server: Option<i32>,
}

impl Session {
    fn start(sc: &Scratch, test: &str) -> Session {
        let rt = sc.path("rt");
        fs::create_dir_all(&rt).unwrap();
        fs::set_permissions(&rt, fs::Permissions::from_mode(0o700)).unwrap();
        let log = sc.path("session.jsonl");
        let script = scratch::repo().join("tests/real_hosts/session.py");
        // The SDK lives in memtomem's own environment (it depends on `mcp`).
        let python = sc.env_dir().join("bin/python3");
        let mut c = Command::new(&python);
        sc.env(&mut c);
        c.arg(&script)
            .arg(&log)
            .arg(sc.server_bin())
            .env("_MEMTOMEM_TEST_RUNTIME_DIR", &rt)
            .env("PYTEST_CURRENT_TEST", test)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(sc.path("session.stderr")).unwrap())
            .process_group(0);
        let mut s = Session {
            child: c.spawn().expect("start the MCP SDK client"),
            log,
            rt,
            server: None,
        };
        let pid = s.wait_event("initialized", sc)["pid"]
            .as_i64()
            .expect("the client names its server") as i32;
        s.server = Some(pid);
        s
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn events(&self) -> Vec<Value> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn wait_event(&mut self, kind: &str, sc: &Scratch) -> Value {
        let mut found = None;
        let ok = testkit::wait_until(DEADLINE, || {
            let events = self.events();
            found = events.iter().find(|e| e["event"] == kind).cloned();
            found.is_some()
                || events.iter().any(|e| e["event"] == "session-ended")
                || self.child.try_wait().ok().flatten().is_some()
        });
        found.unwrap_or_else(|| {
            panic!(
                "the client logged no {kind} (within the deadline: {ok}): {:?}\n{}",
                self.events(),
                fs::read_to_string(sc.path("session.stderr")).unwrap_or_default()
            )
        })
    }

    /// Until the server holds the lock of a pid file naming it.
    fn wait_registered(&self) -> PathBuf {
        let pid = self.server.unwrap();
        let mut file = None;
        testkit::wait_for("the server's locked pid file", DEADLINE, || {
            file = registered(&self.rt, pid);
            file.is_some()
        });
        file.unwrap()
    }

    fn upgrade(&self, sc: &Scratch, args: &[&str]) -> Run {
        let rt = self.rt.display().to_string();
        let mut all = vec!["--runtime-dir", &rt];
        all.extend_from_slice(args);
        sc.upgrade(&all)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        testkit::kill_group(self.pid(), libc::SIGKILL);
        // The SDK may have put its server in a session of its own.
        if let Some(pid) = self.server.filter(|p| *p > 1) {
            if testkit::proc::running(pid) {
                // SAFETY: the server this test's client started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = self.child.wait();
    }
}

/// The pid file in `rt` that names `pid` and is locked.
fn registered(rt: &Path, pid: i32) -> Option<PathBuf> {
    fs::read_dir(rt)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("server")
                && name.ends_with(".pid")
                && fs::read_to_string(p)
                    .ok()
                    .and_then(|t| t.split_whitespace().next()?.parse::<i32>().ok())
                    == Some(pid)
                && testkit::flock::is_locked(p)
        })
}

fn client_command(c: &Value) -> String {
    c["command"].as_str().unwrap_or_default().to_string()
}

#[test]
fn the_sdk_client_is_named_as_the_host_that_lost_its_server() {
    let sc = Scratch::with(OLD);
    let mut session = Session::start(
        &sc,
        "the_sdk_client_is_named_as_the_host_that_lost_its_server",
    );
    session.wait_registered();
    let server = session.server.unwrap();

    // status: the server is the client's.
    let status = session.upgrade(&sc, &["status", "--json"]);
    let doc = status.json();
    let p = doc["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == server)
        .unwrap_or_else(|| panic!("status lists no {server}: {status}"));
    assert_eq!(p["client"]["pid"], session.pid(), "{status}");
    assert_eq!(p["client"]["host"], "mcp-client", "{status}");
    assert_eq!(p["orphan"], false);
    let words = session.upgrade(&sc, &["status"]);
    println!("{words}");
    assert!(
        words.stdout.contains(&format!(
            "launched by an MCP client (pid {}, python3 session.py)",
            session.pid()
        )),
        "{words}"
    );

    // The upgrade stops it and names the client as the host that lost it.
    let run = session.upgrade(&sc, &["-y", "--json", "--version", NEW]);
    let doc = run.expect(0).json();
    assert_eq!(doc["killed"], serde_json::json!([server]), "{run}");
    let clients = doc["clients"].as_array().expect("clients");
    assert_eq!(clients.len(), 1, "{run}");
    let c = &clients[0];
    assert_eq!(c["pid"], session.pid(), "{run}");
    assert_eq!(c["host"], "mcp-client");
    assert_eq!(client_command(c), "python3 session.py", "{run}");
    assert_eq!(c["servers"], serde_json::json!([server]));
    assert_eq!(c["respawned"], Value::Null, "it does not respawn: {run}");
    assert!(
        c["next_step"]
            .as_str()
            .unwrap_or_default()
            .contains("reconnect"),
        "{run}"
    );
    // The client saw its server die and did not start it again.
    let died = session.wait_event("died", &sc);
    assert_eq!(died["pid"], server);
    assert_eq!(sc.installed_versions(), vec![NEW.to_string()]);
}

/// The same in words, for README: the report says who lost which server.
#[test]
fn the_upgrade_says_in_words_which_host_lost_its_server() {
    let sc = Scratch::with(OLD);
    let mut session = Session::start(&sc, "the_upgrade_says_in_words_which_host_lost_its_server");
    session.wait_registered();
    let server = session.server.unwrap();
    let run = session.upgrade(&sc, &["-y", "--version", NEW]);
    println!("{run}");
    run.expect(0);
    let want = format!(
        "an MCP client (pid {}, python3 session.py) lost server {server}: restart or reconnect",
        session.pid()
    );
    assert!(run.stdout.contains(&want), "{run}");
    assert!(run.stdout.contains(&format!("{OLD} → {NEW}")), "{run}");
    session.wait_event("died", &sc);
}
