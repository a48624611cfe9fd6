//! Where a test's servers meet mm-upgrade: the scratch runtime dir (memtomem's test hook),
//! the real default runtime dir, and a client that respawns its server whenever it dies.

use super::*;

// Where a test's servers meet mm-upgrade

/// A test's runtime dir: its own (memtomem's test hook and `--runtime-dir`),
/// or the real default one, shared with users' servers.
pub struct Runtime {
    pub dir: PathBuf,
    /// The test, for `PYTEST_CURRENT_TEST`; None: the real default paths.
    pub isolated: Option<String>,
    pub _real: Option<RealRuntime>,
}

impl Runtime {
    /// `<scratch>/rt`, 0700 (memtomem refuses anything looser).
    pub fn isolated(sc: &Scratch, test: &str) -> Runtime {
        let dir = sc.path("rt");
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        Runtime {
            dir,
            isolated: Some(format!("tests/real_memtomem.rs::{test} (call)")),
            _real: None,
        }
    }

    /// `/tmp/memtomem-<euid>`, if nobody else's server is there (see
    /// [`RealRuntime::claim`]); None when the test must skip.
    pub fn real(test: &str) -> Option<Runtime> {
        let real = RealRuntime::claim(test)?;
        Some(Runtime {
            dir: real.dir.clone(),
            isolated: None,
            _real: Some(real),
        })
    }

    /// memtomem's own test hook, for a memtomem process (a no-op on the real
    /// default paths).
    pub fn hook(&self, c: &mut Command) {
        if let Some(test) = &self.isolated {
            c.env("_MEMTOMEM_TEST_RUNTIME_DIR", &self.dir)
                .env("PYTEST_CURRENT_TEST", test);
        }
    }

    /// `mm-upgrade ARGS` with `--runtime-dir` (and the hook, for whatever
    /// memtomem it runs), or on the real default paths.
    pub fn upgrade(&self, sc: &Scratch, args: &[&str]) -> scratch::Run {
        self.upgrade_with_uv(sc, args, &testenv::uv())
    }

    pub fn upgrade_with_uv(&self, sc: &Scratch, args: &[&str], uv: &Path) -> scratch::Run {
        let mut c = Command::new(env!("CARGO_BIN_EXE_mm-upgrade"));
        sc.env(&mut c);
        self.hook(&mut c);
        c.env("MM_UPGRADE_UV", uv).args(args);
        if self.isolated.is_some() {
            c.arg("--runtime-dir").arg(&self.dir);
        }
        scratch::Run::of(c, args)
    }
}

/// The real runtime dir, claimed for one test.
pub struct RealRuntime {
    pub dir: PathBuf,
    pub existed: bool,
    pub before: BTreeSet<String>,
}

impl RealRuntime {
    /// Claims /tmp/memtomem-<euid> for one test. If a foreign live server,
    /// web UI or presence marker is there, mm-upgrade would stop it: the test
    /// says so and skips (None), touching nothing; with
    /// `MM_TEST_REQUIRE_DEFAULT_PATHS=1` it fails instead.
    pub fn claim(test: &str) -> Option<RealRuntime> {
        // SAFETY: geteuid has no preconditions.
        let dir = PathBuf::from(format!("/tmp/memtomem-{}", unsafe { libc::geteuid() }));
        let existed = dir.symlink_metadata().is_ok();
        let before = Self::entries(&dir);
        let foreign: Vec<String> = before
            .iter()
            .filter(|rel| rel.ends_with(".pid") || rel.starts_with("presence/"))
            .filter_map(|rel| {
                let holders = flock_holders(&dir.join(rel));
                (!holders.is_empty()).then(|| format!("{rel} (held by pid {holders:?})"))
            })
            .collect();
        if !foreign.is_empty() {
            let msg = format!(
                "{test}: someone else's memtomem server is using {}: {}. This test proves \
                 mm-upgrade's real default paths and would stop it, so it does not run here. \
                 Stop that server, or run where none runs (the other real-memtomem tests use \
                 their own runtime dirs and are not affected).",
                dir.display(),
                foreign.join(", ")
            );
            if std::env::var("MM_TEST_REQUIRE_DEFAULT_PATHS").is_ok_and(|v| v == "1") {
                panic!("{msg}");
            }
            // Straight to fd 2: libtest captures `eprintln!` of a passing test, and
            // this must be seen.
            let _ = std::io::stderr().write_all(format!("SKIPPED {msg}\n").as_bytes());
            return None;
        }
        Some(RealRuntime {
            dir,
            existed,
            before,
        })
    }

    pub fn entries(dir: &Path) -> BTreeSet<String> {
        let mut s: BTreeSet<String> = list(dir).into_iter().collect();
        for m in list(&dir.join("presence")) {
            s.insert(format!("presence/{m}"));
        }
        s
    }
}

impl Drop for RealRuntime {
    fn drop(&mut self) {
        let now = Self::entries(&self.dir);
        // Files that appeared during the test and that nobody holds now.
        for rel in now.difference(&self.before) {
            let p = self.dir.join(rel);
            if rel == "presence" {
                continue;
            }
            if p.is_file() && flock_holders(&p).is_empty() {
                let _ = fs::remove_file(&p);
            }
        }
        if !self.before.contains("presence") {
            let _ = fs::remove_dir(self.dir.join("presence"));
        }
        if !self.existed {
            let _ = fs::remove_dir(&self.dir);
        }
    }
}

// ---------------------------------------------------------------------------
// A client that respawns its server whenever it dies

pub struct Supervisor {
    pub stop: Arc<AtomicBool>,
    pub current: Arc<Mutex<Option<i32>>>,
    pub pgids: Arc<Mutex<Vec<i32>>>,
    pub thread: Option<std::thread::JoinHandle<u32>>,
}

impl Supervisor {
    pub fn start(sc: &Scratch, rt: &Runtime) -> Supervisor {
        let stop = Arc::new(AtomicBool::new(false));
        let current = Arc::new(Mutex::new(None));
        let pgids = Arc::new(Mutex::new(Vec::new()));
        let mut proto = Command::new(sc.server_bin());
        sc.env(&mut proto);
        rt.hook(&mut proto);
        let bin = sc.server_bin();
        let envs: Vec<(std::ffi::OsString, Option<std::ffi::OsString>)> = proto
            .get_envs()
            .map(|(k, v)| (k.to_owned(), v.map(|v| v.to_owned())))
            .collect();
        let log = sc.path("supervised.stderr");
        let (s2, c2, p2) = (stop.clone(), current.clone(), pgids.clone());
        let thread = std::thread::spawn(move || {
            let mut spawned = 0u32;
            while !s2.load(Ordering::SeqCst) && spawned < 40 {
                let mut c = Command::new(&bin);
                for (k, v) in &envs {
                    match v {
                        Some(v) => c.env(k, v),
                        None => c.env_remove(k),
                    };
                }
                let mut g = Group::spawn(c, log.clone());
                spawned += 1;
                p2.lock().unwrap().push(g.pgid);
                *c2.lock().unwrap() = Some(g.pgid);
                loop {
                    if s2.load(Ordering::SeqCst) {
                        return spawned; // g's drop kills and reaps it
                    }
                    if g.child.try_wait().unwrap().is_some() {
                        break; // it died: respawn at once
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            spawned
        });
        Supervisor {
            stop,
            current,
            pgids,
            thread: Some(thread),
        }
    }

    pub fn current_pgid(&self) -> Option<i32> {
        *self.current.lock().unwrap()
    }

    /// The supervised server that is ready now (pid, pid file).
    pub fn wait_ready(&self, rt: &Path) -> (i32, PathBuf) {
        let start = Instant::now();
        loop {
            if let Some(pg) = self.current_pgid() {
                if let Some(found) = ready_server(rt, |pid| pgrp(pid) == Some(pg)) {
                    return found;
                }
            }
            assert!(
                start.elapsed() < READY_DEADLINE,
                "the supervised memtomem-server was not ready within {READY_DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn finish(&mut self) -> u32 {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().map(|t| t.join().unwrap()).unwrap_or(0)
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for pg in self.pgids.lock().unwrap().iter() {
            // Groups this supervisor created.
            testkit::kill_group(*pg, libc::SIGKILL);
        }
    }
}
