//! Prove the staged environment before anything is stopped: its interpreter
//! runs, its metadata says the target version, its console scripts resolve,
//! and its server answers an MCP `initialize` with `serverInfo.version` equal
//! to the target. That handshake also compiles the bytecode of everything a
//! server start imports. The server runs with a scratch HOME, runtime dir and TMPDIR
//! and without the caller's `MEMTOMEM_*` settings, so it can never touch the
//! user's store or runtime dir.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::install::{run_bounded, UvError};

/// What the staged interpreter says about itself.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Metadata {
    pub version: Option<String>,
    #[serde(default)]
    pub missing: Vec<String>,
    /// memtomem's `SCHEMA_VERSION`, when asked for.
    #[serde(default)]
    pub schema: Option<i64>,
    #[serde(default)]
    pub error: Option<String>,
}

/// Runs under `python -I`: no user site, no PYTHON* variables.
const PROBE: &str = r#"
import json, sys
import importlib.metadata as m, importlib.util as u
out = {"version": None, "missing": [], "schema": None}
try:
    d = m.distribution("memtomem")
    out["version"] = d.version
    for ep in d.entry_points:
        if ep.group == "console_scripts":
            try:
                if u.find_spec(ep.module) is None:
                    out["missing"].append(ep.name)
            except Exception:
                out["missing"].append(ep.name)
except Exception as e:
    out["error"] = repr(e)
if "schema" in sys.argv[1:]:
    try:
        from memtomem.storage.sqlite_schema import SCHEMA_VERSION
        out["schema"] = int(SCHEMA_VERSION)
    except Exception:
        pass
print(json.dumps(out))
"#;

/// Ask the environment's interpreter for its memtomem metadata.
pub fn metadata(env: &Path, with_schema: bool, timeout: Duration) -> Result<Metadata, String> {
    let py = env.join("bin/python");
    // -I ignores PYTHONDONTWRITEBYTECODE: -B keeps imports from writing
    // bytecode that names the staging path (compileall writes it for the real one).
    let mut args = vec![
        "-I".to_string(),
        "-B".to_string(),
        "-c".to_string(),
        PROBE.to_string(),
    ];
    if with_schema {
        args.push("schema".into());
    }
    let out = run_bounded(&py, true, "the staged interpreter", &args, &[], timeout)
        .map_err(|e| describe(&py, e))?;
    let line = out
        .stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("");
    serde_json::from_str(line).map_err(|_| {
        format!(
            "{} printed no metadata: {:?}",
            py.display(),
            out.stdout.chars().take(200).collect::<String>()
        )
    })
}

fn describe(py: &Path, e: UvError) -> String {
    match e {
        UvError::Failed { code, stderr, .. } => format!(
            "{} does not run (exit status {code}): {}",
            py.display(),
            stderr.lines().last().unwrap_or("")
        ),
        other => format!("{}: {other}", py.display()),
    }
}

/// Read the store's schema stamp with an interpreter (read-only, never
/// creating the file). `None`: no store, or no stamp.
pub fn store_schema(python: &Path, db: &Path, timeout: Duration) -> Option<i64> {
    if !db.is_file() {
        return None;
    }
    const READ: &str = "import sqlite3, sys, urllib.request as r\n\
c = sqlite3.connect('file:' + r.pathname2url(sys.argv[1]) + '?mode=ro', uri=True)\n\
print(c.execute(\"select value from _memtomem_meta where key='schema_version'\").fetchone()[0])\n";
    let args = vec![
        "-I".into(),
        "-B".into(),
        "-c".into(),
        READ.into(),
        db.display().to_string(),
    ];
    let out = run_bounded(
        python,
        true,
        "reading the store's schema",
        &args,
        &[],
        timeout,
    )
    .ok()?;
    out.stdout.trim().parse().ok()
}

/// The server's answer to `initialize`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    pub name: String,
    pub version: String,
    pub ms: u64,
}

/// Start `<env>/bin/memtomem-server` in a scratch sandbox, send `initialize`,
/// and return its `serverInfo`. Bounded by `timeout`; the server and anything
/// it started (its own process group) are gone when this returns.
pub fn mcp_initialize(
    env: &Path,
    timeout: Duration,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<Handshake, String> {
    let exe = env.join("bin/memtomem-server");
    if !exe.exists() {
        return Err(format!(
            "the staged entry point {} does not exist",
            exe.display()
        ));
    }
    let scratch = tempfile::Builder::new()
        .prefix("mm-upgrade-proof-")
        .tempdir()
        .map_err(|e| format!("cannot create a scratch dir: {e}"))?;
    let s = scratch.path();
    for d in ["home", "rt", "tmp", "xdg"] {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(s.join(d))
            .map_err(|e| format!("cannot create a scratch dir: {e}"))?;
    }
    let mut cmd = Command::new(&exe);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("MEMTOMEM_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("HOME", s.join("home"))
        // memtomem's runtime dir is always /tmp/memtomem-<euid>, shared by
        // every server of the user; its only override is its own test hook,
        // honoured only with PYTEST_CURRENT_TEST set. Without both, the
        // proof's server would register (and, killed, leave a stale pid
        // file) in the user's runtime dir.
        .env("_MEMTOMEM_TEST_RUNTIME_DIR", s.join("rt"))
        .env("PYTEST_CURRENT_TEST", "mm-upgrade staged proof (call)")
        .env("TMPDIR", s.join("tmp"))
        .env("XDG_RUNTIME_DIR", s.join("xdg"))
        // The handshake's imports write the bytecode a real start needs
        // (Python rewrites `co_filename` to the real path when it loads a
        // `.pyc` after the switch): the first start after the switch
        // compiles nothing, and no second process competes for the CPU.
        .env_remove("PYTHONDONTWRITEBYTECODE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    crate::sys::die_with_parent(&mut cmd);
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let pgid = child.id() as i32;
    // The group is killed however this function returns.
    struct Group(i32);
    impl Drop for Group {
        fn drop(&mut self) {
            // The child leads its own group (process_group(0)), so the
            // group is ours: never a signal by name or to a stranger's group.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(self.0),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let _group = Group(pgid);
    let mut stdin = child.stdin.take();
    let request = serde_json::json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "mm-upgrade", "version": env!("CARGO_PKG_VERSION")}}
    });
    if let Some(w) = stdin.as_mut() {
        let _ = writeln!(w, "{request}");
        let _ = w.flush();
    }
    let (tx, rx) = mpsc::channel::<String>();
    let out = child.stdout.take();
    std::thread::spawn(move || {
        let Some(out) = out else { return };
        for line in BufReader::new(out).split(b'\n').map_while(Result::ok) {
            if tx
                .send(String::from_utf8_lossy(&line).into_owned())
                .is_err()
            {
                break;
            }
        }
    });
    let err = child.stderr.take();
    let (etx, erx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut e) = err {
            let _ = e.by_ref().take(64 * 1024).read_to_end(&mut buf);
        }
        let _ = etx.send(String::from_utf8_lossy(&buf).into_owned());
    });
    let deadline = started + timeout;
    let answer = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            break Err("cancelled".into());
        }
        if left.is_zero() || crate::interrupt::requested().is_some() {
            break Err(format!(
                "{} did not answer initialize within {}s",
                exe.display(),
                timeout.as_secs()
            ));
        }
        match rx.recv_timeout(left.min(Duration::from_millis(100))) {
            Ok(line) => {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if v.get("id") != Some(&serde_json::json!(1)) {
                    continue;
                }
                let info = &v["result"]["serverInfo"];
                match (info["name"].as_str(), info["version"].as_str()) {
                    (Some(n), Some(ver)) => {
                        break Ok(Handshake {
                            name: n.to_string(),
                            version: ver.to_string(),
                            ms: started.elapsed().as_millis() as u64,
                        })
                    }
                    _ => {
                        break Err(format!(
                            "{} answered initialize without serverInfo: {line}",
                            exe.display()
                        ))
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = erx.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
                let last = stderr
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("");
                break Err(format!(
                    "{} exited before answering initialize: {last}",
                    exe.display()
                ));
            }
        }
    };
    // EOF is how an MCP client says goodbye; the group is killed after a
    // short grace either way.
    drop(stdin);
    let bye = Instant::now() + Duration::from_millis(500);
    while Instant::now() < bye {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
    answer
}

/// Compile the staged environment's bytecode for the real path (`-s` strips
/// the staging prefix, `-p` prepends the real one), on all cores: when no
/// handshake compiles what a start imports (`--no-verify`).
pub fn compile_bytecode(
    stage_env: &Path,
    real_env: &Path,
    timeout: Duration,
) -> Result<(), String> {
    let py = stage_env.join("bin/python");
    let args = vec![
        "-I".into(),
        "-m".into(),
        "compileall".into(),
        "-q".into(),
        "-j0".into(),
        "-s".into(),
        stage_env.display().to_string(),
        "-p".into(),
        real_env.display().to_string(),
        stage_env.join("lib").display().to_string(),
    ];
    match run_bounded(&py, true, "compiling bytecode", &args, &[], timeout) {
        Ok(_) => Ok(()),
        // compileall exits 1 when one file does not compile (as uv, a warning).
        Err(UvError::Failed { code: 1, .. }) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The proof's server sees a scratch HOME and runtime dir, through the
    /// override memtomem honours (with PYTEST_CURRENT_TEST), and none of the
    /// caller's MEMTOMEM_* settings: it can never touch the user's files.
    #[test]
    fn the_handshake_runs_in_a_sandbox_of_its_own() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let script = bin.join("memtomem-server");
        std::fs::write(
            &script,
            "#!/bin/sh\nread line\nprintf '{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"serverInfo\":{\"name\":\"%s|%s|%s|%s\",\"version\":\"1\"}}}\\n' \"$PYTEST_CURRENT_TEST\" \"$_MEMTOMEM_TEST_RUNTIME_DIR\" \"$HOME\" \"${MEMTOMEM_STORAGE__SQLITE_PATH:-unset}\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let hs = mcp_initialize(
            tmp.path(),
            Duration::from_secs(20),
            &std::sync::atomic::AtomicBool::new(false),
        )
        .unwrap();
        let parts: Vec<&str> = hs.name.split('|').collect();
        assert_eq!(parts.len(), 4, "{}", hs.name);
        assert!(
            !parts[0].is_empty(),
            "PYTEST_CURRENT_TEST unset: {}",
            hs.name
        );
        let rt = Path::new(parts[1]);
        assert!(
            rt.starts_with(std::env::temp_dir()) && rt.ends_with("rt"),
            "{}",
            hs.name
        );
        assert!(!parts[1].contains("memtomem-"), "{}", hs.name);
        assert!(
            parts[2].ends_with("home") && parts[2] != std::env::var("HOME").unwrap_or_default(),
            "{}",
            hs.name
        );
        // (Whatever this process's environment holds, no MEMTOMEM_* passes.)
        assert_eq!(parts[3], "unset");
    }
}
