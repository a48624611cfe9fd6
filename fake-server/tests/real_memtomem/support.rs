//! The real memtomem of these tests, and how real and fake are started and compared:
//! memtomem's runtime-dir override, the pid file handshake, the on-disk shape.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

pub const VERSION: &str = "0.6.12";

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The real memtomem: `memtomem-server` and `mm` of one installation.
pub struct Real {
    pub server: PathBuf,
    pub mm: PathBuf,
    /// uv's tool dir of that installation (what the stand-in `uv tool dir` answers).
    pub tools: PathBuf,
    pub _scratch: Option<tempfile::TempDir>,
}

impl Real {
    pub fn get() -> Real {
        if let Some(bin) = std::env::var_os("MEMTOMEM_SERVER_BIN").filter(|v| !v.is_empty()) {
            let server = PathBuf::from(bin);
            assert!(
                server.is_file(),
                "MEMTOMEM_SERVER_BIN={} is not a file",
                server.display()
            );
            let mm = server.with_file_name("mm");
            assert!(
                mm.is_file(),
                "MEMTOMEM_SERVER_BIN={} has no `mm` next to it (needed to run memtomem's own mm upgrade)",
                server.display()
            );
            let tools = fs::canonicalize(&server)
                .ok()
                .and_then(|p| Some(p.parent()?.parent()?.parent()?.to_path_buf()))
                .unwrap_or_else(|| PathBuf::from("/nonexistent"));
            return Real {
                server,
                mm,
                tools,
                _scratch: None,
            };
        }
        let dir = tempfile::Builder::new()
            .prefix("fake-vs-real-")
            .tempdir()
            .unwrap();
        let (tools, bin) = (dir.path().join("tools"), dir.path().join("bin"));
        let script = repo().join("scripts/install-memtomem.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(&tools)
            .arg(&bin)
            .arg(VERSION)
            .env("HOME", dir.path())
            .env_remove("UV_TOOL_DIR")
            .env_remove("UV_TOOL_BIN_DIR")
            .stdin(Stdio::null())
            .output()
            .expect("run bash");
        assert!(
            out.status.success(),
            "MEMTOMEM_SERVER_BIN is unset, and installing the real memtomem=={VERSION} with \
             `bash {} TOOLS BIN {VERSION}` failed ({}). It needs Python 3.12 and PyPI access on \
             first use (see scripts/memtomem-env.sh):\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Real {
            server: bin.join("memtomem-server"),
            mm: bin.join("mm"),
            tools,
            _scratch: Some(dir),
        }
    }
}

/// Real and fake both honour memtomem's test override of the runtime dir.
pub fn with_override(c: &mut Command, home: &Path, rt: &Path) {
    c.env("HOME", home)
        .env("_MEMTOMEM_TEST_RUNTIME_DIR", rt)
        .env("PYTEST_CURRENT_TEST", "1")
        .env_remove("MEMTOMEM_STORAGE__SQLITE_PATH")
        .env_remove("FAKE_SERVER_RUNTIME_DIR")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("TMPDIR");
}

pub fn spawn_with_override(bin: &Path, args: &[&str], sb: &Sandbox, rt: &Path, tag: &str) -> Proc {
    spawn_override_to(bin, args, sb, rt, tag, Stdio::null())
}

/// `spawn_with_override` with stdout piped to an MCP client.
pub fn spawn_mcp_with_override(
    bin: &Path,
    args: &[&str],
    sb: &Sandbox,
    rt: &Path,
    tag: &str,
) -> (Proc, Mcp) {
    let mut p = spawn_override_to(bin, args, sb, rt, tag, Stdio::piped());
    let mcp = Mcp::new(p.child.stdout.take().unwrap());
    (p, mcp)
}

pub fn spawn_override_to(
    bin: &Path,
    args: &[&str],
    sb: &Sandbox,
    rt: &Path,
    tag: &str,
    stdout: Stdio,
) -> Proc {
    let mut c = Command::new(bin);
    c.args(args);
    with_override(&mut c, &sb.home, rt);
    let log = sb.path(&format!("{tag}.stderr"));
    c.stdin(Stdio::piped())
        .stdout(stdout)
        .stderr(File::create(&log).unwrap());
    std::os::unix::process::CommandExt::process_group(&mut c, 0);
    // SAFETY: umask is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut c, || {
            libc::umask(0o022);
            Ok(())
        });
    }
    Proc::start(
        c,
        sb.path(&format!("{tag}.ready")),
        sb.path(&format!("{tag}.events")),
        log,
    )
}

/// A fake in default mode (plus `extra`) with ready file and events in the sandbox.
pub fn spawn_fake(sb: &Sandbox, rt: &Path, tag: &str, extra: &[&str]) -> Proc {
    let ready = sb.path(&format!("{tag}.ready"));
    let events = sb.path(&format!("{tag}.events"));
    let mut args: Vec<String> = vec![
        "--ready-file".into(),
        ready.display().to_string(),
        "--events".into(),
        events.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = spawn_with_override(Path::new(BIN), &args, sb, rt, tag);
    p.ready();
    p
}

/// Waits for the pid file in `rt` naming `pid` with its lock held.
pub fn wait_pid_file(p: &mut Proc, rt: &Path, within: Duration) -> PathBuf {
    let pid = p.pid();
    let start = Instant::now();
    loop {
        for n in list(rt).into_iter().filter(|n| n.ends_with(".pid")) {
            let path = rt.join(&n);
            let first = fs::read_to_string(&path)
                .ok()
                .and_then(|t| t.lines().next().map(str::to_string));
            if first.as_deref() == Some(pid.to_string().as_str()) && is_locked(&path) {
                return path;
            }
        }
        if let Some(st) = p.wait_exit(Duration::ZERO) {
            panic!(
                "pid {pid} exited before it was ready ({st}): {}",
                p.stderr_text()
            );
        }
        assert!(
            start.elapsed() < within,
            "pid {pid} wrote no locked pid file in {} within {within:?}: {}",
            rt.display(),
            p.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub struct Shape {
    pub pid_file_name: String,
    pub payload_ok: bool,
    pub pid_mode: u32,
    pub rt_mode: u32,
    pub marker_mode: u32,
    pub marker_len: u64,
    pub marker_digest: String,
    pub marker_pid_matches: bool,
    pub rt_entries: Vec<String>,
}

pub fn shape(rt: &Path, pid: i32) -> Shape {
    let pids: Vec<String> = list(rt)
        .into_iter()
        .filter(|n| n.ends_with(".pid"))
        .collect();
    assert_eq!(pids.len(), 1, "{pids:?}");
    let pid_path = rt.join(&pids[0]);
    let payload = fs::read(&pid_path).unwrap();
    let payload_ok = std::panic::catch_unwind(|| assert_server_payload(&payload, pid)).is_ok();
    let markers = list(&rt.join("presence"));
    assert_eq!(markers.len(), 1, "{markers:?}");
    let m = rt.join("presence").join(&markers[0]);
    let (mpid, _, digest, _, _) = marker_fields(&markers[0]).expect("marker grammar");
    Shape {
        pid_file_name: pids[0].clone(),
        payload_ok,
        pid_mode: mode_bits(&pid_path),
        rt_mode: mode_bits(rt),
        marker_mode: mode_bits(&m),
        marker_len: fs::metadata(&m).unwrap().len(),
        marker_digest: digest,
        marker_pid_matches: mpid == pid,
        rt_entries: list(rt),
    }
}
