//! `fake-host`: a respawning MCP client double, as an MCP host (a desktop client, an IDE,
//! an agent) keeps its stdio server.
//!
//! It starts the server command with piped stdin and stdout (in the host's own process
//! group, as hosts do), sends `initialize`, then `notifications/initialized`, and pings every
//! `--ping-ms`. Whenever the server dies it starts it again at once (`--respawn-ms`
//! later, 0 by default). Every session is logged, as JSON lines in `--log`, with the
//! `serverInfo.version` it reported and CLOCK_MONOTONIC stamps (`mono_ns`, the clock
//! every other log of the suite uses):
//!
//! | event | fields |
//! |---|---|
//! | `start` | `argv` (the server command), `ping_ms` |
//! | `spawn` | `server` (pid), `n` (1, 2, …) |
//! | `spawn-failed` | `n`, `error` (retried after 5 ms: an entry point being relinked) |
//! | `session` | `server`, `n`, `version`, `name`, `protocolVersion`, `init_ms` (spawn → answer), `spawned_mono_ns` |
//! | `init-failed` | `server`, `n`, `error` (an error answer; the server is killed) |
//! | `init-timeout` | `server`, `n`, `ms` (no answer to `initialize`; the server is killed) |
//! | `ping-late` | `server`, `n`, `ms` (a ping unanswered for 2 s; logged once a session) |
//! | `died` | `server`, `n`, `status` (`exited(N)`, `killed(SIGX)`), `version`, `pings`, `session_ms` |
//! | `gave-up` | `spawns` (`--max-spawns` reached: no more respawns) |
//! | `stop` | `reason` (`SIGTERM`, `SIGINT`, `stdin-eof`) |
//! | `exit` | `code` |
//!
//! `mono_ns` of a `session` record is when the answer was read, of a `died` record when
//! the death was reaped. `--ready-file` is (re)written atomically at every session:
//! `{"pid": <server>, "pids": [<host>, <server>], "session": n, "version": V}`.
//!
//! It stops on SIGTERM, SIGINT or EOF on its own stdin (not with `--no-stdin`): it closes
//! the server's stdin (how an MCP host says goodbye), gives it `--stop-grace-ms`, then
//! SIGKILLs it, reaps it, and exits 0. Requests the server sends (`ping`) are answered.

#[allow(dead_code)]
#[path = "../util.rs"]
mod util;

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};

use util::Events;

#[derive(Parser, Debug)]
#[command(
    name = "fake-host",
    version,
    about = "A respawning MCP client double: initialize, ping, start the server again at once when it dies"
)]
struct Cli {
    /// JSON-lines log of every session (spawn, session with serverInfo.version, died, …).
    #[arg(long, value_name = "PATH")]
    log: PathBuf,
    /// Rewritten atomically at every session: {"pid", "pids", "session", "version"}.
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,
    /// Ping the server this often once it is initialized.
    #[arg(long, default_value_t = 100, value_name = "MS")]
    ping_ms: u64,
    /// Kill a server that has not answered `initialize` within this.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    init_timeout_ms: u64,
    /// Start the server again this long after it died (0: at once).
    #[arg(long, default_value_t = 0, value_name = "MS")]
    respawn_ms: u64,
    /// Stop respawning after this many starts (0: never stop).
    #[arg(long, default_value_t = 0, value_name = "N")]
    max_spawns: u32,
    /// The protocol revision asked for in `initialize`.
    #[arg(long, default_value = "2025-06-18", value_name = "REV")]
    protocol_version: String,
    /// On stop: how long the server has to exit after its stdin closes, before SIGKILL.
    #[arg(long, default_value_t = 200, value_name = "MS")]
    stop_grace_ms: u64,
    /// Do not stop on EOF on our own stdin (for launches with stdin at /dev/null).
    #[arg(long)]
    no_stdin: bool,
    /// The server command and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    command: Vec<OsString>,
}

// ---- signals: a self-pipe, drained by the main loop ---------------------------------------

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

fn signal_pipe(sigs: &[libc::c_int]) -> RawFd {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills our array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        eprintln!("fake-host: pipe2: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    SIG_WR.store(fds[1], Ordering::Relaxed);
    for &sig in sigs {
        // SAFETY: a handler that only calls write(2); dispositions reset on exec.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    fds[0]
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

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGHUP => "SIGHUP".into(),
        libc::SIGPIPE => "SIGPIPE".into(),
        n => format!("SIG{n}"),
    }
}

fn describe(st: ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exited({c})"),
        (_, Some(s)) => format!("killed({})", signal_name(s)),
        _ => format!("status({})", st.into_raw()),
    }
}

fn ms_since(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

// ---- one server process and its MCP session -----------------------------------------------

enum Phase {
    /// `initialize` sent (id 1); killed if unanswered at the deadline.
    Initializing { deadline: Instant },
    /// Answered: pinging.
    Ready {
        next_ping: Instant,
        /// The ping in flight: its id and when it was sent.
        pending: Option<(u64, Instant)>,
        late_logged: bool,
    },
    /// `initialize` failed or timed out: killed, waiting for the death.
    Doomed,
}

struct Session {
    n: u32,
    child: Child,
    pid: i32,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    buf: Vec<u8>,
    spawned: Instant,
    spawned_ns: u64,
    phase: Phase,
    version: Option<String>,
    initialized_at: Option<Instant>,
    pings: u64,
    next_id: u64,
}

impl Session {
    fn send(&mut self, msg: &Value) {
        if let Some(w) = self.stdin.as_mut() {
            let mut line = msg.to_string();
            line.push('\n');
            // A dead server's pipe gives EPIPE (SIGPIPE is ignored in Rust programs): its
            // death is seen through SIGCHLD.
            if w.write_all(line.as_bytes()).is_err() {
                self.stdin = None;
            }
        }
    }

    fn kill(&self) {
        // SAFETY: signalling our own child, which we have not reaped yet.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
    }

    /// Reads what the server wrote; returns the complete lines. None at EOF.
    fn read_lines(&mut self) -> Option<Vec<Value>> {
        let out = self.stdout.as_mut()?;
        let mut chunk = [0u8; 8192];
        let mut eof = false;
        loop {
            match std::io::Read::read(out, &mut chunk) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        let mut lines = Vec::new();
        while let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                lines.push(v);
            }
        }
        if eof {
            self.stdout = None;
        }
        Some(lines)
    }
}

struct Host {
    cli: Cli,
    log: Events,
    spawns: u32,
    session: Option<Session>,
    respawn_at: Option<Instant>,
    gave_up: bool,
}

impl Host {
    fn spawn(&mut self) {
        if self.cli.max_spawns > 0 && self.spawns >= self.cli.max_spawns {
            if !self.gave_up {
                self.gave_up = true;
                self.log.emit("gave-up", json!({"spawns": self.spawns}));
            }
            return;
        }
        self.spawns += 1;
        let n = self.spawns;
        let mut cmd = Command::new(&self.cli.command[0]);
        cmd.args(&self.cli.command[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let spawned = Instant::now();
        let spawned_ns = util::mono_ns() as u64;
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                // An entry point being relinked is missing for a moment: try again soon.
                self.log
                    .emit("spawn-failed", json!({"n": n, "error": e.to_string()}));
                self.respawn_at = Some(Instant::now() + Duration::from_millis(5));
                return;
            }
        };
        let pid = child.id() as i32;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        if let Some(o) = &stdout {
            set_nonblocking(o.as_raw_fd());
        }
        self.log.emit("spawn", json!({"server": pid, "n": n}));
        let mut s = Session {
            n,
            child,
            pid,
            stdin,
            stdout,
            buf: Vec::new(),
            spawned,
            spawned_ns,
            phase: Phase::Initializing {
                deadline: spawned + Duration::from_millis(self.cli.init_timeout_ms),
            },
            version: None,
            initialized_at: None,
            pings: 0,
            next_id: 2,
        };
        s.send(&json!({
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": self.cli.protocol_version,
                "capabilities": {},
                "clientInfo": {"name": "fake-host", "version": env!("CARGO_PKG_VERSION")},
            },
        }));
        self.session = Some(s);
    }

    fn on_message(&mut self, msg: Value) {
        let ping_every = Duration::from_millis(self.cli.ping_ms);
        let Some(s) = self.session.as_mut() else {
            return;
        };
        // A request from the server: answer a ping, refuse anything else.
        if let (Some(method), Some(id)) = (msg.get("method").and_then(Value::as_str), msg.get("id"))
        {
            let answer = if method == "ping" {
                json!({"jsonrpc": "2.0", "id": id, "result": {}})
            } else {
                json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "Method not found"}})
            };
            s.send(&answer);
            return;
        }
        let id = msg.get("id").and_then(Value::as_u64);
        match &mut s.phase {
            Phase::Initializing { .. } if id == Some(1) => {
                let Some(result) = msg.get("result") else {
                    self.log.emit(
                        "init-failed",
                        json!({"server": s.pid, "n": s.n, "error": msg.get("error")}),
                    );
                    s.phase = Phase::Doomed;
                    s.kill();
                    return;
                };
                let info = &result["serverInfo"];
                let version = info["version"].as_str().unwrap_or("").to_string();
                self.log.emit(
                    "session",
                    json!({
                        "server": s.pid,
                        "n": s.n,
                        "version": version,
                        "name": info["name"],
                        "protocolVersion": result["protocolVersion"],
                        "init_ms": ms_since(s.spawned),
                        "spawned_mono_ns": s.spawned_ns,
                    }),
                );
                s.version = Some(version.clone());
                s.initialized_at = Some(Instant::now());
                s.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
                s.phase = Phase::Ready {
                    next_ping: Instant::now() + ping_every,
                    pending: None,
                    late_logged: false,
                };
                if let Some(path) = &self.cli.ready_file {
                    let v = json!({
                        "pid": s.pid,
                        "pids": [std::process::id() as i32, s.pid],
                        "session": s.n,
                        "version": version,
                    });
                    if let Err(e) = util::write_json_atomic(path, &v) {
                        eprintln!("fake-host: ready file {}: {e}", path.display());
                    }
                }
            }
            Phase::Ready { pending, .. } if pending.is_some_and(|(p, _)| Some(p) == id) => {
                *pending = None;
                s.pings += 1;
            }
            _ => {}
        }
    }

    /// Pings that are due, initialize deadlines; returns the next deadline.
    fn on_time(&mut self) -> Option<Instant> {
        let now = Instant::now();
        let ping_every = Duration::from_millis(self.cli.ping_ms);
        let mut next = self.respawn_at;
        if let Some(s) = self.session.as_mut() {
            let mut send_ping = None;
            match &mut s.phase {
                Phase::Initializing { deadline } => {
                    if now >= *deadline {
                        self.log.emit(
                            "init-timeout",
                            json!({"server": s.pid, "n": s.n, "ms": self.cli.init_timeout_ms}),
                        );
                        s.phase = Phase::Doomed;
                        s.kill();
                    } else {
                        next = min_opt(next, *deadline);
                    }
                }
                Phase::Ready {
                    next_ping,
                    pending,
                    late_logged,
                } => {
                    if let Some((_, sent)) = pending {
                        if !*late_logged && now.duration_since(*sent) >= Duration::from_secs(2) {
                            *late_logged = true;
                            self.log.emit(
                                "ping-late",
                                json!({"server": s.pid, "n": s.n, "ms": ms_since(*sent)}),
                            );
                        }
                    } else if now >= *next_ping {
                        let id = s.next_id;
                        *pending = Some((id, now));
                        *next_ping = now + ping_every;
                        send_ping = Some(id);
                    }
                    next = min_opt(next, *next_ping);
                    if !*late_logged {
                        if let Some((_, sent)) = pending {
                            next = min_opt(next, *sent + Duration::from_secs(2));
                        }
                    }
                }
                Phase::Doomed => {}
            }
            if let Some(id) = send_ping {
                s.next_id += 1;
                s.send(&json!({"jsonrpc": "2.0", "id": id, "method": "ping"}));
            }
        }
        next
    }

    /// Reaps the server if it died; true when it did.
    fn reap(&mut self) -> bool {
        let Some(s) = self.session.as_mut() else {
            return false;
        };
        let status = match s.child.try_wait() {
            Ok(Some(st)) => st,
            Ok(None) => return false,
            Err(_) => return false,
        };
        self.log.emit(
            "died",
            json!({
                "server": s.pid,
                "n": s.n,
                "status": describe(status),
                "version": s.version,
                "pings": s.pings,
                "session_ms": s.initialized_at.map(ms_since),
            }),
        );
        self.session = None;
        true
    }

    fn stop(&mut self, reason: &str) -> ! {
        self.log.emit("stop", json!({"reason": reason}));
        if let Some(mut s) = self.session.take() {
            // Closing stdin is how an MCP host says goodbye; then SIGKILL after a grace.
            s.stdin = None;
            let deadline = Instant::now() + Duration::from_millis(self.cli.stop_grace_ms);
            let status = loop {
                match s.child.try_wait() {
                    Ok(Some(st)) => break Some(st),
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    _ => break None,
                }
            };
            let status = status.or_else(|| {
                s.kill();
                s.child.wait().ok()
            });
            self.log.emit(
                "died",
                json!({
                    "server": s.pid,
                    "n": s.n,
                    "status": status.map(describe),
                    "version": s.version,
                    "pings": s.pings,
                    "session_ms": s.initialized_at.map(ms_since),
                    "stopped": true,
                }),
            );
        }
        self.log.emit("exit", json!({"code": 0}));
        std::process::exit(0)
    }
}

fn min_opt(a: Option<Instant>, b: Instant) -> Option<Instant> {
    Some(a.map_or(b, |a| a.min(b)))
}

fn main() {
    let cli = Cli::parse();
    let log = Events::open(Some(&cli.log));
    let sig_rd = signal_pipe(&[libc::SIGTERM, libc::SIGINT, libc::SIGCHLD]);
    log.emit(
        "start",
        json!({
            "argv": cli.command.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>(),
            "ping_ms": cli.ping_ms,
        }),
    );
    let mut watch_stdin = !cli.no_stdin;
    let mut host = Host {
        cli,
        log,
        spawns: 0,
        session: None,
        respawn_at: None,
        gave_up: false,
    };
    host.spawn();
    loop {
        if host.respawn_at.is_some_and(|t| Instant::now() >= t) && host.session.is_none() {
            host.respawn_at = None;
            host.spawn();
        }
        let next = host.on_time();
        let timeout = next.map_or(-1, |t| {
            let ms = t
                .saturating_duration_since(Instant::now())
                .as_micros()
                .div_ceil(1000);
            ms.min(i32::MAX as u128) as i32
        });
        let mut fds = vec![libc::pollfd {
            fd: sig_rd,
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
        let out_fd = host
            .session
            .as_ref()
            .and_then(|s| s.stdout.as_ref())
            .map(|o| o.as_raw_fd());
        if let Some(fd) = out_fd {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: poll on our own array.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as _, timeout) };
        let mut stop = None;
        let mut child_event = false;
        for sig in drain(sig_rd) {
            match sig {
                libc::SIGCHLD => child_event = true,
                s => stop = Some(signal_name(s)),
            }
        }
        if watch_stdin && fds[1].revents != 0 {
            let mut b = [0u8; 4096];
            // SAFETY: poll said fd 0 is readable; what the host is told is dropped.
            let n = unsafe { libc::read(0, b.as_mut_ptr().cast(), b.len()) };
            if n == 0
                || (n < 0
                    && !matches!(
                        std::io::Error::last_os_error().raw_os_error(),
                        Some(libc::EINTR) | Some(libc::EAGAIN)
                    ))
            {
                watch_stdin = false;
                stop.get_or_insert_with(|| "stdin-eof".into());
            }
        }
        if let Some(reason) = stop {
            host.stop(&reason);
        }
        if out_fd.is_some() && fds.last().is_some_and(|f| f.revents != 0) {
            let lines = host
                .session
                .as_mut()
                .and_then(Session::read_lines)
                .unwrap_or_default();
            for msg in lines {
                host.on_message(msg);
            }
        }
        if child_event && host.reap() {
            // At once, as a host that restarts its server whenever it dies.
            if host.cli.respawn_ms == 0 {
                host.spawn();
            } else {
                host.respawn_at = Some(Instant::now() + Duration::from_millis(host.cli.respawn_ms));
            }
        }
    }
}
