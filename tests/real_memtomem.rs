//! End to end against the real memtomem (issue 5, issue 6 "done when").
//!
//! Each test gets a scratch HOME and scratch uv tool dirs (`UV_TOOL_DIR`,
//! `UV_TOOL_BIN_DIR`) with `memtomem==0.6.11` installed by real uv from the
//! warm cache that `scripts/memtomem-env.sh` prepares (run here once per test
//! binary when `MM_TEST_UV` is not already set, so a fresh machine needs no
//! manual setup; a failed setup fails every test with its message, never a
//! silent skip). Real `memtomem-server` processes run from the scratch bin
//! dir with an open stdin pipe, each in its own process group, and are
//! SIGKILLed and reaped on drop (panics included).
//!
//! Every test but one runs in its own runtime dir (`<scratch>/rt`, 0700):
//! memtomem's servers get it through memtomem's own test hook
//! (`_MEMTOMEM_TEST_RUNTIME_DIR`, honoured only with `PYTEST_CURRENT_TEST`
//! set, as the scenario runner does), mm-upgrade through `--runtime-dir`. So
//! they never touch `/tmp/memtomem-<euid>`, coexist with anyone's servers,
//! and run in parallel.
//!
//! One test must prove the real default paths, with no override anywhere:
//! `default_paths_one_server_is_stopped_and_0_6_12_installed_json`. It uses
//! `/tmp/memtomem-<euid>` as users' servers do, so it is `#[serial]` and
//! every other test here `#[parallel]` on the same key: none of their
//! servers (another installation's old code to a machine-wide scan, exit 6)
//! is alive while it runs. If a
//! foreign live server or marker is there (mm-upgrade would stop it), it says
//! so and skips, touching nothing (with `MM_TEST_REQUIRE_DEFAULT_PATHS=1` it
//! fails instead). Afterwards it removes only the entries that appeared
//! during the test and that nobody holds. The pid-file name is derived from
//! the scratch HOME's store, so it never collides with a user's server.
//!
//! Readiness is the pid file naming our process with its flock held (from
//! `/proc/locks`), polled with a deadline; no fixed sleeps. Speed is never
//! asserted here (see `bench/`).
//!
//! Linux only: readiness and every process check read `/proc`.
#![cfg(all(feature = "real-memtomem", target_os = "linux"))]

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use serial_test::{parallel, serial};

#[path = "common/scratch.rs"]
mod scratch;
#[path = "common/testenv.rs"]
mod testenv;
use scratch::Scratch;
use testenv::parse_exports;
use testkit::flock::holders as flock_holders;
use testkit::proc::{running as alive, state as proc_state};
use testkit::wait_until;

#[path = "real_memtomem/places.rs"]
mod places;
#[path = "real_memtomem/procs.rs"]
mod procs;
use places::*;
use procs::*;

const READY_DEADLINE: Duration = Duration::from_secs(20);
const OLD: &str = "0.6.11";
const NEW: &str = "0.6.12";

// ---------------------------------------------------------------------------
// Cases

fn assert_upgraded(sc: &Scratch) {
    assert_eq!(
        sc.installed_versions(),
        vec![NEW.to_string()],
        "tool env {:?}",
        sc.env_dir()
    );
}

fn assert_still_old(sc: &Scratch) {
    assert_eq!(
        sc.installed_versions(),
        vec![OLD.to_string()],
        "tool env {:?}",
        sc.env_dir()
    );
    let help = sc.server_help();
    assert!(
        help.status.success(),
        "{} --help no longer works: {}\n{}",
        sc.server_bin().display(),
        help.status,
        String::from_utf8_lossy(&help.stderr)
    );
}

/// (a) one server → stopped, pid file removed, 0.6.12 installed, exit 0, JSON names the pid.
/// On the real default paths, no override anywhere: the one test that proves
/// mm-upgrade finds a user's server where users' servers are (`/tmp/memtomem-<euid>`
/// for a store under HOME); serial, and skipped, saying so, while someone else's
/// server is there.
#[test]
#[serial(real_memtomem)]
fn default_paths_one_server_is_stopped_and_0_6_12_installed_json() {
    let Some(rt) = Runtime::real("default_paths_one_server_is_stopped_and_0_6_12_installed_json")
    else {
        return;
    };
    let sc = Scratch::with(OLD);
    let mut server = spawn_server(&sc, &rt, "server");
    let (pid, pid_file) = server.wait_ready(&rt.dir);

    let run = rt.upgrade(&sc, &["-y", "--json", "--version", NEW]);
    let doc = run.expect(0).json();
    assert_eq!(doc["ok"], true, "{run}");
    assert_eq!(doc["killed"], serde_json::json!([pid]), "{run}");
    assert_eq!(doc["removed"], serde_json::json!([pid_file]), "{run}");
    assert_eq!(doc["version"], NEW, "{run}");
    assert_eq!(doc["stops"][0]["pid"], pid, "{run}");
    assert_eq!(
        doc["stops"][0]["signals"],
        serde_json::json!(["SIGTERM"]),
        "{run}"
    );

    // The server acted on SIGTERM (its handler exits 0) and its file is gone.
    let st = server
        .wait_exit(Duration::from_secs(10))
        .expect("server still running");
    assert_eq!(st.code(), Some(0), "server exit: {st}");
    assert!(!pid_file.exists(), "{} left behind", pid_file.display());
    assert_upgraded(&sc);
}

/// (a) the human report prints the pid and the pid file.
#[test]
#[parallel(real_memtomem)]
fn one_server_is_stopped_and_0_6_12_installed_human() {
    let sc = Scratch::with(OLD);
    let rt = Runtime::isolated(&sc, "one_server_is_stopped_and_0_6_12_installed_human");
    let mut server = spawn_server(&sc, &rt, "server");
    let (pid, pid_file) = server.wait_ready(&rt.dir);

    let run = rt.upgrade(&sc, &["-y", "--version", NEW]);
    run.expect(0);
    let text = format!("{}{}", run.stdout, run.stderr);
    assert!(
        text.contains(&pid.to_string()),
        "pid {pid} not reported: {run}"
    );
    let shown = pid_file.to_string_lossy();
    let tilde = shown.replace(&*sc.home.to_string_lossy(), "~");
    assert!(
        text.contains(&*shown) || text.contains(&tilde),
        "pid file {shown} not reported: {run}"
    );
    assert!(server.wait_exit(Duration::from_secs(10)).is_some());
    assert!(!pid_file.exists());
    assert_upgraded(&sc);
}

/// (b) a client respawns its server whenever it dies: what runs afterwards
/// runs the new code (started after the install, no deleted mapping of the
/// installation), and the run reports success.
#[test]
#[parallel(real_memtomem)]
fn respawned_servers_end_up_running_the_new_code() {
    let sc = Scratch::with(OLD);
    let rt = Runtime::isolated(&sc, "respawned_servers_end_up_running_the_new_code");
    let mut sup = Supervisor::start(&sc, &rt);
    let (first, _) = sup.wait_ready(&rt.dir);

    let run = rt.upgrade(&sc, &["-y", "--json", "--version", NEW]);
    let doc = run.json();
    assert_eq!((run.code, &doc["ok"]), (0, &Value::Bool(true)), "{run}");
    assert!(
        doc["killed"].as_array().unwrap().contains(&first.into()),
        "{run}"
    );
    assert_upgraded(&sc);
    let installed_at = sc.installed_at();

    // The client has started a server again; let it come up, then look at
    // every memtomem-server of this installation.
    let (now, _) = sup.wait_ready(&rt.dir);
    assert_ne!(now, first);
    let running = scratch_servers(&sc);
    assert!(running.contains(&now), "{now} not among {running:?}");
    for pid in &running {
        let deleted = deleted_maps_under(*pid, &sc.tools);
        assert!(
            deleted.is_empty(),
            "pid {pid} maps deleted files of the old installation: {deleted:?}"
        );
        let started = start_wall(*pid).unwrap();
        assert!(
            started > installed_at,
            "pid {pid} started at {started:.3}, not after the install at {installed_at:.3}\n{run}"
        );
    }
    println!("{run}");
    let spawned = sup.finish();
    assert!(spawned >= 2, "the client never respawned ({spawned})");
}

/// (c) --dry-run changes nothing.
#[test]
#[parallel(real_memtomem)]
fn dry_run_changes_nothing() {
    let sc = Scratch::with(OLD);
    let rt = Runtime::isolated(&sc, "dry_run_changes_nothing");
    let mut server = spawn_server(&sc, &rt, "server");
    let (pid, pid_file) = server.wait_ready(&rt.dir);
    let bytes = fs::read(&pid_file).unwrap();
    let receipt = sc.receipt();

    let run = rt.upgrade(&sc, &["--dry-run", "--json", "--version", NEW]);
    let doc = run.expect(0).json();
    assert_eq!(doc["dry_run"], true, "{run}");
    assert_eq!(doc["would_kill"], serde_json::json!([pid]), "{run}");
    assert_eq!(doc["would_remove"], serde_json::json!([pid_file]), "{run}");
    // Human dry run too.
    rt.upgrade(&sc, &["--dry-run", "--version", NEW]).expect(0);

    assert!(alive(pid), "the dry run stopped {pid}");
    assert!(server.wait_exit(Duration::ZERO).is_none());
    assert_eq!(fs::read(&pid_file).unwrap(), bytes, "pid file changed");
    assert_eq!(flock_holders(&pid_file), vec![pid]);
    assert_eq!(sc.receipt(), receipt, "uv receipt changed");
    assert_still_old(&sc);
}

/// (d) an impossible version fails before the running server is stopped.
#[test]
#[parallel(real_memtomem)]
fn impossible_version_fails_before_stopping_anything() {
    let sc = Scratch::with(OLD);
    let rt = Runtime::isolated(&sc, "impossible_version_fails_before_stopping_anything");
    let mut server = spawn_server(&sc, &rt, "server");
    let (pid, pid_file) = server.wait_ready(&rt.dir);
    let bytes = fs::read(&pid_file).unwrap();

    let run = rt.upgrade(&sc, &["-y", "--json", "--version", "99.99.99"]);
    let doc = run.expect(5).json();
    assert_eq!(doc["ok"], false, "{run}");
    assert!(
        doc["killed"].as_array().is_none_or(|k| k.is_empty()),
        "something was stopped: {run}"
    );
    assert!(alive(pid), "{pid} was stopped: {run}");
    assert!(server.wait_exit(Duration::ZERO).is_none());
    assert_eq!(fs::read(&pid_file).unwrap(), bytes);
    assert_eq!(flock_holders(&pid_file), vec![pid]);
    assert_still_old(&sc);
}

/// (e) a server frozen with SIGSTOP gets SIGCONT after SIGTERM and exits
/// within the grace period, no SIGKILL.
#[test]
#[parallel(real_memtomem)]
fn stopped_server_is_continued_and_exits_on_sigterm() {
    let sc = Scratch::with(OLD);
    let rt = Runtime::isolated(&sc, "stopped_server_is_continued_and_exits_on_sigterm");
    let mut server = spawn_server(&sc, &rt, "server");
    let (pid, pid_file) = server.wait_ready(&rt.dir);
    signal(pid, libc::SIGSTOP);
    assert!(wait_until(Duration::from_secs(5), || proc_state(pid) == Some('T')));

    let run = rt.upgrade(&sc, &["-y", "--json", "--grace", "10", "--version", NEW]);
    let doc = run.expect(0).json();
    let stop = &doc["stops"][0];
    assert_eq!(stop["pid"], pid, "{run}");
    assert_eq!(
        stop["signals"],
        serde_json::json!(["SIGTERM", "SIGCONT"]),
        "{run}"
    );
    assert!(stop["after_ms"].as_f64().unwrap() < 10_000.0, "{run}");
    let st = server
        .wait_exit(Duration::from_secs(10))
        .expect("still running");
    assert_eq!(
        st.code(),
        Some(0),
        "it should exit through its SIGTERM handler: {st}"
    );
    assert!(!pid_file.exists());
    assert_upgraded(&sc);
}

/// (f) a server whose parent never reaps it: its exit is seen at once, the
/// grace period (30 s) is not waited out.
#[test]
#[parallel(real_memtomem)]
fn server_with_a_non_reaping_parent_is_not_waited_on() {
    let sc = Scratch::with(OLD);
    let rt = Runtime::isolated(&sc, "server_with_a_non_reaping_parent_is_not_waited_on");
    // The shell backgrounds the server with our stdin pipe, then becomes a
    // `sleep` that never waits: the server's exit leaves a zombie.
    let mut c = Command::new("sh");
    c.args(["-c", r#"exec 3<&0; "$0" <&3 3<&- & exec sleep 1000"#])
        .arg(sc.server_bin());
    sc.env(&mut c);
    rt.hook(&mut c);
    let mut group = Group::spawn(c, sc.path("server.stderr"));
    let (pid, pid_file) = group.wait_ready(&rt.dir);
    assert_ne!(pid, group.leader());

    let run = rt.upgrade(&sc, &["-y", "--json", "--grace", "30", "--version", NEW]);
    let doc = run.expect(0).json();
    let stop = &doc["stops"][0];
    assert_eq!(stop["pid"], pid, "{run}");
    assert_eq!(stop["signals"], serde_json::json!(["SIGTERM"]), "{run}");
    assert!(
        stop["after_ms"].as_f64().unwrap() < 30_000.0,
        "the grace was waited out: {run}"
    );
    assert!(stop.get("escalated").is_none_or(Value::is_null), "{run}");
    // It is dead and unreaped: the parent really never waited.
    assert_eq!(proc_state(pid), Some('Z'));
    assert!(!pid_file.exists());
    assert_upgraded(&sc);
}

/// (g) issue 6: `status` calls a server that survived a plain
/// `uv tool install --reinstall` stale (exit 6) and a fresh one current.
#[test]
#[parallel(real_memtomem)]
fn status_tells_a_server_that_survived_a_plain_reinstall_from_a_fresh_one() {
    let sc = Scratch::with(OLD);
    let rt = Runtime::isolated(
        &sc,
        "status_tells_a_server_that_survived_a_plain_reinstall_from_a_fresh_one",
    );
    let mut old = spawn_server(&sc, &rt, "old");
    let (pid, _) = old.wait_ready(&rt.dir);

    // What users do without mm-upgrade: uv directly, servers left running.
    sc.install(NEW, &["--reinstall"]);
    assert_upgraded(&sc);

    let run = rt.upgrade(&sc, &["status", "--json"]);
    let doc = run.expect(6).json();
    let procs = doc["processes"].as_array().unwrap();
    let me = procs
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("{pid} not listed: {run}"));
    assert_eq!(me["generation"], "stale", "{run}");
    assert!(!me["evidence"].as_array().unwrap().is_empty(), "{run}");
    rt.upgrade(&sc, &["status"]).expect(6);

    signal(pid, libc::SIGTERM);
    assert!(old.wait_exit(Duration::from_secs(10)).is_some());
    let mut fresh = spawn_server(&sc, &rt, "fresh");
    let (pid2, _) = fresh.wait_ready(&rt.dir);
    let run = rt.upgrade(&sc, &["status", "--json"]);
    let doc = run.expect(0).json();
    let procs = doc["processes"].as_array().unwrap();
    let me = procs
        .iter()
        .find(|p| p["pid"] == pid2)
        .unwrap_or_else(|| panic!("{pid2} not listed: {run}"));
    assert_eq!(me["generation"], "current", "{run}");
    assert!(procs.iter().all(|p| p["pid"] != pid), "{run}");
}

/// (h) uv fails at the worst moment (it deletes the environment it is
/// installing and the entry points it made, then errors): that environment
/// is the staged copy, so the running server keeps serving and 0.6.11 is
/// untouched; nothing is left in uv's tool dir.
#[test]
#[parallel(real_memtomem)]
fn failed_install_leaves_the_server_running_and_0_6_11_untouched() {
    let sc = Scratch::with(OLD);
    let rt = Runtime::isolated(
        &sc,
        "failed_install_leaves_the_server_running_and_0_6_11_untouched",
    );
    let mut server = spawn_server(&sc, &rt, "server");
    let (pid, _) = server.wait_ready(&rt.dir);
    let receipt = sc.receipt();

    let wrapper = sc.path("uv-breaks-install");
    let mut f = fs::File::create(&wrapper).unwrap();
    write!(
        f,
        r#"#!/bin/sh
printf '%s\n' "$*" >> "{log}"
case " $* " in
  *" tool install "*)
    rm -rf "$UV_TOOL_DIR/memtomem" "$UV_TOOL_BIN_DIR/memtomem-server" "$UV_TOOL_BIN_DIR/mm"
    echo "error: stand-in uv deleted the environment and failed" >&2
    exit 2 ;;
esac
exec "{uv}" "$@"
"#,
        log = sc.path("uv.log").display(),
        uv = testenv::uv().display()
    )
    .unwrap();
    drop(f);
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();

    let run = rt.upgrade_with_uv(&sc, &["-y", "--json", "--version", NEW], &wrapper);
    let doc = run.expect(5).json();
    assert_eq!(doc["ok"], false, "{run}");
    assert!(
        doc["error"]
            .as_str()
            .unwrap()
            .contains("Nothing was stopped"),
        "{run}"
    );
    assert_eq!(
        doc["stderr"].as_str().map(|e| e.contains("stand-in uv")),
        Some(true),
        "{run}"
    );
    let log = fs::read_to_string(sc.path("uv.log")).unwrap();
    assert!(log.contains("tool install"), "the install never ran: {log}");
    assert!(alive(pid), "the server was stopped: {run}");
    assert_eq!(sc.receipt(), receipt);
    assert!(!sc.tools.join(".mm-upgrade").exists());
    assert_still_old(&sc);
    drop(server);
}

#[test]
#[parallel(real_memtomem)]
fn export_lines_are_parsed_like_bash_does() {
    let vars = parse_exports(
        "# comment\nexport MM_TEST_UV=/a\\ b/uv\nexport UV_PYTHON='/x/y'\nexport EMPTY=\n",
    )
    .unwrap();
    assert_eq!(
        vars,
        vec![
            ("MM_TEST_UV".to_string(), "/a b/uv".to_string()),
            ("UV_PYTHON".to_string(), "/x/y".to_string()),
            ("EMPTY".to_string(), String::new()),
        ]
    );
    assert!(parse_exports("nothing here").is_err());
}
