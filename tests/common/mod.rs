//! Shared test support: a sandbox (HOME, runtime dir, uv tool dirs, fake-uv
//! as uv) and fake servers in process groups owned by the test,
//! killed and reaped on drop, panic included.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use assert_fs::TempDir;

/// A binary of the fake-server package, next to mm-upgrade (built by `cargo test
/// --workspace`; built on demand when a single test target runs).
fn fake_server_package_bin(name: &str) -> PathBuf {
    let mm = PathBuf::from(env!("CARGO_BIN_EXE_mm-upgrade"));
    let bin = mm.with_file_name(name);
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "fake-server", "--bin", name])
            .status()
            .unwrap_or_else(|e| panic!("cargo build {name}: {e}"));
        assert!(status.success(), "building {name} failed");
    }
    bin
}

/// The workspace's fake-server binary.
pub fn fake_server_bin() -> PathBuf {
    fake_server_package_bin("fake-server")
}

/// The workspace's fake-uv (the uv stand-in of the scenario suite too: one fake uv, one
/// behaviour language, `FAKE_UV_BEHAVIOR`; see fake-server/src/bin/fake-uv/main.rs).
pub fn fake_uv_bin() -> PathBuf {
    fake_server_package_bin("fake-uv")
}

/// The sandbox's uv dirs: `tools` (`uv tool dir`), `bin` (`uv tool dir --bin`).
pub struct Sandbox {
    pub dir: TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = TempDir::new().unwrap();
        for d in ["home", "rt", "tools", "bin"] {
            fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        fs::set_permissions(dir.path().join("rt"), fs::Permissions::from_mode(0o700)).unwrap();
        let uv = dir.path().join("uv");
        std::os::unix::fs::symlink(fake_uv_bin(), &uv).unwrap();
        // The installed "old" memtomem, made as uv makes one (`uv tool
        // install memtomem[all]` when 0.6.11 was the latest): the env, its
        // receipt naming the entry points in `bin`, the links there. An
        // install call, unlogged: not one of mm-upgrade's calls.
        let seed = Command::new(&uv)
            .args(["tool", "install", "memtomem[all]"])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", dir.path().join("home"))
            .env("UV_TOOL_DIR", dir.path().join("tools"))
            .env("UV_TOOL_BIN_DIR", dir.path().join("bin"))
            .env("FAKE_UV_SERVER_BIN", fake_server_bin())
            .env("FAKE_UV_LATEST", "0.6.11")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            seed.status.success(),
            "seeding the sandbox's installation: {}",
            String::from_utf8_lossy(&seed.stderr)
        );
        Sandbox { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn rt(&self) -> PathBuf {
        self.path("rt")
    }

    /// `mm-upgrade` confined to this sandbox.
    pub fn upgrader(&self) -> assert_cmd::Command {
        let mut c = assert_cmd::Command::from_std(self.upgrader_std());
        c.timeout(Duration::from_secs(60));
        c
    }

    /// The same, as a plain `std::process::Command` (for tests that signal it).
    ///
    /// uv is fake-uv: `uv tool dir [--bin]` names the sandbox's `tools` and `bin`; every
    /// call is logged in `uv.log`; a `tool install` anywhere but a staging dir
    /// (`tools/.mm-upgrade/*`) fails (`FAKE_UV_STAGE_ONLY`): mm-upgrade never lets uv
    /// touch the installation itself. An unpinned request resolves to 0.6.12; the
    /// installed `memtomem-server` is fake-server reporting the installed version.
    /// Tests set `FAKE_UV_BEHAVIOR` for a failing or hanging uv.
    pub fn upgrader_std(&self) -> Command {
        let mut c = Command::new(assert_cmd::cargo::cargo_bin("mm-upgrade"));
        c.env("HOME", self.path("home"))
            .env("MM_UPGRADE_RUNTIME_DIR", self.rt())
            .env("MM_UPGRADE_UV", self.path("uv"))
            .env("UV_TOOL_DIR", self.path("tools"))
            .env("XDG_BIN_HOME", self.path("bin"))
            .env("FAKE_UV_TOOL_DIR", self.path("tools"))
            .env("FAKE_UV_LOG", self.path("uv.log"))
            .env("FAKE_UV_STAGE_ONLY", "1")
            .env("FAKE_UV_SERVER_BIN", fake_server_bin())
            .env("FAKE_UV_LATEST", "0.6.12")
            .env_remove("UV_TOOL_BIN_DIR")
            .env_remove("XDG_DATA_HOME")
            .env_remove("MEMTOMEM_STORAGE__SQLITE_PATH");
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            let ours = [
                "FAKE_UV_TOOL_DIR",
                "FAKE_UV_LOG",
                "FAKE_UV_STAGE_ONLY",
                "FAKE_UV_SERVER_BIN",
                "FAKE_UV_LATEST",
            ];
            if k.starts_with("FAKE_UV_") && !ours.contains(&k.as_ref()) {
                c.env_remove(k.as_ref());
            }
        }
        c
    }

    /// fake-uv's log: one JSON object per call.
    pub fn uv_calls(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(self.path("uv.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The uv calls so far, one line each: the argv after `uv`, space-separated.
    pub fn uv_log(&self) -> String {
        self.uv_calls()
            .iter()
            .map(|c| {
                let argv: Vec<&str> = c["argv"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .skip(1)
                    .map(|a| a.as_str().unwrap())
                    .collect();
                format!("{}\n", argv.join(" "))
            })
            .collect()
    }

    /// The `uv tool install` calls so far (argv after `uv`, one per line).
    pub fn uv_installs(&self) -> Vec<String> {
        self.uv_log()
            .lines()
            .filter(|l| l.starts_with("tool install"))
            .map(str::to_string)
            .collect()
    }

    /// The pid of a uv call that hangs (`FAKE_UV_BEHAVIOR=hang…`), once it hangs.
    pub fn uv_hanging_pid(&self) -> Option<i32> {
        self.uv_calls()
            .iter()
            .find(|c| c["note"] == "hanging")
            .and_then(|c| c["pid"].as_i64())
            .map(|p| p as i32)
    }

    /// uv's environment of memtomem.
    pub fn env_dir(&self) -> PathBuf {
        self.path("tools/memtomem")
    }

    /// Versions of the memtomem dist-info dirs in the environment.
    pub fn installed_versions(&self) -> Vec<String> {
        let sp = self.env_dir().join("lib/python3.12/site-packages");
        let mut v: Vec<String> = fs::read_dir(sp)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.strip_prefix("memtomem-")?
                    .strip_suffix(".dist-info")
                    .map(str::to_string)
            })
            .collect();
        v.sort();
        v
    }

    pub fn receipt(&self) -> String {
        fs::read_to_string(self.env_dir().join("uv-receipt.toml")).unwrap_or_default()
    }

    /// Replace `from` by `to` in the installed receipt (which must hold
    /// `from`, so a changed fixture cannot make the edit a silent no-op).
    pub fn edit_receipt(&self, from: &str, to: &str) {
        let text = self.receipt();
        assert!(text.contains(from), "the receipt lacks {from:?}: {text}");
        fs::write(
            self.env_dir().join("uv-receipt.toml"),
            text.replace(from, to),
        )
        .unwrap();
    }

    /// mm-upgrade's work dir in uv's tool dir (staging, journal).
    pub fn work_dir(&self) -> PathBuf {
        self.path("tools/.mm-upgrade")
    }

    /// Everything of the installation, byte for byte: the environment's
    /// tree (kind, mode, content or link target; the env dir's inode, which
    /// an exchange changes) and the bin dir's entries.
    pub fn installation(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let env = self.env_dir();
        let ino = fs::symlink_metadata(&env).map(|m| m.ino()).ok();
        out.insert("tools/memtomem".into(), format!("inode {ino:?}"));
        snapshot(self.dir.path(), &env, &mut out);
        snapshot(self.dir.path(), &self.path("bin"), &mut out);
        out
    }

    /// Start a fake server with `args`, wait for its ready file.
    pub fn server(&self, name: &str, args: &[&str]) -> Server {
        let ready = self.path(&format!("{name}.ready"));
        let events = self.path(&format!("{name}.events"));
        let mut cmd = Command::new(fake_server_bin());
        cmd.args(["--runtime-dir"])
            .arg(self.rt())
            .arg("--ready-file")
            .arg(&ready)
            .arg("--events")
            .arg(&events)
            .args(args)
            .env("HOME", self.path("home"))
            .env_remove("MEMTOMEM_STORAGE__SQLITE_PATH")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let child = cmd.spawn().expect("spawn fake-server");
        let mut server = Server {
            child,
            ready: ready.clone(),
            events,
            info: serde_json::Value::Null,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready.exists() {
            assert!(
                Instant::now() < deadline,
                "fake-server {name} never became ready"
            );
            if let Ok(Some(st)) = server.child.try_wait() {
                panic!("fake-server {name} exited before ready: {st}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        server.info = serde_json::from_str(&fs::read_to_string(&ready).unwrap()).unwrap();
        server
    }
}

/// A fake server in its own process group; the group is SIGKILLed and the
/// leader reaped on drop.
pub struct Server {
    pub child: Child,
    pub ready: PathBuf,
    pub events: PathBuf,
    pub info: serde_json::Value,
}

impl Server {
    pub fn pid(&self) -> i32 {
        self.info["pid"].as_i64().unwrap() as i32
    }
    pub fn pid_file(&self) -> PathBuf {
        PathBuf::from(self.info["pid_file"].as_str().unwrap())
    }
    /// Alive and not a zombie.
    pub fn alive(&self) -> bool {
        alive(self.pid())
    }
    pub fn events(&self) -> String {
        fs::read_to_string(&self.events).unwrap_or_default()
    }
}

/// Exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    testkit::proc::running(pid)
}

impl Drop for Server {
    fn drop(&mut self) {
        // The group was created for this server by process_group(0).
        testkit::kill_group(self.child.id() as i32, libc::SIGKILL);
        for pid in self.info["pids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p.as_i64())
        {
            // Daemonized processes left the group; they are ours by the ready file.
            if pid > 1 {
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        let _ = self.child.wait();
    }
}

fn snapshot(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let m = fs::symlink_metadata(&p).unwrap();
        let mode = m.permissions().mode() & 0o7777;
        let what = if m.file_type().is_symlink() {
            format!("link -> {}", fs::read_link(&p).unwrap().display())
        } else if m.is_dir() {
            snapshot(root, &p, out);
            format!("dir {mode:o}")
        } else {
            let bytes = fs::read(&p).unwrap();
            format!("file {mode:o} {}", String::from_utf8_lossy(&bytes))
        };
        out.insert(rel, what);
    }
}

/// A flock held by another process (`flock(1)`, in its own group, killed
/// on drop): a lock held by the test process itself would also be held by
/// whatever another test forks meanwhile.
pub struct FlockHolder {
    child: Child,
}

impl FlockHolder {
    /// Lock `path` exclusively; returns once the lock is held.
    pub fn hold(path: &Path) -> FlockHolder {
        // -o: the lock fd is not passed on, so it dies with flock itself.
        let mut child = Command::new("flock")
            .args(["-x", "-o"])
            .arg(path)
            .args(["sh", "-c", "echo locked; exec cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("spawn flock(1)");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        let holder = FlockHolder { child };
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        assert_eq!(
            line,
            "locked\n",
            "flock {} did not take the lock",
            path.display()
        );
        holder
    }
}

impl Drop for FlockHolder {
    fn drop(&mut self) {
        // The group was created for flock by process_group(0); its leader is not
        // reaped yet, so the group id is still ours.
        testkit::kill_group(self.child.id() as i32, libc::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Poll until `cond` holds (a readiness handshake, with a deadline).
pub fn wait_for(what: &str, cond: impl Fn() -> bool) {
    testkit::wait_for(what, Duration::from_secs(30), cond);
}

pub fn json_of(out: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "stdout must be exactly one JSON document: {text}"
    );
    serde_json::from_str(lines[0]).unwrap()
}

pub fn exists(p: &Path) -> bool {
    p.symlink_metadata().is_ok()
}

/// Run, check the exit code, and parse the single JSON document on stdout.
pub fn json_run(cmd: &mut assert_cmd::Command, code: i32) -> serde_json::Value {
    json_of(&cmd.assert().code(code).get_output().stdout)
}

impl Sandbox {
    /// Date the installation `ago` in the past (uv writes the receipt last,
    /// and `status` reads the install time from it).
    pub fn set_install_time(&self, ago: std::time::Duration) {
        let receipt = fs::File::options()
            .write(true)
            .open(self.path("tools/memtomem/uv-receipt.toml"))
            .unwrap();
        receipt
            .set_modified(std::time::SystemTime::now() - ago)
            .unwrap();
    }
}
