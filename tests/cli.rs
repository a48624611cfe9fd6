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
    assert!(stdout.contains("memtomem"), "no plan: {stdout}");
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
    assert_eq!(doc["version"], "0.6.12");
    assert_eq!(doc["staged"]["version"], "0.6.12", "{doc}");
    assert_eq!(doc["proof"]["initialize"]["version"], "0.6.12", "{doc}");
    assert!(doc["switch_ms"].as_f64().is_some(), "{doc}");
    assert_eq!(doc["stops"][0]["signals"], serde_json::json!(["SIGTERM"]));
    assert!(!server.alive());
    assert!(!exists(&server.pid_file()));
    assert!(server.events().contains("\"signal\":\"SIGTERM\""));
    // One uv call, into a staging dir (the stand-in refuses any other).
    assert_eq!(
        sb.uv_installs(),
        ["tool install --refresh-package memtomem memtomem==0.6.12"]
    );
    // What uv would have installed in place: the new env, its receipt naming
    // the real bin dir, console scripts naming the real env, the link.
    assert_eq!(sb.installed_versions(), ["0.6.12"]);
    let receipt = sb.receipt();
    assert!(
        receipt.contains("{ name = \"memtomem\", specifier = \"==0.6.12\" }"),
        "{receipt}"
    );
    assert!(
        receipt.contains(&format!(
            "install-path = \"{}\"",
            sb.path("bin/memtomem-server").display()
        )),
        "{receipt}"
    );
    let script = fs::read_to_string(sb.env_dir().join("bin/memtomem-server")).unwrap();
    assert!(
        script.contains(&format!("for {}/bin/python", sb.env_dir().display())),
        "{script}"
    );
    for (path, what) in sb.installation() {
        assert!(
            !what.contains(".mm-upgrade"),
            "{path} names the staging dir: {what}"
        );
    }
    assert_eq!(
        fs::read_link(sb.path("bin/memtomem-server")).unwrap(),
        sb.env_dir().join("bin/memtomem-server")
    );
    assert!(!exists(&sb.work_dir()), "the staging dir is gone");
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
                // The plan names both versions; nothing claims the servers are back.
                .and(predicate::str::contains("upgrade plan: 0.6.11 → 0.6.12"))
                .and(predicate::str::contains("needs a reconnect")),
        );
}

#[test]
fn a_version_that_cannot_be_staged_leaves_the_server_running() {
    let sb = Sandbox::new();
    let server = sb.server("s", &[]);
    let before = sb.installation();
    let doc = json_run(
        sb.upgrader().env("FAKE_UV_MODE", "no-such-version").args([
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
    assert_eq!(sb.installation(), before);
}

#[test]
fn a_failed_staging_stops_nothing_and_leaves_the_installation_as_it_was() {
    let sb = Sandbox::new();
    let server = sb.server("s", &[]);
    let before = sb.installation();
    let doc = json_run(
        sb.upgrader().env("FAKE_UV_MODE", "fail-install").args([
            "-y",
            "--json",
            "--version",
            "0.6.12",
        ]),
        5,
    );
    let err = doc["error"].as_str().unwrap();
    assert!(
        err.contains("cannot install memtomem[all]==0.6.12"),
        "{err}"
    );
    assert!(err.contains("Nothing was stopped"), "{err}");
    assert!(doc["stderr"].as_str().unwrap().contains("install exploded"));
    assert!(doc.get("killed").is_none(), "{doc}");
    assert!(server.alive());
    assert!(exists(&server.pid_file()));
    assert!(!server.events().contains("\"signal\""));
    // The old env, its receipt and the entry-point link: byte for byte.
    assert_eq!(sb.installation(), before);
    assert_eq!(sb.installed_versions(), ["0.6.11"]);
    assert!(!exists(&sb.work_dir()), "no staging dir is left");
}

#[test]
fn a_release_that_fails_its_proof_stops_nothing() {
    for (mode, why) in [
        ("broken-entry", "exited before answering initialize"),
        ("broken-python", "does not run (exit status 1)"),
    ] {
        let sb = Sandbox::new();
        let server = sb.server("s", &[]);
        let before = sb.installation();
        let doc = json_run(
            sb.upgrader()
                .env("FAKE_UV_MODE", mode)
                .args(["-y", "--json", "--version", "0.6.12"]),
            5,
        );
        let err = doc["error"].as_str().unwrap();
        assert!(
            err.contains("the staged memtomem 0.6.12 failed its proof")
                && err.contains(why)
                && err.contains("Nothing was stopped"),
            "{mode}: {err}"
        );
        assert_eq!(sb.uv_installs().len(), 1, "{mode}: staged once");
        assert!(server.alive(), "{mode}");
        assert!(exists(&server.pid_file()), "{mode}");
        assert!(!server.events().contains("\"signal\""), "{mode}");
        assert_eq!(sb.installation(), before, "{mode}");
        assert!(!exists(&sb.work_dir()), "{mode}: no staging dir is left");
    }
}

#[test]
fn a_new_environment_that_fails_its_check_in_place_is_exchanged_back() {
    // uv names an entry point it never wrote: the proof (the metadata and
    // the server answer) passes, the check after the switch does not.
    let sb = Sandbox::new();
    let server = sb.server("s", &[]);
    let before = sb.installation();
    let doc = json_run(
        sb.upgrader().env("FAKE_UV_MODE", "dangling-entry").args([
            "-y",
            "--json",
            "--version",
            "0.6.12",
        ]),
        5,
    );
    let err = doc["error"].as_str().unwrap();
    assert!(err.contains("does not resolve"), "{err}");
    assert!(err.contains("Rolled back"), "{err}");
    assert_eq!(doc["rolled_back"], true);
    assert_eq!(doc["killed"], serde_json::json!([server.pid()]));
    assert!(!server.alive());
    // The old env is back at its path (the same inode), and so are the links.
    assert_eq!(sb.installation(), before);
    assert!(!exists(&sb.path("bin/mm")));
    assert!(!exists(&sb.work_dir()));
}

#[test]
fn a_staging_that_outlasts_the_uv_timeout_stops_nothing() {
    let sb = Sandbox::new();
    let server = sb.server("s", &[]);
    let before = sb.installation();
    let doc = json_run(
        sb.upgrader().env("FAKE_UV_MODE", "slow-install").args([
            "-y",
            "--json",
            "--uv-timeout",
            "200ms",
            "--version",
            "0.6.12",
        ]),
        5,
    );
    let err = doc["error"].as_str().unwrap();
    assert!(
        err.contains("timed out") && err.contains("Nothing was stopped"),
        "{err}"
    );
    assert!(server.alive());
    assert_eq!(sb.installation(), before);
    assert!(!exists(&sb.work_dir()));
}

#[test]
fn an_entry_point_that_is_not_uvs_link_is_refused_before_anything_stops() {
    let elsewhere = |sb: &Sandbox| {
        let other = sb.path("other-memtomem-server");
        fs::write(&other, "#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink(&other, sb.path("bin/memtomem-server")).unwrap();
        "links to"
    };
    let a_file = |sb: &Sandbox| {
        fs::write(sb.path("bin/memtomem-server"), "#!/bin/sh\necho mine\n").unwrap();
        "is a file"
    };
    let cases: [&dyn Fn(&Sandbox) -> &'static str; 2] = [&elsewhere, &a_file];
    for replace in cases {
        let sb = Sandbox::new();
        fs::remove_file(sb.path("bin/memtomem-server")).unwrap();
        let why = replace(&sb);
        let server = sb.server("s", &[]);
        let before = sb.installation();
        let doc = json_run(
            sb.upgrader().args(["-y", "--json", "--version", "0.6.12"]),
            3,
        );
        let err = doc["error"].as_str().unwrap();
        assert!(
            err.contains(why) && err.contains("refusing to replace it"),
            "{err}"
        );
        assert!(err.contains(&sb.path("bin/memtomem-server").display().to_string()));
        assert!(server.alive(), "{err}");
        assert!(!server.events().contains("\"signal\""), "{err}");
        assert_eq!(sb.installation(), before, "{err}");
        assert!(!exists(&sb.work_dir()), "{err}");
    }
}

#[test]
fn a_hostile_receipt_is_refused_before_uv_runs() {
    let sb = Sandbox::new();
    let receipt = sb.receipt().replace(
        "{ name = \"memtomem\", extras = [\"all\"] }",
        "{ name = \"memtomem\", specifier = \"@ https://evil.example/x.whl\" }",
    );
    assert!(receipt.contains("evil"), "{receipt}");
    fs::write(sb.env_dir().join("uv-receipt.toml"), &receipt).unwrap();
    let server = sb.server("s", &[]);
    let before = sb.installation();
    let doc = json_run(
        sb.upgrader().args(["-y", "--json", "--version", "0.6.12"]),
        3,
    );
    let err = doc["error"].as_str().unwrap();
    assert!(
        err.contains("uv-receipt.toml") && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(sb.uv_installs().is_empty(), "{}", sb.uv_log());
    assert!(server.alive());
    assert_eq!(sb.installation(), before);
}

#[test]
fn uv_failure_is_reported_with_its_stderr() {
    let sb = Sandbox::new();
    sb.upgrader()
        .env("FAKE_UV_MODE", "fail-install")
        .args(["-y", "--version", "0.6.12"])
        .assert()
        .code(5)
        .stderr(
            predicate::str::contains("install exploded")
                .and(predicate::str::contains("rc=2"))
                .and(predicate::str::contains("Nothing was stopped")),
        );
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
    // The run lock is uv's own lock on its tool dir: a concurrent `uv tool
    // install` or a second mm-upgrade (whatever its runtime dir) holds it.
    let sb = Sandbox::new();
    let server = sb.server("s", &[]);
    let lock = sb.path("tools/.lock");
    let before = sb.installation();
    let holder = common::FlockHolder::hold(&lock);
    sb.upgrader()
        .args(["-y", "--version", "0.6.12"])
        .assert()
        .code(3)
        .stderr(
            predicate::str::contains("another uv tool command or mm-upgrade run holds")
                .and(predicate::str::contains(lock.display().to_string())),
        );
    assert!(server.alive());
    assert!(sb.uv_installs().is_empty());
    assert_eq!(sb.installation(), before);
    // Released, the same run goes through.
    drop(holder);
    sb.upgrader()
        .args(["-y", "--version", "0.6.12"])
        .assert()
        .code(0);
    assert_eq!(sb.installed_versions(), ["0.6.12"]);
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
    assert!(!server.events().contains("\"signal\""));
    assert_eq!(
        sb.uv_installs(),
        ["tool install --refresh-package memtomem memtomem[all]==0.6.12"]
    );
    assert_eq!(sb.installed_versions(), ["0.6.12"]);
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
    // panic past the discard or the rollback, or change the outcome.
    for (mode, version) in [
        ("no-such-version", "99.99.99"),
        ("fail-install", "0.6.12"),
        ("broken-entry", "0.6.12"),
        ("dangling-entry", "0.6.12"),
    ] {
        let mut outcomes = vec![];
        for (out, err) in [(Sink::Captured, Sink::Captured), (Sink::Full, Sink::Full)] {
            let sb = Sandbox::new();
            let server = sb.server("s", &[]);
            let before = sb.installation();
            let mut cmd = sb.upgrader_std();
            cmd.env("FAKE_UV_MODE", mode)
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
fn ctrl_c_while_staging_stops_uv_and_changes_nothing() {
    let sb = Sandbox::new();
    let server = sb.server("s", &[]);
    let before = sb.installation();
    let up = spawn_upgrader(&sb, "hang-install");
    // uv has written half an env into the staging dir and hangs.
    common::wait_for("the staging call", || exists(&sb.path("uv.hanging")));
    assert!(exists(&sb.work_dir()));
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
    assert!(doc["error"]
        .as_str()
        .unwrap()
        .contains("Nothing was stopped"));
    assert!(server.alive());
    assert!(exists(&server.pid_file()));
    assert!(!server.events().contains("\"signal\""));
    assert_eq!(sb.uv_installs().len(), 1);
    assert_eq!(sb.installation(), before);
    assert!(!exists(&sb.work_dir()), "the staging dir is gone");
}

#[test]
fn a_killed_upgrader_takes_its_uv_along_and_the_next_run_cleans_the_staging() {
    let sb = Sandbox::new();
    let server = sb.server("s", &[]);
    let before = sb.installation();
    let up = spawn_upgrader(&sb, "hang-install");
    common::wait_for("the staging call", || {
        fs::read_to_string(sb.path("uv.hanging")).is_ok_and(|t| t.ends_with('\n'))
    });
    let uv_pid: i32 = fs::read_to_string(sb.path("uv.hanging"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(common::alive(uv_pid));
    unsafe { libc::kill(up.0.id() as i32, libc::SIGKILL) };
    let (code, _) = finish_killed(up);
    assert_eq!(code, None, "mm-upgrade was not killed");
    // uv dies with its parent: it never writes on into the staging dir.
    common::wait_for("uv to die with mm-upgrade", || !common::alive(uv_pid));
    assert!(exists(&sb.work_dir()), "the killed run left its staging");
    assert!(server.alive(), "nothing was stopped");
    assert_eq!(sb.installation(), before);
    // `recover` removes what the killed run left; the installation is as it was.
    sb.upgrader()
        .args(["recover", "--json"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("\"recovered\": \"discarded\""));
    assert!(!exists(&sb.work_dir()));
    assert_eq!(sb.installation(), before);
}

fn finish_killed(mut up: Upgrader) -> (Option<i32>, String) {
    let mut out = String::new();
    let _ = std::io::Read::read_to_string(up.0.stdout.as_mut().unwrap(), &mut out);
    (up.0.wait().unwrap().code(), out)
}

#[test]
fn ctrl_c_during_the_stop_and_switch_is_held_until_the_upgrade_is_done() {
    let sb = Sandbox::new();
    // On SIGTERM it stays up (and locked) for a while: the window in which
    // the interrupt arrives.
    let server = sb.server("s", &["--mode", "slow-shutdown=1500"]);
    let up = spawn_upgrader(&sb, "ok");
    common::wait_for("the server to be signalled", || {
        server.events().contains("\"signal\":\"SIGTERM\"")
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
    assert_eq!(sb.installed_versions(), ["0.6.12"]);
    assert_eq!(
        fs::read_link(sb.path("bin/memtomem-server")).unwrap(),
        sb.env_dir().join("bin/memtomem-server")
    );
    assert!(!exists(&sb.work_dir()), "nothing is left half-done");
}

#[test]
fn staging_keeps_the_receipts_python_and_with_requirements() {
    let sb = Sandbox::new();
    // What `uv tool install --python /x/python3.12 --with packaging
    // memtomem[all]` recorded.
    let receipt = sb.receipt().replace(
        "requirements = [\n    { name = \"memtomem\", extras = [\"all\"] },\n]\n",
        "requirements = [\n    { name = \"memtomem\", extras = [\"all\"] },\n    { name = \"packaging\" },\n]\npython = \"/x/python3.12\"\n",
    );
    assert!(receipt.contains("packaging"), "{receipt}");
    fs::write(sb.env_dir().join("uv-receipt.toml"), &receipt).unwrap();
    let server = sb.server("s", &[]);
    let doc = json_run(
        sb.upgrader().args(["-y", "--json", "--version", "0.6.12"]),
        0,
    );
    assert_eq!(doc["killed"], serde_json::json!([server.pid()]));
    assert_eq!(
        sb.uv_installs(),
        ["tool install --refresh-package memtomem --python /x/python3.12 --with packaging memtomem[all]==0.6.12"]
    );
    // The new receipt keeps the user's choices, and names the real bin dir.
    let new = sb.receipt();
    assert!(
        new.contains("{ name = \"memtomem\", extras = [\"all\"], specifier = \"==0.6.12\" }"),
        "{new}"
    );
    assert!(new.contains("{ name = \"packaging\" }"), "{new}");
    assert!(new.contains("python = \"/x/python3.12\""), "{new}");
    assert!(
        new.contains(&format!(
            "install-path = \"{}\"",
            sb.path("bin/memtomem-server").display()
        )),
        "{new}"
    );
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
