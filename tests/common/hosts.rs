#![allow(dead_code)]
//! An orphaned fake server (`--mode orphan`: it registers, then its parent
//! exits). `Sandbox::server` takes the launcher's exit before the ready file
//! for a failure; here that exit is the point, and readiness is the ready
//! file the orphan writes once its parent is gone. Included with `#[path]`
//! by the tests that need it (tests/cli_hosts.rs, tests/cli_reap.rs).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::common::{fake_server_bin, Sandbox};

pub struct Orphan {
    launcher: Child,
    pub info: serde_json::Value,
}

impl Orphan {
    pub fn start(sb: &Sandbox, name: &str) -> Orphan {
        let ready = sb.path(&format!("{name}.ready"));
        let launcher = Command::new(fake_server_bin())
            .arg("--runtime-dir")
            .arg(sb.rt())
            .arg("--ready-file")
            .arg(&ready)
            .args(["--mode", "orphan"])
            .env("HOME", sb.path("home"))
            .env_remove("MEMTOMEM_STORAGE__SQLITE_PATH")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
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
