//! The host: starts the server, initializes, pings, logs every session, respawns.

use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::session::{Phase, Session};
use crate::signals::sig_name;
use crate::util::{self, Events};
use crate::Cli;

fn set_nonblocking(fd: std::os::fd::RawFd) {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

fn describe(st: ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exited({c})"),
        (_, Some(s)) => format!("killed({})", sig_name(s)),
        _ => format!("status({})", st.into_raw()),
    }
}

fn ms_since(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

pub struct Host {
    pub cli: Cli,
    pub log: Events,
    pub spawns: u32,
    pub session: Option<Session>,
    pub respawn_at: Option<Instant>,
    pub gave_up: bool,
}

impl Host {
    pub fn spawn(&mut self) {
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

    pub fn on_message(&mut self, msg: Value) {
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
    pub fn on_time(&mut self) -> Option<Instant> {
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
    pub fn reap(&mut self) -> bool {
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

    pub fn stop(&mut self, reason: &str) -> ! {
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
