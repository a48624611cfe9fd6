//! What servers look like in the field: launch shapes (`--argv-shape`), a server whose
//! parent is gone (`orphan`), many servers of one host (`many=N`), and the wiki commit
//! lock (`wiki-lock`).

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::{json, Value};

fn pid_of(v: &Value) -> i32 {
    v["pid"].as_i64().unwrap() as i32
}

/// Linux only: macOS cannot rename a process (fake-server's `set_comm`).
#[cfg(target_os = "linux")]
fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap()
        .trim_end()
        .to_string()
}

fn ppid(pid: i32) -> i32 {
    testkit::proc::stat(pid).unwrap().ppid
}

/// Alive and not a zombie (an orphan's zombie is reaped by whoever adopted it).
use testkit::proc::{argv as cmdline, running};

#[test]
fn argv_shapes_look_like_the_field_and_still_serve() {
    let py = "/opt/tools/memtomem/bin/python3.12";
    let cases: [(&str, &[&str], &str); 5] = [
        (
            "entry-point",
            &[py, "/opt/tools/memtomem/bin/memtomem-server"],
            "memtomem-server",
        ),
        ("python-m", &[py, "-m", "memtomem.server"], "python3.12"),
        (
            "serve",
            &[py, "/opt/tools/memtomem/bin/memtomem", "serve"],
            "memtomem",
        ),
        (
            "uvx",
            &[py, "/opt/tools/memtomem/bin/memtomem-server"],
            "memtomem-server",
        ),
        (
            "uv-run",
            &[py, "/opt/tools/memtomem/bin/memtomem-server"],
            "memtomem-server",
        ),
    ];
    for (shape, argv, want_comm) in cases {
        let sb = Sandbox::new();
        let (mut p, mcp) = sb.spawn_mcp(
            shape,
            &[
                "--argv-shape",
                shape,
                "--argv-python",
                py,
                "--server-version",
                "0.6.11",
            ],
        );
        let r = p.ready();
        // Re-executed in place: the same pid, a command line of that shape only.
        assert_eq!(pid_of(&r), p.pid(), "{shape}");
        assert_eq!(cmdline(p.pid()), argv, "{shape}");
        // The process name follows the shape on Linux only.
        #[cfg(target_os = "linux")]
        assert_eq!(comm(p.pid()), want_comm, "{shape}");
        #[cfg(not(target_os = "linux"))]
        let _ = want_comm;
        assert!(is_locked(&ready_path(&r, "pid_file").unwrap()), "{shape}");
        let start = &p.events()[0];
        assert_eq!(start["event"], "start");
        assert_eq!(start["argv"], json!(argv), "{shape}");
        let init = mcp.request(&mut p, &initialize(1, "2025-06-18"));
        assert_eq!(init["result"]["serverInfo"]["version"], "0.6.11", "{shape}");
        p.close_stdin();
        assert_eq!(p.wait_exit(DEADLINE).unwrap().code(), Some(0), "{shape}");
    }
}

#[test]
fn uvx_shape_defaults_to_a_uv_cache_archive_path() {
    let sb = Sandbox::new();
    let mut p = sb.spawn("s", &["--argv-shape", "uvx"]);
    p.ready();
    let argv = cmdline(p.pid());
    let archive = sb.home.join(".cache/uv/archive-v0");
    assert_eq!(argv.len(), 2, "{argv:?}");
    for (a, leaf) in argv.iter().zip(["bin/python", "bin/memtomem-server"]) {
        let rest = Path::new(a).strip_prefix(&archive).unwrap_or_else(|_| {
            panic!("{a} is not under {}", archive.display());
        });
        assert!(rest.ends_with(leaf), "{a}");
        assert_eq!(rest.components().count(), 3, "<id>/{leaf}: {a}");
    }
}

#[test]
fn uv_run_shape_defaults_to_a_project_venv() {
    let sb = Sandbox::new();
    let mut p = sb.spawn("s", &["--argv-shape", "uv-run"]);
    p.ready();
    let bin = sb.home.join("src/memtomem/.venv/bin");
    let want = [bin.join("python3"), bin.join("memtomem-server")];
    let want: Vec<String> = want.iter().map(|p| p.display().to_string()).collect();
    assert_eq!(cmdline(p.pid()), want);
}

#[test]
fn orphan_registers_then_its_parent_is_gone() {
    let sb = Sandbox::new();
    let mut p = sb.spawn("s", &["--mode", "orphan"]);
    let r = p.ready();
    let server = pid_of(&r);
    assert_ne!(server, p.pid(), "the server is a grandchild");
    // The spawned launcher exits 0 once the server's parent (the "client") is gone.
    assert_eq!(p.wait_exit(DEADLINE).unwrap().code(), Some(0));
    let ev = p.events();
    let client = ev
        .iter()
        .find(|e| e["event"] == "fork" && e["role"] == "orphan-client")
        .map(|e| e["child"].as_i64().unwrap() as i32)
        .expect("fork of the client");
    assert!(!running(client), "the client is gone");
    assert_ne!(ppid(server), client, "re-parented");
    // The presence marker still names the dead parent, as a real orphan's does (#440).
    let marker = ready_path(&r, "presence").unwrap();
    let (mpid, mppid, ..) = marker_fields(&marker.file_name().unwrap().to_string_lossy()).unwrap();
    assert_eq!((mpid, mppid), (server, client));
    let orphaned = ev.iter().find(|e| e["event"] == "orphaned").unwrap();
    assert_eq!(orphaned["parent_was"], client);
    assert!(is_locked(&ready_path(&r, "pid_file").unwrap()));
    // Its stdin is still the client's pipe: EOF is still a clean shutdown.
    p.close_stdin();
    assert!(wait_until(DEADLINE, || !running(server)));
    assert!(!ready_path(&r, "pid_file").unwrap().exists());
}

#[test]
fn many_servers_share_one_launcher_and_one_store() {
    let sb = Sandbox::new();
    let mut p = sb.spawn("s", &["--mode", "many=5"]);
    let r = p.ready();
    assert_eq!(
        p.pid(),
        r["pids"][0].as_i64().unwrap() as i32,
        "launcher first"
    );
    let servers: Vec<i32> = r["pids"].as_array().unwrap()[1..]
        .iter()
        .map(|v| v.as_i64().unwrap() as i32)
        .collect();
    assert_eq!(servers.len(), 5);
    assert_eq!(servers[0], pid_of(&r), "the primary comes first");
    for s in &servers {
        assert_eq!(ppid(*s), p.pid());
        assert!(running(*s));
    }
    // One store: one primary holds the pid file, four run as secondaries.
    let records = r["servers"].as_array().unwrap();
    assert_eq!(records.len(), 5);
    assert_eq!(
        records.iter().filter(|s| !s["pid_file"].is_null()).count(),
        1
    );
    let pid_file = ready_path(&r, "pid_file").unwrap();
    assert_server_payload(&std::fs::read(&pid_file).unwrap(), servers[0]);
    assert_eq!(list(&sb.rt.join("presence")).len(), 5);
    let warnings = p
        .events()
        .iter()
        .filter(|e| e["event"] == "warning")
        .count();
    assert_eq!(warnings, 4);
    // SIGTERM one secondary: the others go on; EOF ends them all, then the launcher.
    kill(servers[3], libc::SIGTERM);
    assert!(wait_until(DEADLINE, || !running(servers[3])));
    assert!(servers.iter().filter(|s| running(**s)).count() == 4);
    p.close_stdin();
    let st = p
        .wait_exit(DEADLINE)
        .expect("the launcher exits when its servers are gone");
    assert_eq!(st.code(), Some(0));
    assert!(servers.iter().all(|s| !running(*s)));
    assert!(!pid_file.exists());
}

#[test]
fn wiki_lock_holds_both_commit_locks_for_life_and_never_unlinks_them() {
    let sb = Sandbox::new();
    let root = sb.path("wiki");
    let mut p = sb.spawn("s", &["--mode", &format!("wiki-lock={}", root.display())]);
    let r = p.ready();
    let name = format!(
        "wiki-commit-{}.lock",
        digest_of(&root.display().to_string())
    );
    let canonical = sb.rt.join(&name);
    let legacy = sb.rt.join("legacy").join(&name);
    let got: Vec<PathBuf> = r["wiki_locks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| PathBuf::from(v.as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        [legacy.clone(), canonical.clone()],
        "legacy first, as upstream"
    );
    for f in [&canonical, &legacy] {
        assert!(is_locked(f), "{} locked", f.display());
        assert_eq!(mode_bits(f), 0o600);
    }
    let kinds: Vec<String> = p
        .events()
        .iter()
        .filter(|e| e["event"] == "lock")
        .filter_map(|e| e["kind"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        kinds,
        ["presence", "pid", "wiki-commit-legacy", "wiki-commit"]
    );
    kill(p.pid(), libc::SIGTERM);
    assert_eq!(p.wait_exit(DEADLINE).unwrap().code(), Some(0));
    for f in [&canonical, &legacy] {
        assert!(f.exists(), "{} is never unlinked", f.display());
        assert!(!is_locked(f));
    }
    assert!(!ready_path(&r, "pid_file").unwrap().exists());
}

#[test]
fn wiki_lock_default_root_is_the_home_wiki() {
    let sb = Sandbox::new();
    let mut p = sb.spawn("s", &["--mode", "wiki-lock"]);
    p.ready();
    let root = sb.home.join(".memtomem-wiki");
    let name = format!(
        "wiki-commit-{}.lock",
        digest_of(&root.display().to_string())
    );
    assert!(is_locked(&sb.rt.join(name)));
}
