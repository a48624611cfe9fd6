//! The real-memtomem tests' processes: a server launched as an MCP client launches it,
//! the process group the test owns, and what /proc says of them.

use super::*;

// The cached test environment (uv, warm cache, Python 3.12)

/// A memtomem-server launched the way an MCP client launches it: stdin a
/// pipe we keep open, its own process group, in the runtime dir `rt` says.
pub fn spawn_server(sc: &Scratch, rt: &Runtime, tag: &str) -> Group {
    let mut c = Command::new(sc.server_bin());
    sc.env(&mut c);
    rt.hook(&mut c);
    Group::spawn(c, sc.path(&format!("{tag}.stderr")))
}

// ---------------------------------------------------------------------------
// Processes: a process group we own

pub struct Group {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub pgid: i32,
    pub stderr: PathBuf,
}

impl Group {
    pub fn spawn(mut c: Command, stderr: PathBuf) -> Group {
        c.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&stderr)
                    .unwrap(),
            )
            .process_group(0);
        // SAFETY: umask is async-signal-safe; servers see the umask users have.
        unsafe {
            c.pre_exec(|| {
                libc::umask(0o022);
                Ok(())
            });
        }
        let mut child = c.spawn().expect("spawn memtomem-server");
        let stdin = child.stdin.take();
        let pgid = child.id() as i32;
        Group {
            child,
            stdin,
            pgid,
            stderr,
        }
    }

    pub fn leader(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until a memtomem-server of this group holds the lock on a pid
    /// file in `rt` that names it. Returns (server pid, pid file).
    pub fn wait_ready(&mut self, rt: &Path) -> (i32, PathBuf) {
        let start = Instant::now();
        loop {
            if let Some(found) = ready_server(rt, |pid| pgrp(pid) == Some(self.pgid)) {
                return found;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "memtomem-server (group {}) exited before it was ready: {st}\n{}",
                    self.pgid,
                    self.stderr_text()
                );
            }
            assert!(
                start.elapsed() < READY_DEADLINE,
                "memtomem-server (group {}) wrote no locked pid file in {rt:?} within {READY_DEADLINE:?}:\n{}",
                self.pgid,
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the group leader's exit; None past `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if start.elapsed() > within {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // The group was created for this launch by process_group(0).
        testkit::kill_group(self.pgid, libc::SIGKILL);
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server pid file in `rt` whose payload names a pid accepted by `is_ours`
/// and whose flock that pid holds.
pub fn ready_server(rt: &Path, is_ours: impl Fn(i32) -> bool) -> Option<(i32, PathBuf)> {
    for name in list(rt) {
        if !(name.starts_with("server") && name.ends_with(".pid")) {
            continue;
        }
        let path = rt.join(&name);
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        let Some(pid) = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<i32>().ok())
        else {
            continue;
        };
        if is_ours(pid) && flock_holders(&path).contains(&pid) {
            return Some((pid, path));
        }
    }
    None
}

pub fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub fn pgrp(pid: i32) -> Option<i32> {
    testkit::proc::stat(pid).map(|s| s.pgid)
}

/// Wall-clock start of `pid` in seconds (CLOCK_BOOTTIME-based, tick precision).
pub fn start_wall(pid: i32) -> Option<f64> {
    let ticks = testkit::proc::stat(pid)?.start as f64;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let boot = now - (ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9);
    Some(boot + ticks / hz)
}

/// Every running memtomem-server of this scratch installation (by its
/// command line naming the scratch dir), zombies excluded.
pub fn scratch_servers(sc: &Scratch) -> Vec<i32> {
    let needle = sc.dir.path().to_string_lossy().into_owned();
    let mut v: Vec<i32> = list(Path::new("/proc"))
        .into_iter()
        .filter_map(|n| n.parse::<i32>().ok())
        .filter(|pid| {
            let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(&needle) && cmd.contains("memtomem-server") && alive(*pid)
        })
        .collect();
    v.sort();
    v
}

/// Mappings of deleted files under `dir` in /proc/<pid>/maps.
pub fn deleted_maps_under(pid: i32, dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.ends_with(" (deleted)") && l.contains(&dir))
        .map(str::to_string)
        .collect()
}

pub fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: a process this test started.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}
