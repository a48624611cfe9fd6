//! Helpers of the unit tests that drive real processes.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::paths::PathEnv;
use crate::pidfile::{self, Probe};
use crate::sys::{self, Pid};

/// A child process killed (with its group) and reaped on drop.
pub struct Proc(pub Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        Proc(
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap(),
        )
    }
    pub fn pid(&self) -> Pid {
        self.0.id() as Pid
    }
    /// Wait until the exec happened: its argv is `want`.
    pub fn exec_done(self, want: &[&str]) -> Proc {
        let pid = self.pid();
        wait_for(|| sys::Processes::cmdline(sys::real(), pid) == want, "exec");
        self
    }
}

pub fn wait_for(mut ok: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A private runtime dir and HOME for discovery (never the real ones).
pub struct Rt {
    pub tmp: tempfile::TempDir,
    pub env: PathEnv,
}
impl Rt {
    pub fn new() -> Rt {
        let tmp = tempfile::tempdir().unwrap();
        let rt = tmp.path().join("rt");
        fs::create_dir(&rt).unwrap();
        fs::set_permissions(&rt, fs::Permissions::from_mode(0o700)).unwrap();
        let env = PathEnv {
            euid: sys::euid(),
            home: tmp.path().join("home"),
            runtime_override: Some(rt),
            ..Default::default()
        };
        Rt { tmp, env }
    }
    pub fn rt(&self, name: &str) -> PathBuf {
        self.tmp.path().join("rt").join(name)
    }
    pub fn file(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

/// `flock -x <file> sleep 30`: another program holding a BSD lock
/// (flock(1) and its child both hold it).
pub fn lock_holder(file: &Path) -> Proc {
    let p = Proc::spawn(
        Command::new("flock")
            .arg("-x")
            .arg(file)
            .args(["sleep", "30"]),
    );
    wait_for(
        || matches!(pidfile::probe(file), Probe::Held { .. }),
        "the lock",
    );
    p
}
