//! The fault catalogue: `--mode NAME[=ARG]`, parsed into one flat struct.

use std::path::PathBuf;

/// (name, argument, one help line). The help text is generated from this table, so the
/// catalogue and `--help` cannot drift apart.
pub const CATALOGUE: &[(&str, &str, &str)] = &[
    (
        "ignore-sigterm",
        "",
        "SIGTERM disposition SIG_IGN (SigIgn in /proc)",
    ),
    (
        "catch-sigterm",
        "",
        "catch SIGTERM and carry on (logged; SigCgt)",
    ),
    (
        "slow-shutdown",
        "MS",
        "on SIGTERM stay locked MS ms, then clean up, exit",
    ),
    (
        "leak-pidfile",
        "",
        "on SIGTERM exit 0 leaving pid file and marker",
    ),
    (
        "exit-code-on-term",
        "N",
        "on SIGTERM clean up, then exit with status N",
    ),
    (
        "fork-children",
        "N",
        "fork N idle children inheriting the lock fds",
    ),
    (
        "children-close-lock",
        "",
        "fork-children: children close the lock fds",
    ),
    (
        "child-holds-flock",
        "",
        "a child keeps the pid lock; the parent exits",
    ),
    (
        "daemonize",
        "",
        "double fork + setsid; the grandchild serves",
    ),
    (
        "respawn",
        "[MS]",
        "supervisor restarts its worker MS ms after death",
    ),
    (
        "respawn-on-term",
        "",
        "on SIGTERM spawn a replacement server, exit 0",
    ),
    (
        "lock-before-payload",
        "MS",
        "hold the pid lock, payload empty, for MS ms",
    ),
    (
        "crash-on-start",
        "",
        "exit 1 after the marker, before the pid file",
    ),
    ("stopped", "", "SIGSTOP itself once ready (state T)"),
    (
        "zombie",
        "",
        "a launcher forks the server and never reaps it",
    ),
    ("secondary", "", "presence marker only, no pid file, warns"),
    (
        "corrupt-pidfile",
        "KIND",
        "hold the lock over a bad payload (KINDs below)",
    ),
    (
        "pidfile-symlink",
        "",
        "pid path is a symlink to the file it locks",
    ),
    (
        "pidfile-fifo",
        "",
        "a FIFO at the pid path; presence marker only",
    ),
    (
        "unsafe-runtime-dir",
        "KIND",
        "use an unsafe dir: 0777|wrong-owner|link",
    ),
    (
        "db-writer",
        "",
        "hold BEGIN IMMEDIATE on the store; no pid file",
    ),
    (
        "old-generation",
        "PATH",
        "mmap PATH, delete it: maps show it (deleted)",
    ),
    (
        "maps",
        "PATH",
        "mmap PATH and keep it (belongs to that install)",
    ),
    (
        "hang-initialize",
        "",
        "read MCP initialize, never answer (EOF still exits)",
    ),
    (
        "crash-on-initialize",
        "",
        "on MCP initialize: traceback, cleanup, exit 1",
    ),
    (
        "slow-start",
        "MS",
        "sleep MS before anything (Python's import time)",
    ),
    (
        "wiki-lock",
        "[ROOT]",
        "hold wiki-commit-<digest16>.lock (+ legacy) for life",
    ),
    (
        "orphan",
        "",
        "double fork: its parent exits once it registered",
    ),
    (
        "many",
        "N",
        "a launcher forks N servers (same store: 1 primary)",
    ),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corrupt {
    Empty,
    Garbage,
    Zero,
    Negative,
    One,
    SelfPid,
    Oversize,
    NonUtf8,
    NoStamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnsafeDir {
    World,
    WrongOwner,
    Link,
}

#[derive(Clone, Debug, Default)]
pub struct Modes {
    pub raw: Vec<String>,
    pub ignore_sigterm: bool,
    pub catch_sigterm: bool,
    pub slow_shutdown: Option<u64>,
    pub leak_pidfile: bool,
    pub exit_code_on_term: Option<i32>,
    pub fork_children: u32,
    pub children_close_lock: bool,
    pub child_holds_flock: bool,
    pub daemonize: bool,
    pub respawn: Option<u64>,
    pub respawn_on_term: bool,
    pub lock_before_payload: Option<u64>,
    pub crash_on_start: bool,
    pub stopped: bool,
    pub zombie: bool,
    pub secondary: bool,
    pub corrupt: Option<Corrupt>,
    pub pidfile_symlink: bool,
    pub pidfile_fifo: bool,
    pub unsafe_dir: Option<UnsafeDir>,
    pub db_writer: bool,
    pub old_generation: Vec<PathBuf>,
    pub maps: Vec<PathBuf>,
    pub hang_initialize: bool,
    pub crash_on_initialize: bool,
    pub slow_start: Option<u64>,
    /// `wiki-lock[=ROOT]`: Some(None) is the default root, `~/.memtomem-wiki`.
    pub wiki_lock: Option<Option<PathBuf>>,
    pub orphan: bool,
    pub many: Option<u32>,
}

/// Validates one `--mode` value (used as clap's value parser).
pub fn check(s: &str) -> Result<String, String> {
    let mut m = Modes::default();
    m.apply(s)?;
    Ok(s.to_string())
}

impl Modes {
    pub fn parse(raw: &[String]) -> Result<Modes, String> {
        let mut m = Modes {
            raw: raw.to_vec(),
            ..Modes::default()
        };
        for s in raw {
            m.apply(s)?;
        }
        Ok(m)
    }

    fn apply(&mut self, s: &str) -> Result<(), String> {
        let (name, arg) = match s.split_once('=') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        let num = |what: &str| -> Result<u64, String> {
            arg.ok_or(format!("{name} needs ={what}"))?
                .parse::<u64>()
                .map_err(|e| format!("{name}: {e}"))
        };
        let none = || -> Result<(), String> {
            match arg {
                None => Ok(()),
                Some(_) => Err(format!("{name} takes no argument")),
            }
        };
        match name {
            "ignore-sigterm" => {
                none()?;
                self.ignore_sigterm = true
            }
            "catch-sigterm" => {
                none()?;
                self.catch_sigterm = true
            }
            "slow-shutdown" => self.slow_shutdown = Some(num("MS")?),
            "leak-pidfile" => {
                none()?;
                self.leak_pidfile = true
            }
            "exit-code-on-term" => {
                let n: i32 = arg
                    .ok_or("exit-code-on-term needs =N")?
                    .parse()
                    .map_err(|e| format!("{name}: {e}"))?;
                if !(0..=255).contains(&n) {
                    return Err("exit-code-on-term: N must be 0..=255".into());
                }
                self.exit_code_on_term = Some(n)
            }
            "fork-children" => self.fork_children = num("N")? as u32,
            "children-close-lock" => {
                none()?;
                self.children_close_lock = true
            }
            "child-holds-flock" => {
                none()?;
                self.child_holds_flock = true
            }
            "daemonize" => {
                none()?;
                self.daemonize = true
            }
            "respawn" => self.respawn = Some(if arg.is_some() { num("MS")? } else { 0 }),
            "respawn-on-term" => {
                none()?;
                self.respawn_on_term = true
            }
            "lock-before-payload" => self.lock_before_payload = Some(num("MS")?),
            "crash-on-start" => {
                none()?;
                self.crash_on_start = true
            }
            "stopped" => {
                none()?;
                self.stopped = true
            }
            "zombie" => {
                none()?;
                self.zombie = true
            }
            "secondary" => {
                none()?;
                self.secondary = true
            }
            "corrupt-pidfile" => {
                self.corrupt = Some(match arg.unwrap_or("") {
                    "empty" => Corrupt::Empty,
                    "garbage" => Corrupt::Garbage,
                    "zero" => Corrupt::Zero,
                    "negative" => Corrupt::Negative,
                    "one" => Corrupt::One,
                    "self" => Corrupt::SelfPid,
                    "oversize" => Corrupt::Oversize,
                    "non-utf8" => Corrupt::NonUtf8,
                    "no-stamp" => Corrupt::NoStamp,
                    k => return Err(format!("corrupt-pidfile: unknown KIND {k:?}")),
                })
            }
            "pidfile-symlink" => {
                none()?;
                self.pidfile_symlink = true
            }
            "pidfile-fifo" => {
                none()?;
                self.pidfile_fifo = true
            }
            "unsafe-runtime-dir" => {
                self.unsafe_dir = Some(match arg.unwrap_or("") {
                    "0777" => UnsafeDir::World,
                    "wrong-owner" => UnsafeDir::WrongOwner,
                    "link" => UnsafeDir::Link,
                    k => return Err(format!("unsafe-runtime-dir: unknown KIND {k:?}")),
                })
            }
            "db-writer" => {
                none()?;
                self.db_writer = true
            }
            "old-generation" | "maps" => {
                let p = PathBuf::from(
                    arg.filter(|a| !a.is_empty())
                        .ok_or(format!("{name} needs =PATH"))?,
                );
                if name == "maps" {
                    self.maps.push(p)
                } else {
                    self.old_generation.push(p)
                }
            }
            "hang-initialize" => {
                none()?;
                self.hang_initialize = true
            }
            "crash-on-initialize" => {
                none()?;
                self.crash_on_initialize = true
            }
            "slow-start" => self.slow_start = Some(num("MS")?),
            "wiki-lock" => {
                self.wiki_lock = Some(match arg {
                    None => None,
                    Some("") => return Err("wiki-lock= needs a ROOT (or no =)".into()),
                    Some(a) => Some(PathBuf::from(a)),
                })
            }
            "orphan" => {
                none()?;
                self.orphan = true
            }
            "many" => {
                let n = num("N")?;
                if !(1..=1000).contains(&n) {
                    return Err("many: N must be 1..=1000".into());
                }
                self.many = Some(n as u32)
            }
            _ => return Err(format!("unknown mode {name:?} (see --help)")),
        }
        Ok(())
    }
}

pub fn help_text() -> String {
    let mut s = String::from("Modes (--mode NAME[=ARG], repeatable, combinable):\n");
    for (n, a, h) in CATALOGUE {
        let head = if a.is_empty() {
            n.to_string()
        } else if a.starts_with('[') {
            format!("{n}{}", a.replace('[', "[="))
        } else {
            format!("{n}={a}")
        };
        s.push_str(&format!("  {head:<24} {h}\n"));
    }
    s.push_str("corrupt-pidfile KINDs: empty garbage zero negative one\n");
    s.push_str("  self (launcher's pid) oversize non-utf8 no-stamp\n");
    s
}
