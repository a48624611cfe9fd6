//! Against the real memtomem (issue 12, point 2): a plugin-style pinned server,
//! `uvx --offline --from memtomem==0.6.11 memtomem-server` (uvx execs `uv tool
//! uvx`, which runs the server from an env in uv's cache), beside an installed
//! 0.6.12. `status` reads its version from that cache env's own metadata,
//! names the `~/.claude.json` entry that launches it and the pin to change,
//! and exits 6 (old code). Sandboxed: its own HOME, runtime dir (memtomem's
//! test hook) and tool dir; the warm uv cache of scripts/memtomem-env.sh.

#![cfg(feature = "real-memtomem")]

#[path = "common/testenv.rs"]
mod testenv;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::Group;

#[test]
fn status_reads_a_real_uvx_pinned_servers_version_and_names_its_config_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |rel: &str| tmp.path().join(rel);
    for d in ["home", "rt", "tools", "bin"] {
        fs::create_dir_all(p(d)).unwrap();
    }
    fs::set_permissions(p("rt"), fs::Permissions::from_mode(0o700)).unwrap();
    // This installation: 0.6.12.
    let mut install = Command::new("bash");
    install
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-memtomem.sh"))
        .arg(p("tools"))
        .arg(p("bin"))
        .arg("0.6.12")
        .env("HOME", p("home"))
        .stdin(Stdio::null());
    let out = testenv::apply(&mut install).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let args = ["--offline", "--from", "memtomem==0.6.11", "memtomem-server"];
    fs::write(
        p("home/.claude.json"),
        serde_json::json!({"mcpServers": {"memtomem": {"command": "uvx", "args": args}}})
            .to_string(),
    )
    .unwrap();
    // The host's launch, in a group the test owns (killed on drop); stdin
    // stays open, as a host's pipe does.
    let uvx = testenv::uv().with_file_name("uvx");
    let mut cmd = Command::new(&uvx);
    cmd.args(args)
        .env("HOME", p("home"))
        .env("_MEMTOMEM_TEST_RUNTIME_DIR", p("rt"))
        .env("PYTEST_CURRENT_TEST", "real_foreign")
        .env_remove("MEMTOMEM_STORAGE__SQLITE_PATH")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let mut child = testenv::apply(&mut cmd).spawn().unwrap();
    let _group = Group(child.id() as i32);
    let registered = || {
        fs::read_dir(p("rt"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("server-"))
    };
    testkit::wait_for("the uvx server's pid file", Duration::from_secs(90), || {
        assert!(child.try_wait().unwrap().is_none(), "uvx exited early");
        registered()
    });

    let mut status = Command::new(env!("CARGO_BIN_EXE_mm-upgrade"));
    status
        .args(["status", "--json", "--runtime-dir"])
        .arg(p("rt"))
        .arg("--home")
        .arg(p("home"))
        .arg("--uv")
        .arg(testenv::uv())
        .env("UV_TOOL_DIR", p("tools"))
        .env("UV_TOOL_BIN_DIR", p("bin"))
        .stdin(Stdio::null());
    let out = testenv::apply(&mut status).output().unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(out.status.code(), Some(6), "{doc}");
    assert_eq!(doc["installed_version"], "0.6.12", "{doc}");
    let o = &doc["other_installations"][0];
    assert_eq!(o["version"], "0.6.11", "{doc}");
    assert_eq!(o["old_code"], true);
    assert!(
        o["installation"].as_str().unwrap().contains("archive-v0"),
        "{o}"
    );
    assert!(
        o["launcher"]
            .as_str()
            .unwrap()
            .contains("uv tool uvx --offline"),
        "{o}"
    );
    let c = &o["configs"][0];
    assert_eq!(c["file"], p("home/.claude.json").display().to_string());
    assert_eq!(c["entry"], "mcpServers.memtomem");
    assert_eq!(
        c["change"],
        "args[2]: \"memtomem==0.6.11\" → \"memtomem==0.6.12\""
    );
}
