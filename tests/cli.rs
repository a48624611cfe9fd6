//! The command line end to end: usage errors, the plan and dry run, output
//! (words, JSON, events, closed or full streams), completions. Real fake
//! servers and the stand-in uv, each test in its own sandbox.

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
fn dry_run_without_uv_shows_the_plan_and_says_the_run_would_fail() {
    let sb = Sandbox::new();
    let out = sb
        .upgrader()
        .args(["--dry-run", "--uv", "/nonexistent/uv"])
        .assert()
        .code(5)
        .get_output()
        .clone();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("installed version unknown"),
        "no plan: {stdout}"
    );
    assert!(
        stdout.contains("/nonexistent/uv") && stdout.contains("would stop nothing"),
        "{stdout}"
    );
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
                    "Installed memtomem 0.6.11 → 0.6.12 (memtomem[all]==0.6.12) (",
                ))
                .and(predicate::str::contains(
                    " ms from the first stop to the new version in place).",
                ))
                // The plan names both versions; nothing claims the servers are back:
                // the host that lost its server is told to reconnect.
                .and(predicate::str::contains("upgrade plan: 0.6.11 → 0.6.12"))
                .and(predicate::str::contains(format!(
                    "lost server {}: restart or reconnect",
                    server.pid()
                ))),
        );
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
    let last = |k: &str| kinds.iter().rposition(|x| x == k).unwrap();
    // Staged and proven while the server still runs; switched after it exited.
    assert!(pos("discovered") < pos("staged"), "{kinds:?}");
    assert!(pos("staged") < pos("proven"), "{kinds:?}");
    assert!(pos("proven") < pos("relocated"), "{kinds:?}");
    assert!(pos("relocated") < pos("signalling"), "{kinds:?}");
    assert!(pos("signalling") < pos("signalled"), "{kinds:?}");
    assert!(pos("signalled") < pos("exited"), "{kinds:?}");
    assert!(pos("exited") < pos("unlinked"), "{kinds:?}");
    assert!(last("exited") < pos("switched"), "{kinds:?}");
    assert!(last("unlinked") < pos("switched"), "{kinds:?}");
    assert!(pos("switched") < pos("installed"), "{kinds:?}");
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
    /// `/dev/full`: every write fails with ENOSPC (Linux only: macOS has
    /// no such device).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
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
            #[cfg(target_os = "linux")]
            assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
            // macOS has no pipe2: close-on-exec right after, as std does there.
            #[cfg(not(target_os = "linux"))]
            {
                assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
                for fd in fds {
                    assert_eq!(
                        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) },
                        0
                    );
                }
            }
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
        #[cfg(target_os = "linux")]
        (Sink::Full, Sink::Captured),
        (Sink::ClosedPipe, Sink::Captured),
        #[cfg(target_os = "linux")]
        (Sink::Captured, Sink::Full),
        #[cfg(target_os = "linux")]
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

#[cfg(target_os = "linux")] // /dev/full
#[test]
fn a_failing_upgrade_does_the_same_with_stdout_and_stderr_full() {
    // The failure paths print uv's stderr; a write error there must not
    // panic past the discard or the rollback, or change the outcome.
    for (mode, version) in [
        ("unresolvable", "99.99.99"),
        ("fail:2:error: install exploded", "0.6.12"),
        ("broken-entry", "0.6.12"),
        ("dangling-entry", "0.6.12"),
    ] {
        let mut outcomes = vec![];
        for (out, err) in [(Sink::Captured, Sink::Captured), (Sink::Full, Sink::Full)] {
            let sb = Sandbox::new();
            let server = sb.server("s", &[]);
            let before = sb.installation();
            let mut cmd = sb.upgrader_std();
            cmd.env("FAKE_UV_BEHAVIOR", mode)
                .args(["-y", "--version", version]);
            let (code, stderr) = run_to(cmd, out, err);
            assert_ne!(code, 101, "{mode} {out:?}: {stderr}");
            assert_eq!(sb.installation(), before, "{mode} {out:?}: {stderr}");
            assert!(!exists(&sb.work_dir()), "{mode} {out:?}: {stderr}");
            let mut uv_calls: Vec<String> = sb.uv_log().lines().map(str::to_string).collect();
            uv_calls.sort();
            outcomes.push((
                code,
                server.alive(),
                exists(&server.pid_file()),
                sb.installed_versions(),
                uv_calls,
            ));
        }
        assert_eq!(outcomes[0], outcomes[1], "{mode}");
    }
}

#[test]
fn shared_options_go_before_or_after_the_subcommand_but_upgrade_flags_do_not_mix() {
    let sb = Sandbox::new();
    sb.set_install_time(std::time::Duration::from_secs(5));
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
