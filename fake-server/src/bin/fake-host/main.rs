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

mod host;
mod session;
#[allow(dead_code)]
#[path = "../../signals.rs"]
mod signals;
#[allow(dead_code)]
#[path = "../../util.rs"]
mod util;

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;

use host::Host;
use session::Session;
use signals::{catch, drain, make_sig_pipe, poll_ready, sig_name};
use util::Events;

/// What signals.rs calls when its self-pipe cannot be made.
pub(crate) fn die_early(msg: &str) -> ! {
    eprintln!("fake-host: {msg}");
    std::process::exit(1)
}

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

fn main() {
    let cli = Cli::parse();
    let log = Events::open(Some(&cli.log));
    let sig_rd = make_sig_pipe();
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGCHLD] {
        catch(sig);
    }
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
        let out_fd = host
            .session
            .as_ref()
            .and_then(|s| s.stdout.as_ref())
            .map(|o| o.as_raw_fd());
        let fds = poll_ready(sig_rd, watch_stdin, out_fd.as_slice(), timeout);
        let mut stop = None;
        let mut child_event = false;
        for sig in drain(sig_rd) {
            match sig {
                libc::SIGCHLD => child_event = true,
                s => stop = Some(sig_name(s)),
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
