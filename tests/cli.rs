//! The upgrader end to end with real processes (fake servers) and a stand-in
//! uv, each test in its own sandbox.

mod common;

use std::fs;

use common::{exists, json_run, Sandbox};
use predicates::prelude::*;

#[test]
fn version_specifier_is_a_usage_error_before_anything_is_touched() {
    let sb = Sandbox::new();
    let server = sb.server("s", &[]);
    sb.upgrader()
        .args(["--json", "-y", "--version", ">=0.6"])
        .assert()
        .code(2)
        .stdout("")
        .stderr(predicate::str::contains(
            "'>=0.6' is not a bare PEP 440 release",
        ));
    assert!(server.alive());
    assert_eq!(sb.uv_log(), "");
}

#[test]
fn negative_grace_is_a_usage_error() {
    let sb = Sandbox::new();
    sb.upgrader()
        .args(["--grace", "-1"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("-1"));
}

#[test]
fn out_of_range_durations_are_one_line_usage_errors_naming_the_value() {
    let sb = Sandbox::new();
    let bad = [
        ("--uv-timeout", "0"),
        ("--uv-timeout", "0ms"),
        ("--uv-timeout", "-1"),
        ("--uv-timeout", "NaN"),
        ("--uv-timeout", "inf"),
        ("--uv-timeout", "3601"),
        ("--uv-timeout", "1e19"),
        ("--grace", "NaN"),
        ("--grace", "inf"),
        ("--grace", "3601"),
        ("--grace", "1e19"),
    ];
    for (flag, value) in bad {
        // --dry-run: were the value accepted, the run would succeed (exit 0).
        let out = sb
            .upgrader()
            .args(["--dry-run", flag, value])
            .assert()
            .code(2)
            .stdout("")
            .get_output()
            .clone();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().next().unwrap_or("");
        assert!(
            first.starts_with("error:")
                && first.contains(flag)
                && first.contains(&format!("'{value}'"))
                && !stderr.contains("panicked"),
            "{flag} {value}: {stderr}"
        );
    }
    assert_eq!(sb.uv_log(), "");
    for (flag, value) in [
        ("--uv-timeout", "3600"),
        ("--grace", "3600"),
        ("--grace", "0"),
    ] {
        sb.upgrader()
            .args(["--dry-run", flag, value])
            .assert()
            .code(0);
    }
}

#[test]
fn without_yes_and_without_a_terminal_it_refuses() {
    let sb = Sandbox::new();
    let server = sb.server("s", &[]);
    let doc = json_run(sb.upgrader().arg("--json"), 3);
    assert_eq!(doc["ok"], false);
    assert!(doc["error"].as_str().unwrap().contains("Pass -y"));
    assert!(server.alive());
    assert!(!sb.uv_log().contains("install"));
}

#[test]
fn missing_uv_fails_before_stopping_anything() {
    let sb = Sandbox::new();
    let server = sb.server("s", &[]);
    sb.upgrader()
        .args(["-y", "--uv", "/nonexistent/uv"])
        .assert()
        .code(5)
        .stderr(
            predicate::str::contains("/nonexistent/uv")
                .and(predicate::str::contains("Nothing was stopped")),
        );
    assert!(server.alive());
    assert!(exists(&server.pid_file()));
}

#[test]
fn dry_run_lists_the_server_and_changes_nothing() {
    let sb = Sandbox::new();
    let server = sb.server("s", &[]);
    let before = fs::read(server.pid_file()).unwrap();
    let doc = json_run(
        sb.upgrader()
            .args(["--dry-run", "--json", "--version", "0.6.12"]),
        0,
    );
    assert_eq!(doc["dry_run"], true);
    assert_eq!(doc["would_kill"], serde_json::json!([server.pid()]));
    assert_eq!(doc["would_remove"], serde_json::json!([server.pid_file()]));
    assert_eq!(
        doc["extras"],
        serde_json::json!(["all"]),
        "extras come from the receipt"
    );
    assert_eq!(
        doc["would_install"].as_array().unwrap().last().unwrap(),
        "memtomem[all]==0.6.12"
    );
    assert!(server.alive());
    assert_eq!(fs::read(server.pid_file()).unwrap(), before);
    assert!(!sb.uv_log().contains("install"));
}

#[test]
fn one_server_is_stopped_its_pid_file_removed_and_memtomem_reinstalled() {
    let sb = Sandbox::new();
    let server = sb.server("s", &[]);
    let pid = server.pid();
    let doc = json_run(
        sb.upgrader()
            .args(["-y", "--json", "--version", "0.6.12", "--extras", "none"]),
        0,
    );
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["killed"], serde_json::json!([pid]));
    assert_eq!(doc["removed"][0], serde_json::json!(server.pid_file()));
    assert_eq!(doc["reinstalled"], "memtomem==0.6.12");
    assert_eq!(doc["stops"][0]["signals"], serde_json::json!(["SIGTERM"]));
    assert!(!server.alive());
    assert!(!exists(&server.pid_file()));
    let log = sb.uv_log();
    assert!(
        log.contains("tool install --refresh memtomem==0.6.12\n"),
        "prepared first: {log}"
    );
    assert!(
        log.ends_with("tool install --offline --reinstall-package memtomem memtomem==0.6.12\n"),
        "{log}"
    );
    assert!(server.events().contains("\"signal\":\"SIGTERM\""));
}

#[test]
fn human_output_names_the_pid_and_the_file() {
    let sb = Sandbox::new();
    let server = sb.server("s", &[]);
    sb.upgrader()
        .args(["-y", "--version", "0.6.12"])
        .assert()
        .code(0)
        .stdout(
            predicate::str::contains(format!("Stopped pid {}.", server.pid()))
                .and(predicate::str::contains(format!(
                    "Removed {}.",
                    server.pid_file().display()
                )))
                .and(predicate::str::contains(
                    "Reinstalled memtomem[all]==0.6.12",
                )),
        );
}

#[test]
fn a_version_that_cannot_be_prepared_leaves_the_server_running() {
    let sb = Sandbox::new();
    let server = sb.server("s", &[]);
    let doc = json_run(
        sb.upgrader().env("FAKE_UV_MODE", "fail-prepare").args([
            "-y",
            "--json",
            "--version",
            "99.99.99",
        ]),
        5,
    );
    assert!(doc["error"]
        .as_str()
        .unwrap()
        .contains("Nothing was stopped"));
    assert!(doc["stderr"].as_str().unwrap().contains("99.99.99"));
    assert!(server.alive());
    assert!(exists(&server.pid_file()));
    assert!(!sb.uv_log().contains("--reinstall"));
}

#[test]
fn a_failed_install_is_rolled_back_to_the_previous_installation() {
    let sb = Sandbox::new();
    let _server = sb.server("s", &[]);
    let doc = json_run(
        sb.upgrader().env("FAKE_UV_MODE", "delete-then-fail").args([
            "-y",
            "--json",
            "--version",
            "0.6.12",
        ]),
        5,
    );
    assert_eq!(doc["rolled_back"], true);
    assert!(doc["error"].as_str().unwrap().contains("Rolled back"));
    assert!(doc["stderr"].as_str().unwrap().contains("failed half-way"));
    // The old entry point works again, at the same path.
    let old = fs::read_to_string(sb.path("bin/memtomem-server")).unwrap();
    assert!(old.contains("echo old"));
    assert!(exists(&sb.path("tools/memtomem/uv-receipt.toml")));
}

#[test]
fn uv_failure_is_reported_with_its_stderr() {
    let sb = Sandbox::new();
    sb.upgrader()
        .env("FAKE_UV_MODE", "fail-install")
        .args(["-y", "--version", "0.6.12"])
        .assert()
        .code(5)
        .stderr(predicate::str::contains("install exploded").and(predicate::str::contains("rc=2")));
}

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

#[test]
fn a_second_run_is_refused_while_one_holds_the_run_lock() {
    let sb = Sandbox::new();
    let lock = fs::File::create(sb.rt().join("mm-upgrade.lock")).unwrap();
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) },
        0
    );
    sb.upgrader()
        .args(["-y", "--version", "0.6.12"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains("another mm-upgrade"));
}

#[test]
fn skip_pkill_reinstalls_and_lists_what_keeps_running_old_code() {
    let sb = Sandbox::new();
    let server = sb.server("s", &[]);
    sb.upgrader()
        .args(["-y", "--skip-pkill", "--version", "0.6.12"])
        .assert()
        .code(0)
        .stderr(
            predicate::str::contains(format!("pid {} (server", server.pid()))
                .and(predicate::str::contains("keeps running the old code")),
        );
    assert!(server.alive());
    assert!(sb.uv_log().contains("--reinstall"));
}

#[test]
fn events_stream_tells_the_story_in_order() {
    let sb = Sandbox::new();
    let server = sb.server("s", &[]);
    let events = sb.path("events.jsonl");
    sb.upgrader()
        .args(["-y", "--version", "0.6.12", "--events"])
        .arg(&events)
        .assert()
        .code(0);
    let text = fs::read_to_string(&events).unwrap();
    let kinds: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let pos = |k: &str| {
        kinds
            .iter()
            .position(|x| x == k)
            .unwrap_or_else(|| panic!("no {k} in {kinds:?}"))
    };
    assert!(pos("discovered") < pos("prepared"));
    assert!(pos("prepared") < pos("signalled"));
    assert!(pos("signalled") < pos("exited"));
    assert!(pos("exited") < pos("unlinked"));
    assert!(pos("unlinked") < pos("installed"));
    assert!(text.contains(&format!("\"pid\":{}", server.pid())));
    assert!(text.contains("\"via\":\"pidfd\""));
}

#[test]
fn completions_and_man_page_come_from_the_clap_definition() {
    let bash = assert_cmd::Command::cargo_bin("mm-upgrade")
        .unwrap()
        .args(["completions", "bash"])
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let bash = String::from_utf8(bash).unwrap();
    assert!(
        bash.contains("--skip-pkill") && bash.contains("--grace"),
        "{bash}"
    );
    let man = assert_cmd::Command::cargo_bin("mm-upgrade")
        .unwrap()
        .arg("man")
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let man = String::from_utf8(man).unwrap();
    assert!(
        man.contains(".TH mm-upgrade") && man.contains("skip\\-pkill"),
        "{}",
        &man[..man.len().min(400)]
    );
}

/// Where a run's stdout or stderr goes in the output-failure tests.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Sink {
    /// Read by the test.
    Captured,
    /// `/dev/full`: every write fails with ENOSPC.
    Full,
    /// A pipe whose reader is gone: every write fails with EPIPE.
    ClosedPipe,
}

fn stdio(sink: Sink) -> std::process::Stdio {
    use std::os::fd::FromRawFd;
    match sink {
        Sink::Captured => std::process::Stdio::piped(),
        Sink::Full => fs::File::options()
            .write(true)
            .open("/dev/full")
            .unwrap()
            .into(),
        Sink::ClosedPipe => {
            let mut fds = [0; 2];
            // SAFETY: a valid two-int array; the read end is closed at once.
            assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
            unsafe { libc::close(fds[0]) };
            // SAFETY: the write end, fresh from pipe2, owned from here on.
            unsafe { std::os::fd::OwnedFd::from_raw_fd(fds[1]) }.into()
        }
    }
}

/// Run `cmd` with stdout and stderr sent to `out` and `err`: its exit code
/// (never a signal) and its stderr when captured.
fn run_to(mut cmd: std::process::Command, out: Sink, err: Sink) -> (i32, String) {
    let child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(stdio(out))
        .stderr(stdio(err))
        .spawn()
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let code = o.status.code().unwrap_or_else(|| panic!("{:?}", o.status));
    (code, stderr)
}

#[test]
fn output_to_a_full_or_closed_stdout_or_stderr_never_panics() {
    let sb = Sandbox::new();
    let commands: [&[&str]; 7] = [
        &["--help"],
        &["man"],
        &["completions", "bash"],
        &["status"],
        &["status", "--json"],
        &["--dry-run"],
        &["--dry-run", "--json"],
    ];
    let sinks = [
        (Sink::Full, Sink::Captured),
        (Sink::ClosedPipe, Sink::Captured),
        (Sink::Captured, Sink::Full),
        (Sink::Full, Sink::Full),
        (Sink::ClosedPipe, Sink::ClosedPipe),
    ];
    for args in commands {
        for (out, err) in sinks {
            let mut cmd = sb.upgrader_std();
            cmd.args(args);
            let (code, stderr) = run_to(cmd, out, err);
            let case = format!("{args:?} stdout {out:?} stderr {err:?}: rc={code} {stderr}");
            assert!(code != 101 && !stderr.contains("panicked"), "{case}");
            let document = matches!(args[0], "man" | "completions");
            // Only a document that cannot be written at all is an error;
            // a reader that went away (`| head -1`) is a quiet success.
            if document && out == Sink::Full {
                assert_eq!(code, 1, "{case}");
                if err == Sink::Captured {
                    assert!(stderr.contains("cannot write"), "{case}");
                }
            } else {
                assert_eq!(code, 0, "{case}");
                if err == Sink::Captured {
                    assert_eq!(stderr, "", "{case}");
                }
            }
        }
    }
    assert!(!sb.uv_log().contains("install"));
}

#[test]
fn a_failing_upgrade_does_the_same_with_stdout_and_stderr_full() {
    // The failure paths print uv's stderr; a write error there must not
    // panic past the rollback or change the outcome.
    for (mode, version) in [("fail-prepare", "99.99.99"), ("delete-then-fail", "0.6.12")] {
        let mut outcomes = vec![];
        for (out, err) in [(Sink::Captured, Sink::Captured), (Sink::Full, Sink::Full)] {
            let sb = Sandbox::new();
            let server = sb.server("s", &[]);
            let mut cmd = sb.upgrader_std();
            cmd.env("FAKE_UV_MODE", mode)
                .args(["-y", "--version", version]);
            let (code, stderr) = run_to(cmd, out, err);
            assert_ne!(code, 101, "{mode} {out:?}: {stderr}");
            let mut uv_calls: Vec<String> = sb.uv_log().lines().map(str::to_string).collect();
            uv_calls.sort();
            outcomes.push((
                code,
                server.alive(),
                exists(&server.pid_file()),
                fs::read_to_string(sb.path("bin/memtomem-server")).ok(),
                uv_calls,
            ));
        }
        assert_eq!(outcomes[0], outcomes[1], "{mode}");
    }
}

/// A reinstall rewrites uv's receipt: its mtime is the install time.
fn set_install_time(sb: &Sandbox, ago: std::time::Duration) {
    let receipt = fs::File::options()
        .write(true)
        .open(sb.path("tools/memtomem/uv-receipt.toml"))
        .unwrap();
    receipt
        .set_modified(std::time::SystemTime::now() - ago)
        .unwrap();
}

#[test]
fn status_calls_a_server_started_after_the_install_current() {
    let sb = Sandbox::new();
    set_install_time(&sb, std::time::Duration::from_secs(5));
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
    set_install_time(&sb, std::time::Duration::ZERO);
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
    set_install_time(&sb, std::time::Duration::from_secs(5));
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
fn shared_options_go_before_or_after_the_subcommand_but_upgrade_flags_do_not_mix() {
    let sb = Sandbox::new();
    set_install_time(&sb, std::time::Duration::from_secs(5));
    let server = sb.server("s", &[]);
    let rt = sb.rt();
    for args in [
        vec!["--runtime-dir", rt.to_str().unwrap(), "--json", "status"],
        vec!["status", "--runtime-dir", rt.to_str().unwrap(), "--json"],
    ] {
        let doc = json_run(
            sb.upgrader()
                .env_remove("MM_UPGRADE_RUNTIME_DIR")
                .args(&args),
            0,
        );
        assert_eq!(doc["processes"][0]["pid"], server.pid(), "{args:?}: {doc}");
    }
    sb.upgrader()
        .args(["--dry-run", "status"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--dry-run applies to the upgrade"));
}

/// mm-upgrade as a child we can signal; killed and reaped on drop.
struct Upgrader(std::process::Child);

impl Drop for Upgrader {
    fn drop(&mut self) {
        // SIGTERM first: mm-upgrade then stops the uv process group it made
        // (a SIGKILL would orphan it); SIGKILL if it does not exit.
        if let Ok(None) = self.0.try_wait() {
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while let Ok(None) = self.0.try_wait() {
                if std::time::Instant::now() > deadline {
                    let _ = self.0.kill();
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        let _ = self.0.wait();
    }
}

fn spawn_upgrader(sb: &Sandbox, mode: &str) -> Upgrader {
    use std::os::unix::process::CommandExt;
    let mut std_cmd = sb.upgrader_std();
    std_cmd
        .env("FAKE_UV_MODE", mode)
        .args(["-y", "--json", "--version", "0.6.12"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .process_group(0);
    Upgrader(std_cmd.spawn().unwrap())
}

fn finish(mut up: Upgrader) -> (i32, serde_json::Value) {
    let mut out = String::new();
    std::io::Read::read_to_string(up.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    let code = up.0.wait().unwrap().code().unwrap();
    (code, common::json_of(out.as_bytes()))
}

#[test]
fn ctrl_c_while_preparing_stops_uv_and_changes_nothing() {
    let sb = Sandbox::new();
    let server = sb.server("s", &[]);
    let up = spawn_upgrader(&sb, "hang-prepare");
    common::wait_for("the prepare call", || {
        sb.uv_log().contains("install --refresh memtomem")
    });
    unsafe { libc::kill(up.0.id() as i32, libc::SIGINT) };
    let (code, doc) = finish(up);
    assert_eq!(code, 130, "{doc}");
    assert!(
        doc["error"]
            .as_str()
            .unwrap()
            .contains("interrupted by SIGINT"),
        "{doc}"
    );
    assert!(server.alive());
    assert!(exists(&server.pid_file()));
    assert!(!sb.uv_log().contains("--reinstall"));
}

#[test]
fn ctrl_c_during_the_install_is_held_until_the_upgrade_is_done() {
    let sb = Sandbox::new();
    let server = sb.server("s", &[]);
    let up = spawn_upgrader(&sb, "slow-install");
    common::wait_for("the install call", || {
        sb.uv_log().contains("--reinstall-package")
    });
    unsafe { libc::kill(up.0.id() as i32, libc::SIGINT) };
    let (code, doc) = finish(up);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["killed"], serde_json::json!([server.pid()]));
    assert!(
        doc["warnings"]
            .to_string()
            .contains("held until the upgrade finished"),
        "{doc}"
    );
    assert!(exists(&sb.path(
        "tools/memtomem/lib/python3.12/site-packages/memtomem-0.6.12.dist-info"
    )));
}

#[test]
fn prepare_uses_the_installed_interpreter_and_a_cache_miss_retries_online() {
    let sb = Sandbox::new();
    let python = sb.path("tools/memtomem/bin/python");
    fs::write(&python, "").unwrap();
    let server = sb.server("s", &[]);
    let doc = json_run(
        sb.upgrader().env("FAKE_UV_MODE", "offline-miss").args([
            "-y",
            "--json",
            "--version",
            "0.6.12",
        ]),
        0,
    );
    let log = sb.uv_log();
    assert!(
        log.contains(&format!(
            "tool install --refresh --python {} memtomem[all]==0.6.12",
            python.display()
        )),
        "{log}"
    );
    assert!(
        log.contains("--offline --reinstall-package memtomem memtomem[all]==0.6.12"),
        "{log}"
    );
    assert!(
        log.trim_end()
            .ends_with("tool install --reinstall-package memtomem memtomem[all]==0.6.12"),
        "{log}"
    );
    assert!(
        doc["warnings"].to_string().contains("retried online"),
        "{doc}"
    );
    assert_eq!(doc["killed"], serde_json::json!([server.pid()]));
}

#[test]
fn stale_pid_files_are_removed_but_not_while_an_uninstall_holds_the_lifecycle_barrier() {
    let sb = Sandbox::new();
    let stale = sb.rt().join("server-00000000000000aa.pid");
    fs::write(&stale, "4242\n\n2026-11-26T11:32:39+00:00\n").unwrap();
    let barrier = fs::File::create(sb.rt().join("lifecycle.lock")).unwrap();
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&barrier), libc::LOCK_EX) },
        0
    );
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
    let doc = json_run(
        sb.upgrader().args(["-y", "--json", "--version", "0.6.12"]),
        0,
    );
    assert!(!exists(&stale));
    assert_eq!(
        doc["killed"],
        serde_json::json!([]),
        "a stale file's pid is never signalled"
    );
}
