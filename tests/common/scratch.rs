//! A scratch memtomem installation made by real uv (scratch HOME, tool and
//! bin dirs) and one finished mm-upgrade run: shared by the real-memtomem
//! suites (tests/real_memtomem.rs, tests/transaction.rs).
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde_json::Value;

use crate::testenv::{self, setup};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------
// A scratch installation

pub struct Scratch {
    pub dir: tempfile::TempDir,
    pub home: PathBuf,
    pub tools: PathBuf,
    pub bin: PathBuf,
}

impl Scratch {
    /// Scratch HOME and tool dirs with memtomem==`version` installed by real uv.
    pub fn with(version: &str) -> Scratch {
        setup();
        let dir = tempfile::Builder::new()
            .prefix("mm-real-")
            .tempdir()
            .unwrap();
        let sc = Scratch {
            home: dir.path().join("home"),
            tools: dir.path().join("tools"),
            bin: dir.path().join("bin"),
            dir,
        };
        fs::create_dir_all(&sc.home).unwrap();
        sc.install(version, &[]);
        sc
    }

    /// `scripts/install-memtomem.sh` (offline from the warm cache).
    pub fn install(&self, version: &str, extra: &[&str]) -> String {
        let mut c = Command::new("bash");
        c.arg(repo().join("scripts/install-memtomem.sh"))
            .arg(&self.tools)
            .arg(&self.bin)
            .arg(version)
            .args(extra);
        self.env(&mut c);
        let out = c.stdin(Stdio::null()).output().unwrap();
        assert!(
            out.status.success(),
            "installing memtomem=={version} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn env_dir(&self) -> PathBuf {
        self.tools.join("memtomem")
    }

    pub fn server_bin(&self) -> PathBuf {
        self.bin.join("memtomem-server")
    }

    /// Versions of the memtomem dist-info dirs in the scratch tool env.
    pub fn installed_versions(&self) -> Vec<String> {
        let sp = self.env_dir().join("lib/python3.12/site-packages");
        let mut v: Vec<String> = fs::read_dir(&sp)
            .map(|r| {
                r.flatten()
                    .filter_map(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        n.strip_prefix("memtomem-")?
                            .strip_suffix(".dist-info")
                            .map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn receipt(&self) -> Vec<u8> {
        fs::read(self.env_dir().join("uv-receipt.toml")).unwrap_or_default()
    }

    /// Wall-clock seconds of the last install (uv writes the receipt last).
    pub fn installed_at(&self) -> f64 {
        let m = fs::metadata(self.env_dir().join("uv-receipt.toml"))
            .unwrap()
            .modified()
            .unwrap();
        m.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
    }

    /// A confined environment: the setup's uv variables, scratch HOME and
    /// tool dirs, the setup's uv first on PATH, nothing that moves memtomem's
    /// runtime dir or store.
    pub fn env(&self, c: &mut Command) {
        for (k, v) in setup() {
            c.env(k, v);
        }
        let uv_dir = testenv::uv().parent().unwrap().to_path_buf();
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![uv_dir];
        paths.extend(std::env::split_paths(&path));
        c.env("PATH", std::env::join_paths(paths).unwrap())
            .env("HOME", &self.home)
            .env("UV_TOOL_DIR", &self.tools)
            .env("UV_TOOL_BIN_DIR", &self.bin);
        for k in [
            "XDG_RUNTIME_DIR",
            "XDG_CONFIG_HOME",
            "XDG_DATA_HOME",
            "TMPDIR",
            "MEMTOMEM_STORAGE__SQLITE_PATH",
            "_MEMTOMEM_TEST_RUNTIME_DIR",
            "PYTEST_CURRENT_TEST",
            "MM_UPGRADE_RUNTIME_DIR",
            "MM_UPGRADE_HOME",
            "MM_UPGRADE_UV",
            "VIRTUAL_ENV",
        ] {
            c.env_remove(k);
        }
    }

    /// `mm-upgrade ARGS` against the real runtime dir, with the setup's uv.
    pub fn upgrade(&self, args: &[&str]) -> Run {
        self.upgrade_with_uv(args, &testenv::uv())
    }

    pub fn upgrade_with_uv(&self, args: &[&str], uv: &Path) -> Run {
        let mut c = Command::new(env!("CARGO_BIN_EXE_mm-upgrade"));
        self.env(&mut c);
        c.env("MM_UPGRADE_UV", uv).args(args);
        Run::of(c, args)
    }

    /// `memtomem-server --help` from the scratch bin dir.
    pub fn server_help(&self) -> Output {
        let mut c = Command::new(self.server_bin());
        self.env(&mut c);
        c.arg("--help").stdin(Stdio::null()).output().unwrap()
    }
}

/// One finished mm-upgrade run.
pub struct Run {
    pub args: String,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn of(mut c: Command, args: &[&str]) -> Run {
        c.stdin(Stdio::null());
        let out = run_with_timeout(c, Duration::from_secs(300));
        Run {
            args: args.join(" "),
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn json(&self) -> Value {
        let lines: Vec<&str> = self.stdout.lines().collect();
        assert_eq!(lines.len(), 1, "stdout must be one JSON document: {self}");
        serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("bad JSON ({e}): {self}"))
    }

    pub fn expect(&self, code: i32) -> &Run {
        assert_eq!(self.code, code, "unexpected exit code: {self}");
        self
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "mm-upgrade {} → exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.args, self.code, self.stdout, self.stderr
        )
    }
}

/// `Command::output` with a deadline (the child is killed past it).
pub fn run_with_timeout(mut c: Command, limit: Duration) -> Output {
    let child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let done = Arc::new(AtomicBool::new(false));
    let d2 = done.clone();
    let watchdog = std::thread::spawn(move || {
        let start = Instant::now();
        while !d2.load(Ordering::SeqCst) {
            if start.elapsed() > limit {
                // SAFETY: our own child, not yet reaped (done is unset).
                unsafe { libc::kill(pid, libc::SIGKILL) };
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let out = child.wait_with_output().unwrap();
    done.store(true, Ordering::SeqCst);
    watchdog.join().unwrap();
    out
}
