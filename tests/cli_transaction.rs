//! The staged transaction end to end with the stand-in uv: staging, the
//! proof, the switch and its rollback, uv's tool lock, interrupts and kills,
//! the receipt's choices. Each test in its own sandbox.

mod common;

use std::fs;

use common::{exists, json_run, Sandbox};
use predicates::prelude::*;

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
    // One uv call, into a staging dir (fake-uv refuses any other: FAKE_UV_STAGE_ONLY).
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
        script.contains(&format!("# python: {}/bin/python", sb.env_dir().display())),
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

/// `mm-upgrade -y --json ARGS` with fake-uv's `FAKE_UV_BEHAVIOR` `mode`, one live
/// server, exit `code`; checks what every failure before the stop must
/// leave: the server untouched (alive, its pid file, never signalled), the
/// installation byte for byte as it was, no staging dir. Returns the JSON
/// and the sandbox for the case's own checks.
fn fails_before_any_stop(mode: &str, args: &[&str], code: i32) -> (serde_json::Value, Sandbox) {
    let sb = Sandbox::new();
    let server = sb.server("s", &[]);
    let before = sb.installation();
    let mut argv = vec!["-y", "--json"];
    argv.extend_from_slice(args);
    let doc = json_run(
        sb.upgrader().env("FAKE_UV_BEHAVIOR", mode).args(&argv),
        code,
    );
    let case = format!("{mode} {args:?}");
    assert!(server.alive(), "{case}: {doc}");
    assert!(exists(&server.pid_file()), "{case}");
    assert!(!server.events().contains("\"signal\""), "{case}");
    assert!(doc.get("killed").is_none(), "{case}: {doc}");
    assert_eq!(sb.installation(), before, "{case}");
    assert!(!exists(&sb.work_dir()), "{case}: no staging dir is left");
    assert!(
        doc["error"]
            .as_str()
            .unwrap()
            .contains("Nothing was stopped"),
        "{case}: {doc}"
    );
    (doc, sb)
}

#[test]
fn a_version_that_cannot_be_staged_leaves_the_server_running() {
    let (doc, _) = fails_before_any_stop("unresolvable", &["--version", "99.99.99"], 5);
    assert!(doc["stderr"].as_str().unwrap().contains("99.99.99"));
}

#[test]
fn a_failed_staging_stops_nothing_and_leaves_the_installation_as_it_was() {
    let (doc, sb) = fails_before_any_stop(
        "fail:2:error: install exploded",
        &["--version", "0.6.12"],
        5,
    );
    let err = doc["error"].as_str().unwrap();
    assert!(
        err.contains("cannot install memtomem[all]==0.6.12"),
        "{err}"
    );
    assert!(doc["stderr"].as_str().unwrap().contains("install exploded"));
    assert_eq!(sb.installed_versions(), ["0.6.11"]);
}

#[test]
fn a_release_that_fails_its_proof_stops_nothing() {
    for (mode, why) in [
        ("broken-entry", "exited before answering initialize"),
        ("broken-python", "does not run (exit status 1)"),
    ] {
        let (doc, sb) = fails_before_any_stop(mode, &["--version", "0.6.12"], 5);
        let err = doc["error"].as_str().unwrap();
        assert!(
            err.contains("the staged memtomem 0.6.12 failed its proof") && err.contains(why),
            "{mode}: {err}"
        );
        assert_eq!(sb.uv_installs().len(), 1, "{mode}: staged once");
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
        sb.upgrader()
            .env("FAKE_UV_BEHAVIOR", "dangling-entry")
            .args(["-y", "--json", "--version", "0.6.12"]),
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
    // The old `mm` link is back and resolves into the old environment: the
    // new one never wrote it.
    assert_eq!(
        fs::read_link(sb.path("bin/mm")).unwrap(),
        sb.env_dir().join("bin/mm")
    );
    assert!(exists(&sb.env_dir().join("bin/mm")));
    assert!(!exists(&sb.work_dir()));
}

#[test]
fn a_staging_that_outlasts_the_uv_timeout_stops_nothing() {
    let args = ["--uv-timeout", "200ms", "--version", "0.6.12"];
    // A staging that takes 50 times the bound: a loaded machine that stalls mm-upgrade
    // for a second still finds uv running when it looks (1 s here made 1 in 70 stress
    // iterations see a finished staging).
    let (doc, _) = fails_before_any_stop("sleep:10000", &args, 5);
    assert!(
        doc["error"].as_str().unwrap().contains("timed out"),
        "{doc}"
    );
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
    sb.edit_receipt(
        "{ name = \"memtomem\", extras = [\"all\"] }",
        "{ name = \"memtomem\", specifier = \"@ https://evil.example/x.whl\" }",
    );
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
        .env("FAKE_UV_BEHAVIOR", "fail:2:error: install exploded")
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
        .env("FAKE_UV_BEHAVIOR", mode)
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
    let up = spawn_upgrader(&sb, "hang-half-written");
    // uv has written half an env into the staging dir and hangs.
    common::wait_for("the staging call", || sb.uv_hanging_pid().is_some());
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
    let up = spawn_upgrader(&sb, "hang-half-written");
    common::wait_for("the staging call", || sb.uv_hanging_pid().is_some());
    let uv_pid = sb.uv_hanging_pid().unwrap();
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
    let up = spawn_upgrader(&sb, "succeed");
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
    sb.edit_receipt(
        "requirements = [{ name = \"memtomem\", extras = [\"all\"] }]\n",
        "requirements = [\n    { name = \"memtomem\", extras = [\"all\"] },\n    { name = \"packaging\" },\n]\npython = \"/x/python3.12\"\n",
    );
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

/// `--reinstall` of the installed version says so; it read "Installed
/// memtomem 0.6.11 → 0.6.11", an upgrade that was none.
#[test]
fn a_reinstall_of_the_installed_version_is_called_a_reinstall() {
    let sb = Sandbox::new();
    let out = sb
        .upgrader()
        .args(["-y", "--reinstall", "--version", "0.6.11"])
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("memtomem reinstall plan: 0.6.11, the installed version\n"),
        "{text}"
    );
    assert!(text.contains("Reinstalled memtomem 0.6.11 ("), "{text}");
    assert!(!text.contains("→ 0.6.11"), "{text}");
}
