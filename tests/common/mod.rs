//! Shared test support: a sandbox (HOME, runtime dir, uv tool dirs, a
//! stand-in uv) and fake servers in process groups owned by the test,
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

/// A stand-in for uv (`/bin/sh`), recording each call in `$SANDBOX/uv.log`.
///
/// `uv tool dir [--bin]` names the sandbox's dirs. `uv tool install [OPTS]
/// [--python P] [--with R]... SPEC` builds what real uv builds in
/// `$UV_TOOL_DIR/memtomem`: a `memtomem-V.dist-info` (V from `==V` in SPEC,
/// else `$FAKE_UV_LATEST`, else 0.6.12), `bin/python` (answers mm-upgrade's
/// metadata probe), `bin/memtomem-server` (answers one MCP `initialize`; a
/// comment names the env's interpreter by its absolute path, as a console
/// script's shebang does, so relocation has something to rewrite), the
/// receipt (`[tool] requirements` with SPEC's extras and the `--with`s,
/// `python`, `entrypoints` in `$UV_TOOL_BIN_DIR`) and the entry-point link in
/// `$UV_TOOL_BIN_DIR`. It installs only into a staging dir (`*/.mm-upgrade/*`):
/// mm-upgrade never lets uv touch the installation itself. `FAKE_UV_SEED`
/// lifts that (and the log) for the sandbox's initial installation.
///
/// `FAKE_UV_MODE`: `ok` (default); `fail-install` (exit 2, "error: install
/// exploded"); `no-such-version` (exit 1, "error: no version of SPEC");
/// `hang-install` (half an env, its pid in `$SANDBOX/uv.hanging`, then sleeps);
/// `slow-install` (1 s, then ok); `broken-python` (the interpreter exits 1);
/// `broken-entry` (the server exits 1 instead of answering); `dangling-entry`
/// (the receipt names an entry point `mm` uv never wrote).
const UV_SCRIPT: &str = r#"#!/bin/sh
[ -n "$FAKE_UV_SEED" ] || printf '%s\n' "$*" >> "$SANDBOX/uv.log"
if [ "$1 $2" = "tool dir" ]; then
  if [ "$3" = "--bin" ]; then echo "$SANDBOX/bin"; else echo "${UV_TOOL_DIR:-$SANDBOX/tools}"; fi
  exit 0
fi
if [ "$1 $2" != "tool install" ]; then
  echo "error: the stand-in uv does not know \`uv $*\`" >&2
  exit 2
fi
case "$UV_TOOL_DIR" in
  */.mm-upgrade/*) ;;
  *) if [ -z "$FAKE_UV_SEED" ]; then
       echo "error: uv tool install into $UV_TOOL_DIR, not a staging dir" >&2
       exit 2
     fi ;;
esac
shift 2
python=
withs=
spec=
while [ $# -gt 0 ]; do
  case "$1" in
    --python) python=$2; shift 2 ;;
    --with) withs="$withs$2
"; shift 2 ;;
    --refresh-package|--index|--default-index|--find-links|--index-strategy|--prerelease|--resolution|--exclude-newer|--link-mode|--keyring-provider) shift 2 ;;
    -*) shift ;;
    *) spec=$1; shift ;;
  esac
done
mode="${FAKE_UV_MODE:-ok}"
env="$UV_TOOL_DIR/memtomem"
bin="$UV_TOOL_BIN_DIR"
case "$mode" in
  fail-install) echo "error: install exploded" >&2; exit 2 ;;
  no-such-version) echo "error: no version of $spec" >&2; exit 1 ;;
  hang-install)
    # Half-written, then stuck: the staging dir is not empty when it goes.
    mkdir -p "$env/lib/python3.12/site-packages"
    echo $$ > "$SANDBOX/uv.hanging"
    exec sleep 60 ;;
  slow-install) sleep 1 ;;
esac
# name[extras]specifier -> uv's inline table
req_toml() {
  n=$(printf '%s' "$1" | sed 's/[^A-Za-z0-9._-].*//')
  rest=${1#"$n"}
  x=
  case "$rest" in
    \[*) x=${rest%%]*}; x=${x#\[}; rest=${rest#*]} ;;
  esac
  t="{ name = \"$n\""
  if [ -n "$x" ]; then
    t="$t, extras = [$(printf '%s' "$x" | sed 's/ //g; s/[^,][^,]*/"&"/g; s/,/, /g')]"
  fi
  if [ -n "$rest" ]; then t="$t, specifier = \"$rest\""; fi
  printf '%s }' "$t"
}
pin=$(printf '%s' "$spec" | sed -n 's/^[^=]*==\([A-Za-z0-9.+!]*\)$/\1/p')
version=${pin:-${FAKE_UV_LATEST:-0.6.12}}
rm -rf "$env"
mkdir -p "$env/bin" "$env/lib/python3.12/site-packages/memtomem-$version.dist-info" "$bin"
printf 'Metadata-Version: 2.4\nName: memtomem\nVersion: %s\n' "$version" \
  > "$env/lib/python3.12/site-packages/memtomem-$version.dist-info/METADATA"
if [ "$mode" = broken-python ]; then
  printf '#!/bin/sh\necho "python: error while loading shared libraries" >&2\nexit 1\n' > "$env/bin/python"
else
  cat > "$env/bin/python" <<EOF
#!/bin/sh
# The interpreter of memtomem $version (a stand-in): \`-I -c PROBE\` prints
# what memtomem's metadata says, \`-I -m compileall ...\` compiles nothing.
case " \$* " in *" -m compileall "*) exit 0 ;; esac
echo '{"version": "$version", "missing": [], "schema": null}'
EOF
fi
if [ "$mode" = broken-entry ]; then
  cat > "$env/bin/memtomem-server" <<EOF
#!/bin/sh
# console script of memtomem $version, for $env/bin/python
echo "ImportError: cannot import name 'main' from 'memtomem.server'" >&2
exit 1
EOF
else
  cat > "$env/bin/memtomem-server" <<EOF
#!/bin/sh
# console script of memtomem $version, for $env/bin/python
IFS= read -r request || exit 1
echo '{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{},"serverInfo":{"name":"memtomem","version":"$version"}}}'
EOF
fi
chmod +x "$env/bin/python" "$env/bin/memtomem-server"
{
  echo '[tool]'
  echo 'requirements = ['
  echo "    $(req_toml "$spec"),"
  printf '%s' "$withs" | while IFS= read -r w; do echo "    $(req_toml "$w"),"; done
  echo ']'
  if [ -n "$python" ]; then echo "python = \"$python\""; fi
  echo 'entrypoints = ['
  echo "    { name = \"memtomem-server\", install-path = \"$bin/memtomem-server\", from = \"memtomem\" },"
  if [ "$mode" = dangling-entry ]; then
    # An entry point uv names but never wrote.
    echo "    { name = \"mm\", install-path = \"$bin/mm\", from = \"memtomem\" },"
  fi
  echo ']'
} > "$env/uv-receipt.toml"
ln -sfn "$env/bin/memtomem-server" "$bin/memtomem-server"
exit 0
"#;

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
        fs::write(&uv, UV_SCRIPT).unwrap();
        fs::set_permissions(&uv, fs::Permissions::from_mode(0o755)).unwrap();
        // The installed "old" memtomem, made as uv makes one (`uv tool
        // install memtomem[all]` when 0.6.11 was the latest): the env, its
        // receipt naming the entry point in `bin`, the link there.
        // Through sh, not exec: another test thread forking while the script
        // was still open for writing would make an exec fail (ETXTBSY).
        let seed = Command::new("/bin/sh")
            .arg(&uv)
            .args(["tool", "install", "memtomem[all]"])
            .env("SANDBOX", dir.path())
            .env("UV_TOOL_DIR", dir.path().join("tools"))
            .env("UV_TOOL_BIN_DIR", dir.path().join("bin"))
            .env("FAKE_UV_SEED", "1")
            .env("FAKE_UV_LATEST", "0.6.11")
            .env_remove("FAKE_UV_MODE")
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
    pub fn upgrader_std(&self) -> Command {
        let mut c = Command::new(assert_cmd::cargo::cargo_bin("mm-upgrade"));
        c.env("HOME", self.path("home"))
            .env("MM_UPGRADE_RUNTIME_DIR", self.rt())
            .env("MM_UPGRADE_UV", self.path("uv"))
            .env("SANDBOX", self.dir.path())
            .env("UV_TOOL_DIR", self.path("tools"))
            .env_remove("UV_TOOL_BIN_DIR")
            .env_remove("FAKE_UV_MODE")
            .env_remove("FAKE_UV_SEED")
            .env_remove("FAKE_UV_LATEST")
            .env_remove("MEMTOMEM_STORAGE__SQLITE_PATH");
        c
    }

    pub fn uv_log(&self) -> String {
        fs::read_to_string(self.path("uv.log")).unwrap_or_default()
    }

    /// The `uv tool install` calls so far (argv after `uv`, one per line).
    pub fn uv_installs(&self) -> Vec<String> {
        self.uv_log()
            .lines()
            .filter(|l| l.starts_with("tool install"))
            .map(str::to_string)
            .collect()
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
