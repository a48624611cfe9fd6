//! `fake-server`: behaves like `memtomem-server` 0.6.12 (stdio) by default, and
//! misbehaves on purpose with `--mode`. See README.md and the contract, §1–2.

mod locks;
mod mcp;
mod modes;
mod paths;
mod shape;
mod topology;
mod util;

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use serde_json::json;

use locks::{PidLock, Presence};
use modes::{Corrupt, Modes, UnsafeDir};
use util::Events;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Legacy {
    /// Exclusive flock on ~/.memtomem/.server.pid, payload just "<pid>", never unlinked.
    #[value(name = "pre-0.1.25")]
    Pre0125,
    /// 0.1.26-era: bare server.pid (EX) in the runtime dir plus a SHARED flock on
    /// ~/.memtomem/.server.pid.
    Alias,
}

#[derive(Parser, Debug)]
#[command(
    name = "fake-server",
    version,
    about = "A memtomem-server 0.6.12 (stdio) double with a catalogue of lifecycle faults",
    after_help = modes::help_text()
)]
struct Cli {
    /// Runtime dir instead of /tmp/memtomem-<euid> (created 0700 and validated). Without it,
    /// _MEMTOMEM_TEST_RUNTIME_DIR is honoured when PYTEST_CURRENT_TEST is set.
    #[arg(long, env = "FAKE_SERVER_RUNTIME_DIR", value_name = "DIR")]
    runtime_dir: Option<PathBuf>,
    /// Store path whose digest names the pid file [default: $HOME/.memtomem/memtomem.db]
    #[arg(long, env = "MEMTOMEM_STORAGE__SQLITE_PATH", value_name = "PATH")]
    store: Option<OsString>,
    /// Act as the web UI (`mm web`): web.pid + web.json, no presence marker.
    #[arg(long)]
    web: bool,
    /// Port written into web.pid / web.json (nothing listens on it).
    #[arg(long, default_value_t = 8080, requires = "web")]
    port: u16,
    /// Act as an old server generation.
    #[arg(long, value_enum, value_name = "ERA", conflicts_with = "web")]
    legacy: Option<Legacy>,
    /// Use the bare server.pid (a server whose store path cannot be digested).
    #[arg(long, conflicts_with_all = ["web", "legacy"])]
    bare: bool,
    /// Write a JSON readiness record here (atomically) once every lock, file and signal
    /// disposition is in place.
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,
    /// Append JSON-lines events (start, lock, ready, signal, fork, respawn, warning, exit).
    /// The environment variable reaches servers a launcher starts (fake-host, an entry
    /// point): all of them append to one file.
    #[arg(long, env = "FAKE_SERVER_EVENTS", value_name = "PATH")]
    events: Option<PathBuf>,
    /// Fault mode, repeatable (see the list below).
    #[arg(long = "mode", value_name = "NAME[=ARG]", value_parser = modes::check)]
    modes: Vec<String>,
    /// Do not treat stdin EOF as shutdown (for launches with stdin at /dev/null).
    #[arg(long)]
    no_stdin: bool,
    /// serverInfo.version in the MCP `initialize` answer.
    #[arg(
        long,
        env = "FAKE_SERVER_VERSION",
        value_name = "V",
        default_value = "0.6.12"
    )]
    server_version: String,
    /// Look like this launch shape in /proc/<pid>/cmdline and comm (see src/shape.rs):
    /// the process re-executes itself, same pid, with that argv.
    #[arg(long, value_enum, value_name = "SHAPE")]
    argv_shape: Option<shape::Shape>,
    /// The interpreter path in the shaped argv [default: ~/.local/share/uv/tools/memtomem/bin/python;
    /// uvx: ~/.cache/uv/archive-v0/<id>/bin/python].
    #[arg(long, value_name = "PATH", requires = "argv_shape")]
    argv_python: Option<PathBuf>,
}

// ---------------------------------------------------------------------------------------
// Signals: the handler only writes the signal number into a self-pipe; everything else
// (unlink, logging, _exit) happens in the main loop, which wakes within microseconds.

static SIG_WR: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    // SAFETY: write(2) is async-signal-safe; errno is saved and restored around it.
    unsafe {
        let e = *libc::__errno_location();
        let b = sig as u8;
        libc::write(SIG_WR.load(Ordering::Relaxed), (&b as *const u8).cast(), 1);
        *libc::__errno_location() = e;
    }
}

fn make_sig_pipe() -> RawFd {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills our array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        die_early("pipe2 failed");
    }
    let old = SIG_WR.swap(fds[1], Ordering::Relaxed);
    if old >= 0 {
        // A forked worker drops its parent's pipe (both ends) and starts its own.
        // SAFETY: closing a descriptor this process owns.
        unsafe { libc::close(old) };
    }
    fds[0]
}

fn set_handler(sig: libc::c_int, handler: libc::sighandler_t) {
    // SAFETY: installing a handler that only calls write(2), or a default disposition.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, std::ptr::null_mut());
    }
}

fn catch(sig: libc::c_int) {
    set_handler(sig, on_signal as *const () as libc::sighandler_t);
}

fn sigmask(how: libc::c_int, sigs: &[libc::c_int]) {
    // SAFETY: plain sigprocmask on a set we build.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in sigs {
            libc::sigaddset(&mut set, *s);
        }
        libc::sigprocmask(how, &set, std::ptr::null_mut());
    }
}

fn sig_name(sig: i32) -> String {
    match sig {
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGCHLD => "SIGCHLD".into(),
        libc::SIGHUP => "SIGHUP".into(),
        libc::SIGKILL => "SIGKILL".into(),
        n => format!("SIG{n}"),
    }
}

pub(crate) fn die_early(msg: &str) -> ! {
    eprintln!("fake-server: {msg}");
    std::process::exit(1)
}

fn fork() -> libc::pid_t {
    // SAFETY: the process is single-threaded whenever we fork (no threads are ever
    // started), so the child may keep running ordinary Rust code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        die_early(&format!("fork: {}", std::io::Error::last_os_error()));
    }
    pid
}

fn pid() -> u32 {
    std::process::id()
}

fn hard_exit(code: i32) -> ! {
    // SAFETY: _exit skips atexit/destructors on purpose, like Python's os._exit.
    unsafe { libc::_exit(code) }
}

// ---------------------------------------------------------------------------------------

struct Server {
    cli: Cli,
    m: Modes,
    ev: Events,
    stamp: String,
    procid: String,
    store: OsString,
    digest: Option<String>,
    runtime: Option<PathBuf>,
    sig_rd: RawFd,
    watch_stdin: bool,
    /// Other processes of this invocation that are meant to keep running (launcher,
    /// supervisor), listed in the ready file before the server itself.
    elders: Vec<u32>,
    presence: Option<Presence>,
    /// The pid path we own the lock on (unlinked on cleanup) and its descriptor.
    pid_path: Option<PathBuf>,
    pid_fd: Option<File>,
    extra_unlink: Vec<PathBuf>,
    legacy_fd: Option<File>,
    web_json: Option<PathBuf>,
    children: Vec<u32>,
    _db: Option<rusqlite::Connection>,
    /// Files were created by this pid; a forked heir must not unlink them (the registry's
    /// pid guard in the real server).
    owner_pid: u32,
    sigint_seen: bool,
    generation: u32,
    legacy_path_for_ready: Option<PathBuf>,
    mcp: mcp::Session,
    /// `many`: a worker reports its ready record here (one JSON line) to the launcher,
    /// which writes the ready file for all of them.
    ready_pipe: Option<RawFd>,
    /// `orphan`: tell the parent we registered (it then exits), and its pid.
    orphan_parent: Option<(RawFd, i32)>,
    /// `wiki-lock`: the legacy and canonical wiki commit locks, held for life.
    wiki_locks: Vec<File>,
    wiki_paths: Vec<PathBuf>,
}

fn main() {
    // Captured before anything else, like the real server's very first statement.
    let mut stamp = util::iso_now();
    let cli: Cli = shape::parse(|c: &Cli| c.argv_shape.map(|s| (s, c.argv_python.clone())));
    let m = match Modes::parse(&cli.modes) {
        Ok(m) => m,
        Err(e) => die_early(&e),
    };
    let ev = Events::open(cli.events.as_deref());
    if let Some(ms) = m.slow_start {
        stamp = mcp::slow_start(ms, &ev);
    }
    let generation: u32 = std::env::var("FAKE_SERVER_GENERATION")
        .ok()
        .and_then(|g| g.parse().ok())
        .unwrap_or(0);
    ev.emit(
        "start",
        json!({"argv": std::env::args().collect::<Vec<_>>(), "mode": m.raw, "started": stamp, "generation": generation, "shape": cli.argv_shape.map(|s| format!("{s:?}"))}),
    );
    // The digest is computed before any fork so a daemon sees the same relative paths.
    let store = cli.store.clone().unwrap_or_else(paths::default_store);
    let digest = paths::store_digest(&store);
    let mcp = mcp::Session::new(&cli.server_version, &m);
    let mut s = Server {
        watch_stdin: !cli.no_stdin && !cli.web,
        cli,
        m,
        ev,
        stamp,
        procid: util::hex8(),
        store,
        digest,
        runtime: None,
        sig_rd: -1,
        elders: Vec::new(),
        presence: None,
        pid_path: None,
        pid_fd: None,
        extra_unlink: Vec::new(),
        legacy_fd: None,
        web_json: None,
        children: Vec::new(),
        _db: None,
        owner_pid: pid(),
        sigint_seen: false,
        generation,
        legacy_path_for_ready: None,
        mcp,
        ready_pipe: None,
        orphan_parent: None,
        wiki_locks: Vec::new(),
        wiki_paths: Vec::new(),
    };
    if let Some(n) = s.m.many {
        s.many_launcher(n);
    }
    if s.m.orphan {
        s.orphan_fork();
    }
    if s.m.daemonize {
        s.daemonize();
    }
    if s.m.zombie {
        s.zombie_launcher();
    }
    if let Some(delay) = s.m.respawn {
        s.supervise(Duration::from_millis(delay));
    }
    s.run();
}

impl Server {
    /// A process that becomes the server after a fork gets its own identity and stamp.
    fn become_worker(&mut self) {
        self.stamp = util::iso_now();
        self.procid = util::hex8();
        self.owner_pid = pid();
    }

    fn daemonize(&mut self) {
        let c1 = fork();
        if c1 > 0 {
            self.ev.emit(
                "fork",
                json!({"child": c1, "role": "daemonize-intermediate"}),
            );
            let mut st = 0;
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(c1, &mut st, 0) };
            self.ev
                .emit("exit", json!({"code": 0, "how": "daemonize-parent"}));
            hard_exit(0);
        }
        // SAFETY: setsid in a fresh child that is not a group leader.
        unsafe { libc::setsid() };
        let g = fork();
        if g > 0 {
            self.ev.emit("fork", json!({"child": g, "role": "daemon"}));
            hard_exit(0);
        }
        // A daemon does not keep its launcher's stdin.
        if let Ok(null) = File::open("/dev/null") {
            // SAFETY: dup2 onto fd 0.
            unsafe { libc::dup2(null.as_raw_fd(), 0) };
        }
        self.watch_stdin = false;
        self.become_worker();
    }

    fn zombie_launcher(&mut self) {
        let launcher = pid();
        let child = fork();
        if child > 0 {
            self.ev.emit(
                "fork",
                json!({"child": child, "role": "server", "reaps": false}),
            );
            // Never wait(): SIGCHLD keeps its default disposition, so the exited server
            // stays a zombie for as long as this launcher lives.
            loop {
                // SAFETY: pause just sleeps until a signal.
                unsafe { libc::pause() };
            }
        }
        self.elders.push(launcher);
        self.become_worker();
    }

    /// An MCP-client-like supervisor: feeds its worker a stdin pipe, restarts it whenever
    /// it dies, and stops (closing the pipe) on its own SIGTERM/SIGINT or stdin EOF.
    fn supervise(&mut self, delay: Duration) {
        let sup = pid();
        let rd = make_sig_pipe();
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGCHLD] {
            catch(s);
        }
        let mut stopping = false;
        let mut worker: libc::pid_t;
        let mut to_worker: RawFd;
        let mut generation = 0u32;
        let mut respawn_at: Option<Instant> = None;
        macro_rules! spawn {
            () => {{
                let mut p = [0; 2];
                // SAFETY: pipe2 fills our array.
                unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) };
                let w = fork();
                if w == 0 {
                    // SAFETY: worker side: the read end becomes stdin; supervisor's ends go.
                    unsafe {
                        libc::dup2(p[0], 0);
                        libc::close(p[0]);
                        libc::close(p[1]);
                        libc::close(rd);
                    }
                    for s in [libc::SIGTERM, libc::SIGINT, libc::SIGCHLD] {
                        set_handler(s, libc::SIG_DFL);
                    }
                    self.elders.push(sup);
                    // The worker's stdin is our pipe, whatever --no-stdin says: closing it
                    // is how the supervisor stops the worker.
                    self.watch_stdin = true;
                    self.generation = generation;
                    self.become_worker();
                    return;
                }
                // SAFETY: the supervisor keeps only the write end.
                unsafe { libc::close(p[0]) };
                (w, p[1])
            }};
        }
        (worker, to_worker) = spawn!();
        self.ev.emit(
            "fork",
            json!({"child": worker, "role": "worker", "generation": 0}),
        );
        let mut watch_stdin = self.watch_stdin;
        loop {
            let timeout = respawn_at.map_or(-1, |t| {
                t.saturating_duration_since(Instant::now()).as_millis() as i32
            });
            let mut fds = vec![libc::pollfd {
                fd: rd,
                events: libc::POLLIN,
                revents: 0,
            }];
            if watch_stdin {
                fds.push(libc::pollfd {
                    fd: 0,
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            // SAFETY: poll on our own array.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as _, timeout) };
            let mut stop_now = false;
            for sig in drain(rd) {
                match sig {
                    libc::SIGCHLD => loop {
                        let mut st = 0;
                        // SAFETY: reaping any of our children.
                        let p = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
                        if p <= 0 {
                            break;
                        }
                        self.ev.emit(
                            "child-exit",
                            json!({"child": p, "status": describe_status(st)}),
                        );
                        if p == worker {
                            worker = -1;
                            // SAFETY: the dead worker's pipe end is ours to close.
                            unsafe { libc::close(to_worker) };
                            to_worker = -1;
                            if stopping {
                                self.ev
                                    .emit("exit", json!({"code": 0, "how": "supervisor-stopped"}));
                                hard_exit(0);
                            }
                            respawn_at = Some(Instant::now() + delay);
                        }
                    },
                    s => {
                        self.ev.emit(
                            "signal",
                            json!({"signal": sig_name(s), "action": "stop-worker"}),
                        );
                        stop_now = true;
                    }
                }
            }
            if watch_stdin && fds.len() > 1 && fds[1].revents != 0 && mcp::stdin_eof() {
                watch_stdin = false;
                self.ev.emit("stdin-eof", json!({}));
                stop_now = true;
            }
            if stop_now && !stopping {
                stopping = true;
                respawn_at = None;
                if worker < 0 {
                    self.ev
                        .emit("exit", json!({"code": 0, "how": "supervisor-stopped"}));
                    hard_exit(0);
                }
                // Closing the worker's stdin is how an MCP client says goodbye.
                // SAFETY: closing our pipe end.
                unsafe { libc::close(to_worker) };
                to_worker = -1;
            }
            if respawn_at.is_some_and(|t| Instant::now() >= t) && !stopping {
                respawn_at = None;
                generation += 1;
                (worker, to_worker) = spawn!();
                self.ev.emit(
                    "respawn",
                    json!({"child": worker, "generation": generation}),
                );
            }
        }
    }

    fn fail(&self, code: i32, msg: &str) -> ! {
        eprintln!("{msg}");
        self.ev.emit(
            "exit",
            json!({"code": code, "how": "startup-error", "error": msg}),
        );
        hard_exit(code)
    }

    fn warn(&self, msg: &str) {
        eprintln!("WARNING: {msg}");
        self.ev.emit("warning", json!({"message": msg}));
    }

    fn home_legacy_path(&self) -> PathBuf {
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
        PathBuf::from(home).join(".memtomem/.server.pid")
    }

    fn prepare_runtime(&mut self) {
        if self.cli.legacy == Some(Legacy::Pre0125) {
            return; // pre-0.1.25 had no runtime dir at all
        }
        let dir = paths::resolve_runtime_dir(self.cli.runtime_dir.as_deref());
        let res = match self.m.unsafe_dir {
            None => paths::ensure(&dir),
            Some(k) => setup_unsafe_dir(&dir, k),
        };
        if let Err(reason) = res {
            self.fail(
                1,
                &format!("fake-server: runtime dir {}: {reason}", dir.display()),
            );
        }
        self.runtime = Some(dir);
    }

    /// The server proper, in the [0.6.12] startup order.
    fn run(mut self) {
        self.prepare_runtime();
        sigmask(libc::SIG_BLOCK, &[libc::SIGTERM]);
        self.sig_rd = make_sig_pipe();
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGCHLD] {
            catch(s);
        }
        let want_presence = !self.cli.web
            && self.cli.legacy != Some(Legacy::Pre0125)
            && (!self.m.db_writer || self.m.secondary);
        if want_presence {
            let digest = if self.cli.bare {
                None
            } else {
                self.digest.clone()
            };
            let rt = self.runtime.clone().expect("runtime dir");
            match locks::register_presence(&rt, digest.as_deref(), &self.procid) {
                Ok(p) => {
                    self.ev
                        .emit("lock", json!({"kind": "presence", "path": p.path}));
                    self.presence = Some(p);
                }
                Err(e) => self.warn(&format!(
                    "Could not record this server in the instance registry ({e})."
                )),
            }
        }
        if self.m.crash_on_start {
            eprintln!("fake-server: crash-on-start");
            self.ev
                .emit("exit", json!({"code": 1, "how": "crash-on-start"}));
            hard_exit(1);
        }
        if self.cli.web {
            self.take_web_pid();
        } else {
            match self.cli.legacy {
                Some(Legacy::Pre0125) => self.take_legacy_exclusive(),
                Some(Legacy::Alias) => self.take_alias(),
                None => self.take_server_pid(),
            }
        }
        if self.m.db_writer {
            self.open_db_writer();
        }
        if let Some(root) = self.m.wiki_lock.clone() {
            self.take_wiki_lock(root);
        }
        self.map_files();
        for _ in 0..self.m.fork_children {
            self.fork_child();
        }
        sigmask(libc::SIG_UNBLOCK, &[libc::SIGTERM]);
        if self.m.child_holds_flock {
            self.hand_lock_to_child();
        }
        if let Some((fd, parent)) = self.orphan_parent.take() {
            self.become_orphan(fd, parent);
        }
        self.write_ready();
        if self.m.stopped {
            self.ev.emit("stop-self", json!({}));
            // SAFETY: raise on ourselves.
            unsafe { libc::raise(libc::SIGSTOP) };
            self.ev.emit("continued", json!({}));
        }
        self.main_loop();
    }

    fn server_payload(&self) -> Vec<u8> {
        let p = pid();
        let stamp = &self.stamp;
        match self.m.corrupt {
            None => format!("{p}\n\n{stamp}\n").into_bytes(),
            Some(Corrupt::Empty) => Vec::new(),
            Some(Corrupt::Garbage) => format!("not-a-pid\n\n{stamp}\n").into_bytes(),
            Some(Corrupt::Zero) => format!("0\n\n{stamp}\n").into_bytes(),
            Some(Corrupt::Negative) => format!("-1\n\n{stamp}\n").into_bytes(),
            Some(Corrupt::One) => format!("1\n\n{stamp}\n").into_bytes(),
            // The pid of whoever launched us (an upgrader must never signal itself).
            Some(Corrupt::SelfPid) => {
                format!("{}\n\n{stamp}\n", nix::unistd::getppid()).into_bytes()
            }
            Some(Corrupt::Oversize) => {
                let mut v = format!("{p}\n\n{stamp}\n").into_bytes();
                v.resize(5000, b' ');
                v.push(b'\n');
                v
            }
            Some(Corrupt::NonUtf8) => {
                let mut v = vec![0xff, 0xfe];
                v.extend_from_slice(format!("{p}\n\n{stamp}\n").as_bytes());
                v
            }
            Some(Corrupt::NoStamp) => format!("{p}\n\n").into_bytes(),
        }
    }

    fn take_server_pid(&mut self) {
        let rt = self.runtime.clone().expect("runtime dir");
        let digest = if self.cli.bare {
            None
        } else {
            self.digest.as_deref()
        };
        let path = rt.join(paths::pid_file_name(digest));
        if self.m.secondary || self.m.db_writer {
            if self.m.secondary {
                self.warn(&lost_lock_msg(&path));
            }
            return;
        }
        if self.m.pidfile_fifo {
            if let Err(e) =
                nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o644))
            {
                if e != nix::errno::Errno::EEXIST {
                    self.fail(1, &format!("fake-server: mkfifo {}: {e}", path.display()));
                }
            }
            self.extra_unlink.push(path.clone());
            self.ev.emit("warning", json!({"message": "pid path is a FIFO; running with presence marker only", "path": path}));
            return;
        }
        let follow = self.m.pidfile_symlink;
        if follow {
            let mut target = path.clone().into_os_string();
            target.push(".real");
            let target = PathBuf::from(target);
            if std::fs::symlink_metadata(&path).is_err() {
                if let Err(e) = std::os::unix::fs::symlink(&target, &path) {
                    self.fail(1, &format!("fake-server: symlink {}: {e}", path.display()));
                }
            }
            self.extra_unlink.push(target);
        }
        match locks::lock_pid_file(&path, follow) {
            Ok(PidLock::Won(mut f)) => {
                self.ev.emit("lock", json!({"kind": "pid", "path": path}));
                if let Some(ms) = self.m.lock_before_payload {
                    // The startup gap: locked, empty, SIGTERM still blocked (as upstream).
                    let _ = f.set_len(0);
                    std::thread::sleep(Duration::from_millis(ms));
                }
                let payload = self.server_payload();
                if let Err(e) = locks::write_payload(&mut f, &payload, false) {
                    self.fail(1, &format!("fake-server: write {}: {e}", path.display()));
                }
                self.pid_path = Some(path);
                self.pid_fd = Some(f);
            }
            Ok(PidLock::Lost) => {
                self.extra_unlink.clear();
                self.warn(&lost_lock_msg(&path));
            }
            Err(e) => {
                // A non-contention lock error crashes the real server after cleaning up its
                // presence marker.
                self.cleanup();
                self.fail(
                    1,
                    &format!("fake-server: cannot lock {}: {e}", path.display()),
                );
            }
        }
    }

    fn take_web_pid(&mut self) {
        let rt = self.runtime.clone().expect("runtime dir");
        let path = rt.join("web.pid");
        match locks::lock_pid_file(&path, false) {
            Ok(PidLock::Won(mut f)) => {
                self.ev.emit("lock", json!({"kind": "web", "path": path}));
                // `mm web` stamps after the lock, unlike the server.
                self.stamp = util::iso_now();
                let payload = format!("{}\n{}\n{}\n", pid(), self.cli.port, self.stamp);
                if let Err(e) = locks::write_payload(&mut f, payload.as_bytes(), true) {
                    self.fail(1, &format!("fake-server: write {}: {e}", path.display()));
                }
                let json_path = rt.join("web.json");
                let meta = json!({"pid": pid(), "port": self.cli.port, "procid": self.procid, "started": self.stamp});
                // serde_json's map is a BTreeMap here, so keys come out sorted like
                // Python's sort_keys=True; ", " and ": " separators match json.dumps.
                let text = python_json(&meta);
                if let Err(e) = std::fs::write(&json_path, format!("{text}\n")) {
                    self.fail(
                        1,
                        &format!("fake-server: write {}: {e}", json_path.display()),
                    );
                }
                self.web_json = Some(json_path);
                self.pid_path = Some(path);
                self.pid_fd = Some(f);
            }
            Ok(PidLock::Lost) => self.fail(
                1,
                &format!(
                    "Error: memtomem Web UI is already running (pid file: {}).",
                    path.display()
                ),
            ),
            Err(e) => self.fail(
                1,
                &format!("fake-server: cannot lock {}: {e}", path.display()),
            ),
        }
    }

    fn legacy_open(&self) -> (PathBuf, File) {
        let path = self.home_legacy_path();
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        match locks::open_append(&path, false) {
            Ok(f) => (path, f),
            Err(e) => self.fail(1, &format!("fake-server: open {}: {e}", path.display())),
        }
    }

    fn take_legacy_exclusive(&mut self) {
        let (path, mut f) = self.legacy_open();
        match locks::flock(&f, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(locks::Try::Locked) => {}
            _ => self.fail(
                1,
                &format!(
                    "Another memtomem server is already running (pid file: {}).",
                    path.display()
                ),
            ),
        }
        self.ev
            .emit("lock", json!({"kind": "legacy-exclusive", "path": path}));
        if let Err(e) = locks::write_payload(&mut f, pid().to_string().as_bytes(), false) {
            self.fail(1, &format!("fake-server: write {}: {e}", path.display()));
        }
        // Pre-0.1.25 never unlinked this file (#437), so it is not a cleanup target.
        self.pid_path = None;
        self.legacy_fd = Some(f);
        self.extra_unlink.clear();
        self.legacy_path_for_ready = Some(path);
    }

    fn take_alias(&mut self) {
        let (lpath, mut lf) = self.legacy_open();
        match locks::flock(&lf, libc::LOCK_SH | libc::LOCK_NB) {
            Ok(locks::Try::Locked) => {}
            _ => self.fail(
                1,
                &format!(
                    "A pre-0.1.25 memtomem server holds {} exclusively; stop it first.",
                    lpath.display()
                ),
            ),
        }
        self.ev
            .emit("lock", json!({"kind": "legacy-shared", "path": lpath}));
        if lf.metadata().map(|m| m.len() == 0).unwrap_or(false) {
            let _ = locks::write_payload(&mut lf, pid().to_string().as_bytes(), false);
        }
        self.legacy_fd = Some(lf);
        let rt = self.runtime.clone().expect("runtime dir");
        let path = rt.join("server.pid");
        match locks::lock_pid_file(&path, false) {
            Ok(PidLock::Won(mut f)) => {
                self.ev.emit("lock", json!({"kind": "pid", "path": path}));
                // 0.1.26 predates start stamps (#2029): the payload is the bare pid line.
                let _ = locks::write_payload(&mut f, format!("{}\n", pid()).as_bytes(), false);
                self.pid_path = Some(path);
                self.pid_fd = Some(f);
            }
            Ok(PidLock::Lost) => self.warn(&lost_lock_msg(&path)),
            Err(e) => self.fail(
                1,
                &format!("fake-server: cannot lock {}: {e}", path.display()),
            ),
        }
        // 0.1.26 unlinks the alias on SIGTERM and atexit (#439).
        self.extra_unlink.push(lpath);
    }

    fn open_db_writer(&mut self) {
        let path = paths::normalise(&self.store).unwrap_or_else(|| PathBuf::from(&self.store));
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let conn = match rusqlite::Connection::open(&path) {
            Ok(c) => c,
            Err(e) => self.fail(
                1,
                &format!("fake-server: sqlite open {}: {e}", path.display()),
            ),
        };
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            self.fail(
                1,
                &format!("fake-server: BEGIN IMMEDIATE on {}: {e}", path.display()),
            );
        }
        self.ev
            .emit("lock", json!({"kind": "sqlite-write", "path": path}));
        self._db = Some(conn);
    }

    fn map_files(&mut self) {
        let all: Vec<(PathBuf, bool)> = self
            .m
            .maps
            .iter()
            .map(|p| (p.clone(), false))
            .chain(self.m.old_generation.iter().map(|p| (p.clone(), true)))
            .collect();
        for (p, delete) in all {
            let f = match File::open(&p) {
                Ok(f) => f,
                Err(e) => self.fail(1, &format!("fake-server: open {}: {e}", p.display())),
            };
            let len = f.metadata().map(|m| m.len()).unwrap_or(0).max(1) as usize;
            // SAFETY: a private read-only mapping that lives until the process exits; it
            // is never dereferenced, it only has to appear in /proc/<pid>/maps.
            let addr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE,
                    f.as_raw_fd(),
                    0,
                )
            };
            if addr == libc::MAP_FAILED {
                self.fail(
                    1,
                    &format!(
                        "fake-server: mmap {}: {}",
                        p.display(),
                        std::io::Error::last_os_error()
                    ),
                );
            }
            if delete {
                if let Err(e) = std::fs::remove_file(&p) {
                    self.fail(1, &format!("fake-server: delete {}: {e}", p.display()));
                }
            }
            self.ev.emit("map", json!({"path": p, "deleted": delete}));
        }
    }

    fn fork_child(&mut self) {
        let c = fork();
        if c == 0 {
            // SAFETY: child side: drop the self-pipe so signals take default action.
            unsafe { libc::close(self.sig_rd) };
            for s in [libc::SIGTERM, libc::SIGINT, libc::SIGCHLD] {
                set_handler(s, libc::SIG_DFL);
            }
            sigmask(libc::SIG_UNBLOCK, &[libc::SIGTERM]);
            if self.m.children_close_lock {
                // Closing our reference does not unlock (the parent still holds the open
                // file description); it just means this child no longer keeps it alive.
                drop(self.pid_fd.take());
                drop(self.presence.take());
                drop(self.legacy_fd.take());
            }
            loop {
                // SAFETY: idle until a signal kills us.
                unsafe { libc::pause() };
            }
        }
        self.ev.emit(
            "fork",
            json!({"child": c, "role": "child", "holds_lock": !self.m.children_close_lock}),
        );
        self.children.push(c as u32);
    }

    /// Fork an heir that inherits the locked descriptors; the original exits without
    /// unlinking anything, so the pid file names a dead pid whose lock is still held.
    fn hand_lock_to_child(&mut self) {
        let parent = pid();
        let c = fork();
        if c > 0 {
            self.ev
                .emit("fork", json!({"child": c, "role": "lock-heir"}));
            self.ev.emit(
                "exit",
                json!({"code": 0, "how": "parent-exit-child-holds-flock"}),
            );
            hard_exit(0);
        }
        // A fresh self-pipe: a signal aimed at the exiting parent must not reach the heir.
        let inherited = self.sig_rd;
        self.sig_rd = make_sig_pipe();
        // SAFETY: closing the inherited read end, which this process owns a copy of.
        unsafe { libc::close(inherited) };
        // Ready only once the parent is really gone (re-parented), so harnesses can rely on it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while nix::unistd::getppid().as_raw() as u32 == parent && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn write_ready(&mut self) {
        if self.m.ignore_sigterm {
            // The real disposition, as `signal(SIGTERM, SIG_IGN)` in a broken
            // server would set it: the kernel drops SIGTERM, /proc shows SigIgn.
            set_handler(libc::SIGTERM, libc::SIG_IGN);
        }
        if let Some(fd) = self.ready_pipe.take() {
            self.report_ready_to_launcher(fd);
            return;
        }
        let Some(path) = &self.cli.ready_file else {
            self.ev.emit("ready", json!({}));
            return;
        };
        if let Err(e) = util::write_json_atomic(path, &self.ready_record()) {
            eprintln!(
                "fake-server: cannot write ready file {}: {e}",
                path.display()
            );
        }
        self.ev.emit("ready", json!({"ready_file": path}));
    }

    /// What the ready file says: this server, the processes of this invocation that are
    /// meant to keep running before it (launcher, supervisor) and what it forked after.
    fn ready_record(&self) -> serde_json::Value {
        let mut pids = self.elders.clone();
        pids.push(pid());
        pids.extend(&self.children);
        let pid_file = self
            .pid_path
            .clone()
            .or_else(|| self.legacy_path_for_ready.clone());
        let p = |x: Option<&Path>| x.map(|p| p.to_string_lossy().into_owned());
        json!({
            "pid": pid(),
            "pids": pids,
            "pid_file": p(pid_file.as_deref()),
            "presence": p(self.presence.as_ref().map(|p| p.path.as_path())),
            "mode": self.m.raw,
            "runtime_dir": p(self.runtime.as_deref()),
            "started": self.stamp,
            "procid": self.procid,
            "wiki_locks": self.wiki_paths,
        })
    }

    /// `wiki-lock[=ROOT]`: what a wiki commit holds while it runs (upstream #2225), for
    /// the whole life of this server: `<runtime>/wiki-commit-<sha256(resolved root)[:16]>.lock`
    /// and the transitional legacy lock, taken first like upstream. The legacy one is
    /// `<runtime>/legacy/…` when the runtime dir is an override (`--runtime-dir`, or
    /// memtomem's test override), else `$TMPDIR/memtomem/…`. Both 0600, EX flock, never
    /// unlinked (neither is a liveness signal nor anyone's to delete).
    fn take_wiki_lock(&mut self, root: Option<PathBuf>) {
        let root = root.unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/".into()))
                .join(".memtomem-wiki")
        });
        let Some(digest) = paths::path_digest(root.as_os_str()) else {
            self.fail(
                1,
                &format!(
                    "fake-server: wiki root {} cannot be resolved",
                    root.display()
                ),
            );
        };
        let rt = self.runtime.clone().expect("runtime dir");
        let name = format!("wiki-commit-{digest}.lock");
        let legacy = if paths::runtime_dir_is_override(self.cli.runtime_dir.as_deref()) {
            rt.join("legacy").join(&name)
        } else {
            std::env::temp_dir().join("memtomem").join(&name)
        };
        for (kind, path) in [
            ("wiki-commit-legacy", legacy),
            ("wiki-commit", rt.join(&name)),
        ] {
            match locks::hold_exclusive(&path, Duration::from_secs(5)) {
                Ok(f) => {
                    self.ev
                        .emit("lock", json!({"kind": kind, "path": path, "root": root}));
                    self.wiki_paths.push(path);
                    self.wiki_locks.push(f);
                }
                Err(e) => self.fail(
                    1,
                    &format!("fake-server: wiki lock {}: {e}", path.display()),
                ),
            }
        }
    }

    /// Unlink our own files: presence marker first, then web.json, then the pid file
    /// (while still holding its lock), matching the real handler's target order.
    fn cleanup(&mut self) {
        if pid() != self.owner_pid {
            return;
        }
        if let Some(p) = &self.presence {
            let _ = std::fs::remove_file(&p.path);
        }
        if let Some(j) = &self.web_json {
            let _ = std::fs::remove_file(j);
        }
        if let Some(p) = &self.pid_path {
            let _ = std::fs::remove_file(p);
        }
        for p in &self.extra_unlink {
            let _ = std::fs::remove_file(p);
        }
    }

    fn exit(&mut self, code: i32, how: &str, clean: bool) -> ! {
        let guarded = pid() != self.owner_pid;
        if clean {
            self.cleanup();
        }
        self.ev.emit(
            "exit",
            json!({"code": code, "how": how, "cleaned": clean && !guarded}),
        );
        hard_exit(code)
    }

    fn on_sigterm(&mut self) -> bool {
        let m = self.m.clone();
        if m.ignore_sigterm || m.catch_sigterm {
            self.ev
                .emit("signal", json!({"signal": "SIGTERM", "action": "ignored"}));
            return false;
        }
        if self.cli.legacy == Some(Legacy::Pre0125) {
            self.ev
                .emit("signal", json!({"signal": "SIGTERM", "action": "exit"}));
            self.exit(0, "sigterm-legacy-no-unlink", false);
        }
        if m.respawn_on_term {
            let mut cmd = std::process::Command::new("/proc/self/exe");
            cmd.args(std::env::args_os().skip(1))
                .env("FAKE_SERVER_GENERATION", (self.generation + 1).to_string());
            match cmd.spawn() {
                Ok(child) => {
                    self.ev
                        .emit("signal", json!({"signal": "SIGTERM", "action": "respawn"}));
                    self.ev.emit(
                        "respawn",
                        json!({"child": child.id(), "generation": self.generation + 1}),
                    );
                }
                Err(e) => eprintln!("fake-server: respawn-on-term failed: {e}"),
            }
        }
        if let Some(ms) = m.slow_shutdown {
            self.ev.emit(
                "signal",
                json!({"signal": "SIGTERM", "action": "slow-shutdown", "ms": ms}),
            );
            std::thread::sleep(Duration::from_millis(ms));
        } else if !m.respawn_on_term {
            self.ev.emit(
                "signal",
                json!({"signal": "SIGTERM", "action": "cleanup-exit"}),
            );
        }
        let code = m.exit_code_on_term.unwrap_or(0);
        if m.leak_pidfile {
            self.exit(code, "sigterm-leak", false);
        }
        let how = if pid() != self.owner_pid {
            "sigterm-pid-guarded"
        } else {
            "sigterm-cleanup"
        };
        self.exit(code, how, true)
    }

    fn main_loop(&mut self) -> ! {
        let watch_stdin = self.watch_stdin;
        loop {
            let mut fds = vec![libc::pollfd {
                fd: self.sig_rd,
                events: libc::POLLIN,
                revents: 0,
            }];
            if watch_stdin {
                fds.push(libc::pollfd {
                    fd: 0,
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            // SAFETY: poll on our own array.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as _, -1) };
            for sig in drain(self.sig_rd) {
                match sig {
                    libc::SIGTERM => {
                        self.on_sigterm();
                    }
                    libc::SIGINT if self.cli.web => {
                        self.ev.emit(
                            "signal",
                            json!({"signal": "SIGINT", "action": "cleanup-exit"}),
                        );
                        self.exit(0, "sigint-cleanup", true);
                    }
                    libc::SIGINT => {
                        // Upstream's asyncio runner cancels, but the blocked stdin reader
                        // thread keeps the process alive until stdin closes.
                        self.sigint_seen = true;
                        self.ev.emit(
                            "signal",
                            json!({"signal": "SIGINT", "action": "deferred-until-stdin-eof"}),
                        );
                    }
                    libc::SIGCHLD => loop {
                        let mut st = 0;
                        // SAFETY: reaping our own children.
                        let p = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
                        if p <= 0 {
                            break;
                        }
                        self.children.retain(|c| *c != p as u32);
                        self.ev.emit(
                            "child-exit",
                            json!({"child": p, "status": describe_status(st)}),
                        );
                    },
                    _ => {}
                }
            }
            if watch_stdin && fds.len() > 1 && fds[1].revents != 0 {
                self.on_stdin(); // MCP requests, or EOF: on_stdin_eof
            }
        }
    }

    fn on_stdin_eof(&mut self) -> ! {
        self.ev.emit("stdin-eof", json!({}));
        if self.sigint_seen {
            self.cleanup();
            self.ev.emit(
                "exit",
                json!({"signal": "SIGINT", "how": "sigint-after-stdin-eof", "cleaned": true}),
            );
            eprintln!("KeyboardInterrupt");
            set_handler(libc::SIGINT, libc::SIG_DFL);
            sigmask(libc::SIG_UNBLOCK, &[libc::SIGINT]);
            // SAFETY: die by the signal itself, as Python does after KeyboardInterrupt.
            unsafe { libc::raise(libc::SIGINT) };
            hard_exit(130);
        }
        self.exit(0, "stdin-eof", true)
    }
}

fn drain(fd: RawFd) -> Vec<i32> {
    let mut out = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: non-blocking read of our self-pipe.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return out;
        }
        out.extend(buf[..n as usize].iter().map(|b| *b as i32));
    }
}

fn describe_status(st: libc::c_int) -> serde_json::Value {
    if libc::WIFEXITED(st) {
        json!({"code": libc::WEXITSTATUS(st)})
    } else if libc::WIFSIGNALED(st) {
        json!({"signal": sig_name(libc::WTERMSIG(st))})
    } else {
        json!({"raw": st})
    }
}

fn lost_lock_msg(path: &Path) -> String {
    format!(
        "Another memtomem-server is already writing to this store (pid file: {}). Concurrent writes may be slow.",
        path.display()
    )
}

/// `json.dumps(obj, sort_keys=True)` for a flat object: ", " and ": " separators.
fn python_json(v: &serde_json::Value) -> String {
    let Some(map) = v.as_object() else {
        return v.to_string();
    };
    let parts: Vec<String> = map
        .iter()
        .map(|(k, v)| format!("{}: {}", serde_json::Value::from(k.as_str()), v))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

fn setup_unsafe_dir(dir: &Path, kind: UnsafeDir) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mkdir = |d: &Path| match std::fs::create_dir(d) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("cannot create ({e})")),
    };
    match kind {
        UnsafeDir::World => {
            mkdir(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
                .map_err(|e| format!("chmod 0777 failed ({e})"))
        }
        UnsafeDir::WrongOwner => {
            mkdir(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("chmod failed ({e})"))?;
            std::os::unix::fs::chown(dir, Some(65534), Some(65534))
                .map_err(|e| format!("chown to nobody failed, needs root ({e})"))
        }
        UnsafeDir::Link => {
            if std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) {
                return Ok(());
            }
            let mut target = dir.as_os_str().to_os_string();
            target.push(".target");
            let target = PathBuf::from(target);
            mkdir(&target)?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("chmod failed ({e})"))?;
            std::os::unix::fs::symlink(&target, dir)
                .map_err(|e| format!("cannot create symlink ({e})"))
        }
    }
}
