//! Test harness: every fake runs in its own process group owned by the test, in a temp
//! runtime dir and temp HOME; the guard SIGKILLs the group (and any escaped daemon) and
//! reaps on drop, panics included.
#![allow(dead_code, unused_imports)]

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

pub const BIN: &str = env!("CARGO_BIN_EXE_fake-server");
pub const DEADLINE: Duration = Duration::from_secs(10);

pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub home: PathBuf,
    pub rt: PathBuf,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir(&home).unwrap();
        let rt = dir.path().join("rt");
        Sandbox { dir, home, rt }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A command with a clean, sandboxed environment and umask 022 (as observed upstream).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("HOME", &self.home)
            .env_remove("MEMTOMEM_STORAGE__SQLITE_PATH")
            .env_remove("FAKE_SERVER_RUNTIME_DIR")
            .env_remove("FAKE_SERVER_EVENTS")
            .env_remove("_MEMTOMEM_TEST_RUNTIME_DIR")
            .env_remove("PYTEST_CURRENT_TEST")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .process_group(0);
        // SAFETY: umask is async-signal-safe.
        unsafe {
            c.pre_exec(|| {
                libc::umask(0o022);
                Ok(())
            });
        }
        c
    }

    /// The fake-server command with `--runtime-dir`, `--ready-file` and `--events` in the
    /// sandbox (stderr to `<tag>.stderr`), and those three files.
    fn tagged(&self, tag: &str, args: &[&str]) -> (Command, PathBuf, PathBuf, PathBuf) {
        let ready = self.path(&format!("{tag}.ready"));
        let events = self.path(&format!("{tag}.events"));
        let stderr = self.path(&format!("{tag}.stderr"));
        let mut c = self.command(args);
        c.arg("--runtime-dir")
            .arg(&self.rt)
            .arg("--ready-file")
            .arg(&ready)
            .arg("--events")
            .arg(&events)
            .stderr(File::create(&stderr).unwrap());
        (c, ready, events, stderr)
    }

    /// Spawns with `--runtime-dir`, `--ready-file` and `--events` in the sandbox.
    pub fn spawn(&self, tag: &str, args: &[&str]) -> Proc {
        let (c, ready, events, stderr) = self.tagged(tag, args);
        Proc::start(c, ready, events, stderr)
    }
}

pub struct Proc {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub pgid: i32,
    pub ready: PathBuf,
    pub events: PathBuf,
    pub stderr: PathBuf,
    /// Processes that may have left our group (daemons): killed by pid on drop.
    pub escaped: Vec<i32>,
    pub status: Option<ExitStatus>,
}

impl Proc {
    pub fn start(mut c: Command, ready: PathBuf, events: PathBuf, stderr: PathBuf) -> Proc {
        let mut child = c.spawn().expect("spawn fake-server");
        let stdin = child.stdin.take();
        let pgid = child.id() as i32;
        Proc {
            child,
            stdin,
            pgid,
            ready,
            events,
            stderr,
            escaped: Vec::new(),
            status: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Polls (5 ms) for a ready file that satisfies `pred`.
    pub fn ready_where(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(&self.ready) {
                if let Ok(v) = serde_json::from_str::<Value>(&text) {
                    for p in v["pids"].as_array().into_iter().flatten() {
                        let p = p.as_i64().unwrap() as i32;
                        if !self.escaped.contains(&p) {
                            self.escaped.push(p);
                        }
                    }
                    if pred(&v) {
                        return v;
                    }
                }
            }
            if start.elapsed() > DEADLINE {
                panic!(
                    "not ready within {DEADLINE:?}; stderr: {}",
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn ready(&mut self) -> Value {
        self.ready_where(|_| true)
    }

    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        if self.status.is_some() {
            return self.status;
        }
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                self.status = Some(s);
                return Some(s);
            }
            if start.elapsed() > within {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn events(&self) -> Vec<Value> {
        read_events(&self.events)
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        testkit::kill_group(self.pgid, libc::SIGKILL);
        for p in &self.escaped {
            // Only our own binary: never a recycled pid that now names something else.
            if *p > 1 && is_fake_server(*p) {
                // SAFETY: a pid this test's fake reported, checked to be fake-server.
                unsafe { libc::kill(*p, libc::SIGKILL) };
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn is_fake_server(pid: i32) -> bool {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let me = std::fs::canonicalize(BIN).ok();
    exe.is_some() && exe == me
}

pub fn read_events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("event line is JSON"))
        .collect()
}

pub use testkit::flock::is_locked;
/// `kill(pid, 0)` succeeds (a zombie counts).
pub use testkit::proc::exists as alive;
/// The state letter from /proc/<pid>/stat (R, S, T, Z, ...).
pub use testkit::proc::state as proc_state;
pub use testkit::wait_until;

pub fn kill(pid: i32, sig: libc::c_int) {
    // SAFETY: signalling a process this test started.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

pub fn digest_of(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `YYYY-MM-DDTHH:MM:SS(.ffffff)?+00:00`
pub fn is_iso_stamp(s: &str) -> bool {
    let b = s.as_bytes();
    let d = |i: usize| b.get(i).is_some_and(|c| c.is_ascii_digit());
    let fixed = b.len() >= 25
        && (0..4).all(d)
        && b[4] == b'-'
        && d(5)
        && d(6)
        && b[7] == b'-'
        && d(8)
        && d(9)
        && b[10] == b'T'
        && d(11)
        && d(12)
        && b[13] == b':'
        && d(14)
        && d(15)
        && b[16] == b':'
        && d(17)
        && d(18);
    if !fixed {
        return false;
    }
    let rest = &s[19..];
    let rest = match rest.strip_prefix('.') {
        Some(r) if r.len() >= 6 && r[..6].bytes().all(|c| c.is_ascii_digit()) => &r[6..],
        Some(_) => return false,
        None => rest,
    };
    rest == "+00:00"
}

/// `^<pid>\n\n<stamp>\n$`
pub fn assert_server_payload(bytes: &[u8], pid: i32) -> String {
    let text = std::str::from_utf8(bytes).expect("utf-8 payload");
    let rest = text
        .strip_prefix(&format!("{pid}\n\n"))
        .unwrap_or_else(|| panic!("payload {text:?} does not start with {pid}\\n\\n"));
    let stamp = rest.strip_suffix('\n').expect("trailing newline");
    assert!(is_iso_stamp(stamp), "bad stamp {stamp:?}");
    stamp.to_string()
}

/// `<pid>-<ppid>-<16 hex>-<8 hex>-<8 hex>.lock`
pub fn marker_fields(name: &str) -> Option<(i32, i32, String, String, String)> {
    let stem = name.strip_suffix(".lock")?;
    let p: Vec<&str> = stem.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    };
    if p.len() != 5 || !hex(p[2], 16) || !hex(p[3], 8) || !hex(p[4], 8) {
        return None;
    }
    Some((
        p[0].parse().ok()?,
        p[1].parse().ok()?,
        p[2].into(),
        p[3].into(),
        p[4].into(),
    ))
}

pub fn mode_bits(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

pub fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub fn ready_path(v: &Value, key: &str) -> Option<PathBuf> {
    v[key].as_str().map(PathBuf::from)
}

// ---------------------------------------------------------------------------------------
// MCP over stdio, as a client sees it.

impl Sandbox {
    /// Like `spawn`, with stdout piped to an MCP client.
    pub fn spawn_mcp(&self, tag: &str, args: &[&str]) -> (Proc, Mcp) {
        self.spawn_mcp_with(tag, args, |_| {})
    }

    /// `spawn_mcp`, after `f` adjusts the command (environment, say).
    pub fn spawn_mcp_with(
        &self,
        tag: &str,
        args: &[&str],
        f: impl FnOnce(&mut Command),
    ) -> (Proc, Mcp) {
        let (mut c, ready, events, stderr) = self.tagged(tag, args);
        c.stdout(Stdio::piped());
        f(&mut c);
        let mut p = Proc::start(c, ready, events, stderr);
        let mcp = Mcp::new(p.child.stdout.take().expect("piped stdout"));
        (p, mcp)
    }
}

/// The reading side of an MCP client: a thread hands over each stdout line.
pub struct Mcp {
    rx: std::sync::mpsc::Receiver<String>,
}

impl Mcp {
    pub fn new(out: impl std::io::Read + Send + 'static) -> Mcp {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Mcp { rx }
    }

    /// Writes one message as a line on the server's stdin.
    pub fn send(p: &mut Proc, msg: &Value) {
        use std::io::Write;
        let stdin = p.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{msg}").expect("write to the server's stdin");
        stdin.flush().unwrap();
    }

    /// The next line on stdout, raw, if one comes `within`.
    pub fn recv_raw(&self, within: Duration) -> Option<String> {
        self.rx.recv_timeout(within).ok()
    }

    pub fn recv(&self, within: Duration) -> Option<Value> {
        self.recv_raw(within)
            .map(|l| serde_json::from_str(&l).expect("one JSON object per line"))
    }

    /// Sends a request and returns the answer (the next line), panicking without one.
    pub fn request(&self, p: &mut Proc, msg: &Value) -> Value {
        Mcp::send(p, msg);
        self.recv(DEADLINE).unwrap_or_else(|| {
            panic!(
                "no answer to {msg} within {DEADLINE:?}; stderr: {}",
                p.stderr_text()
            )
        })
    }
}

/// An `initialize` request asking for protocol revision `version`.
pub fn initialize(id: u64, version: &str) -> Value {
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "initialize",
        "params": {
            "protocolVersion": version,
            "capabilities": {},
            "clientInfo": {"name": "fake-server-tests", "version": "1"},
        },
    })
}

pub fn rpc(id: u64, method: &str) -> Value {
    serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method})
}
