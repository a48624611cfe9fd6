#![allow(dead_code)]
//! Support of the host and reap tests (tests/cli_hosts.rs, tests/cli_reap.rs,
//! tests/schemas.rs, included with `#[path]`): fake servers launched the way
//! hosts launch them, an orphaned one, and a run's text.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::common::{fake_server_bin, Sandbox};

/// `program` set up to run a fake server in the sandbox (runtime dir, ready
/// file, HOME), stdin a pipe, in a process group of its own. `program` is
/// fake-server itself, or a launcher given fake-server as an argument.
pub fn fake_server_cmd(mut program: Command, sb: &Sandbox, ready: &Path) -> Command {
    if program.get_program() != fake_server_bin().as_os_str() {
        program.arg(fake_server_bin());
    }
    program
        .arg("--runtime-dir")
        .arg(sb.rt())
        .arg("--ready-file")
        .arg(ready)
        .env("HOME", sb.path("home"))
        .env_remove("MEMTOMEM_STORAGE__SQLITE_PATH")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    program
}

/// Run, check the exit code, and return stdout as text.
pub fn text_run(cmd: &mut assert_cmd::Command, code: i32) -> String {
    let out = cmd.assert().code(code).get_output().stdout.clone();
    String::from_utf8_lossy(&out).into_owned()
}

/// An orphaned fake server (`--mode orphan`: it registers, then its parent
/// exits). `Sandbox::server` takes the launcher's exit before the ready file
/// for a failure; here that exit is the point, and readiness is the ready
/// file the orphan writes once its parent is gone.
pub struct Orphan {
    launcher: Child,
    pub info: serde_json::Value,
}

impl Orphan {
    pub fn start(sb: &Sandbox, name: &str) -> Orphan {
        Orphan::start_with(sb, name, &[])
    }
    /// The same with more fake-server arguments (`--mode many=3`: its
    /// secondaries are orphans too).
    pub fn start_with(sb: &Sandbox, name: &str, args: &[&str]) -> Orphan {
        let ready = sb.path(&format!("{name}.ready"));
        let mut launcher = fake_server_cmd(Command::new(fake_server_bin()), sb, &ready);
        let launcher = launcher
            .args(["--mode", "orphan"])
            .args(args)
            .spawn()
            .expect("spawn fake-server --mode orphan");
        let mut o = Orphan {
            launcher,
            info: serde_json::Value::Null,
        };
        testkit::wait_for("the orphan's ready file", Duration::from_secs(20), || {
            ready.exists()
        });
        o.info = serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
        o
    }
    pub fn pid(&self) -> i32 {
        self.info["pid"].as_i64().unwrap() as i32
    }
    pub fn pid_file(&self) -> PathBuf {
        PathBuf::from(self.info["pid_file"].as_str().unwrap())
    }
    pub fn alive(&self) -> bool {
        testkit::proc::running(self.pid())
    }
}

impl Drop for Orphan {
    fn drop(&mut self) {
        // It kept the launcher's process group (no setsid).
        testkit::kill_group(self.launcher.id() as i32, libc::SIGKILL);
        if !self.info.is_null() && self.pid() > 1 {
            // SAFETY: the orphan this test started.
            unsafe { libc::kill(self.pid(), libc::SIGKILL) };
        }
        let _ = self.launcher.wait();
    }
}
