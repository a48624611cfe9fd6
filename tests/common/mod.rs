//! Shared test support: a sandbox (HOME, runtime dir, uv tool dirs, a
//! stand-in uv) and fake servers in process groups owned by the test,
//! killed and reaped on drop, panic included.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use assert_fs::TempDir;

/// The workspace's fake-server binary (built by `cargo test --workspace`;
/// built on demand when a single test target runs).
pub fn fake_server_bin() -> PathBuf {
    let mm = PathBuf::from(env!("CARGO_BIN_EXE_mm-upgrade"));
    let bin = mm.with_file_name("fake-server");
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "fake-server", "--bin", "fake-server"])
            .status()
            .expect("cargo build fake-server");
        assert!(status.success(), "building fake-server failed");
    }
    bin
}

/// A stand-in for uv: records each call; `FAKE_UV_MODE` picks a behaviour.
const UV_SCRIPT: &str = r#"#!/bin/sh
printf '%s\n' "$*" >> "$SANDBOX/uv.log"
if [ "$1 $2" = "tool dir" ]; then
  if [ "$3" = "--bin" ]; then echo "$SANDBOX/bin"; else echo "${UV_TOOL_DIR:-$SANDBOX/tools}"; fi
  exit 0
fi
mode="${FAKE_UV_MODE:-ok}"
case "$*" in
  *--reinstall*) phase=install ;;
  *) phase=prepare ;;
esac
if [ "$phase" = prepare ]; then
  if [ "$mode" = fail-prepare ]; then echo "error: no version of memtomem==99.99.99" >&2; exit 1; fi
  if [ "$mode" = hang-prepare ]; then sleep 60; fi
  mkdir -p "$UV_TOOL_DIR/memtomem/lib/python3.12/site-packages/memtomem-0.6.12.dist-info"
  exit 0
fi
tools="${UV_TOOL_DIR:-$SANDBOX/tools}"
case "$mode" in
  slow-install) sleep 1 ;;
  offline-miss) case "$*" in *--offline*) echo "error: memtomem==0.6.12 not in the cache and network connectivity is disabled (because --offline was provided)" >&2; exit 2 ;; esac ;;
esac
case "$mode" in
  fail-install) echo "error: install exploded" >&2; exit 2 ;;
  delete-then-fail) rm -rf "$tools/memtomem" "$SANDBOX/bin/memtomem-server"; echo "error: failed half-way" >&2; exit 2 ;;
esac
rm -rf "$tools/memtomem"
mkdir -p "$tools/memtomem/bin" "$tools/memtomem/lib/python3.12/site-packages/memtomem-0.6.12.dist-info"
printf '[tool]\nrequirements = [{ name = "memtomem" }]\n' > "$tools/memtomem/uv-receipt.toml"
printf '#!/bin/sh\necho new\n' > "$tools/memtomem/bin/memtomem-server"
chmod +x "$tools/memtomem/bin/memtomem-server"
ln -sf "$tools/memtomem/bin/memtomem-server" "$SANDBOX/bin/memtomem-server"
exit 0
"#;

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
        fs::write(&uv, UV_SCRIPT).unwrap();
        fs::set_permissions(&uv, fs::Permissions::from_mode(0o755)).unwrap();
        // An installed "old" memtomem, so rollback has something to keep.
        let env = dir.path().join("tools/memtomem/bin");
        fs::create_dir_all(&env).unwrap();
        fs::write(env.join("memtomem-server"), "#!/bin/sh\necho old\n").unwrap();
        fs::set_permissions(
            env.join("memtomem-server"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            env.join("memtomem-server"),
            dir.path().join("bin/memtomem-server"),
        )
        .unwrap();
        fs::write(
            dir.path().join("tools/memtomem/uv-receipt.toml"),
            "[tool]\nrequirements = [{ name = \"memtomem\", extras = [\"all\"] }]\n",
        )
        .unwrap();
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
    pub fn upgrader_std(&self) -> Command {
        let mut c = Command::new(assert_cmd::cargo::cargo_bin("mm-upgrade"));
        c.env("HOME", self.path("home"))
            .env("MM_UPGRADE_RUNTIME_DIR", self.rt())
            .env("MM_UPGRADE_UV", self.path("uv"))
            .env("SANDBOX", self.dir.path())
            .env("UV_TOOL_DIR", self.path("tools"))
            .env_remove("MEMTOMEM_STORAGE__SQLITE_PATH");
        c
    }

    pub fn uv_log(&self) -> String {
        fs::read_to_string(self.path("uv.log")).unwrap_or_default()
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

pub fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .chars()
                .next();
            !matches!(state, Some('Z') | Some('X'))
        }
        Err(_) => false,
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let pgid = self.child.id() as i32;
        // SAFETY: the group was created for this server by process_group(0).
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
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

/// Poll until `cond` holds (a readiness handshake, with a deadline).
pub fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
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
