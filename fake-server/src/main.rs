//! `fake-server`: behaves like `memtomem-server` 0.6.12 (stdio) by default, and
//! misbehaves on purpose with `--mode`. See README.md and the contract, §1–2.
//!
//! One module per concern: [`cli`] (the command line), [`shape`] (`--argv-shape`),
//! [`faults`] (the typed fault catalogue and its plans), [`topology`] (the process trees:
//! many, orphan, daemon, zombie, supervisor, forked children, lock heir), [`registration`]
//! (runtime dir, presence marker, pid files, web and legacy files, wiki locks, SQLite,
//! mappings; on top of [`locks`] and [`paths`]), [`lifecycle`] (startup order, the ready
//! file, the main loop, SIGTERM, stdin EOF, cleanup and exit), [`signals`] (the
//! self-pipe), [`mcp`] (stdio MCP) and [`util`] (stamps, event log).
//!
//! This is the memtomem contract as an independent witness: it is written from the
//! contract's observations, not from mm-upgrade's code, and shares none of it, so a
//! misreading in one does not hide in the other.

mod cli;
mod contract;
mod faults;
mod lifecycle;
mod locks;
mod mcp;
mod paths;
mod registration;
mod shape;
mod signals;
mod topology;
mod util;

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::RawFd;
use std::path::PathBuf;

use serde_json::json;

use cli::Cli;
use faults::{Faults, Topology};
use locks::Presence;
use util::Events;

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

/// The faults' plans, folded once at startup.
struct Plans {
    register: faults::Register,
    after: faults::AfterRegister,
    sigterm: faults::OnSigterm,
}

/// Who this process is as a server.
struct Identity {
    /// The start stamp (the pid file's second line).
    stamp: String,
    procid: String,
    /// The pid that created the files: a forked heir must not unlink them (the
    /// registry's pid guard in the real server).
    owner_pid: u32,
    /// `respawn`/`respawn-on-term`: how many replacements before this one.
    generation: u32,
}

/// Where it meets its peers.
struct Place {
    store: OsString,
    digest: Option<String>,
    runtime: Option<PathBuf>,
}

/// Its inputs: the signal self-pipe and stdin.
struct Io {
    sig_rd: RawFd,
    watch_stdin: bool,
    /// SIGINT cancelled the event loop: input is read, never answered.
    sigint_seen: bool,
}

/// What it holds, and unlinks on a clean exit (presence marker first, then web.json,
/// then the pid file while still holding its lock).
#[derive(Default)]
struct Held {
    presence: Option<Presence>,
    /// The pid path we own the lock on, and its descriptor.
    pid_path: Option<PathBuf>,
    pid_fd: Option<File>,
    extra_unlink: Vec<PathBuf>,
    legacy_fd: Option<File>,
    /// A legacy pid file, named in the ready file but never unlinked.
    legacy_path: Option<PathBuf>,
    web_json: Option<PathBuf>,
    db: Option<rusqlite::Connection>,
    /// `wiki-lock`: the legacy and canonical commit locks, held for life.
    wiki: Vec<(PathBuf, File)>,
}

/// Its place in a process tree.
#[derive(Default)]
struct Family {
    /// Processes of this invocation meant to keep running (launcher, supervisor), listed
    /// in the ready file before the server itself.
    elders: Vec<u32>,
    /// What it forked (`fork-children`), listed after it.
    children: Vec<u32>,
    /// `many`: the ready record goes to the launcher through this pipe.
    ready_pipe: Option<RawFd>,
    /// `orphan`: tell the parent we registered (it then exits), and its pid.
    orphan_parent: Option<(RawFd, i32)>,
}

struct Server {
    cli: Cli,
    /// The arguments as parsed (a replacement starts with them).
    args: Vec<String>,
    faults: Faults,
    plan: Plans,
    ev: Events,
    id: Identity,
    place: Place,
    io: Io,
    held: Held,
    family: Family,
    mcp: mcp::Session,
}

fn main() {
    // Captured before anything else, like the real server's very first statement.
    let mut stamp = util::iso_now();
    let (cli, args): (Cli, Vec<String>) =
        shape::parse(|c: &Cli| c.argv_shape.map(|s| (s, c.argv_python.clone())));
    let faults = match Faults::parse(&cli.modes) {
        Ok(f) => f,
        Err(e) => die_early(&e),
    };
    let ev = Events::open(cli.events.as_deref());
    if let Some(d) = faults.slow_start() {
        stamp = mcp::slow_start(d, &ev);
    }
    let generation: u32 = std::env::var("FAKE_SERVER_GENERATION")
        .ok()
        .and_then(|g| g.parse().ok())
        .unwrap_or(0);
    ev.emit(
        "start",
        json!({
            "argv": std::env::args().collect::<Vec<_>>(),
            "mode": faults.raw,
            "started": stamp,
            "generation": generation,
            "shape": cli.argv_shape.map(|s| format!("{s:?}")),
        }),
    );
    // The digest is computed before any fork so a daemon sees the same relative paths.
    let store = cli.store.clone().unwrap_or_else(paths::default_store);
    let digest = paths::store_digest(&store);
    let mut s = Server {
        io: Io {
            sig_rd: -1,
            watch_stdin: !cli.no_stdin && !cli.web,
            sigint_seen: false,
        },
        mcp: mcp::Session::new(&cli.server_version, faults.mcp()),
        plan: Plans {
            register: faults.register(),
            after: faults.after_register(),
            sigterm: faults.sigterm(),
        },
        id: Identity {
            stamp,
            procid: util::hex8(),
            owner_pid: pid(),
            generation,
        },
        place: Place {
            store,
            digest,
            runtime: None,
        },
        held: Held::default(),
        family: Family::default(),
        cli,
        args,
        faults,
        ev,
    };
    for t in s.faults.topologies() {
        match t {
            Topology::Many(n) => s.many_launcher(n),
            Topology::Orphan => s.orphan_fork(),
            Topology::Daemonize => s.daemonize(),
            Topology::Zombie => s.zombie_launcher(),
            Topology::Respawn(delay) => s.supervise(delay),
        }
    }
    s.run();
}
