//! The fault catalogue. Each `--mode NAME[=ARG]` is one typed [`Fault`]; what it does
//! is written once, in the arms of `Fault`'s hooks, one hook per moment of a server's
//! life where faults act:
//!
//! - [`Fault::topology`]: the process tree built before the server starts;
//! - [`Fault::on_register`]: how it registers (runtime dir, pid file, payload, locks);
//! - [`Fault::after_register`]: what it does once registered, before it is ready;
//! - [`Fault::on_sigterm`]: what SIGTERM does;
//! - [`Fault::on_mcp`]: how it answers MCP.
//!
//! [`Faults`] folds the list into one plan per moment; the server consults the plans,
//! never the list.

use std::path::PathBuf;
use std::time::Duration;

/// (name, argument, one help line). The help text is generated from this table, so the
/// catalogue and `--help` cannot drift apart.
#[rustfmt::skip]
pub const CATALOGUE: &[(&str, &str, &str)] = &[
    ("ignore-sigterm", "", "SIGTERM disposition SIG_IGN (SigIgn in /proc)"),
    ("catch-sigterm", "", "catch SIGTERM and carry on (logged; SigCgt)"),
    ("slow-shutdown", "MS", "on SIGTERM stay locked MS ms, then clean up, exit"),
    ("leak-pidfile", "", "on SIGTERM exit 0 leaving pid file and marker"),
    ("exit-code-on-term", "N", "on SIGTERM clean up, then exit with status N"),
    ("fork-children", "N", "fork N idle children inheriting the lock fds"),
    ("children-close-lock", "", "fork-children: children close the lock fds"),
    ("child-holds-flock", "", "a child keeps the pid lock; the parent exits"),
    ("daemonize", "", "double fork + setsid; the grandchild serves"),
    ("respawn", "[MS]", "supervisor restarts its worker MS ms after death"),
    ("respawn-on-term", "", "on SIGTERM spawn a replacement server, exit 0"),
    ("lock-before-payload", "MS", "hold the pid lock, payload empty, for MS ms"),
    ("crash-on-start", "", "exit 1 after the marker, before the pid file"),
    ("stopped", "", "SIGSTOP itself once ready (state T)"),
    ("zombie", "", "a launcher forks the server and never reaps it"),
    ("secondary", "", "presence marker only, no pid file, warns"),
    ("corrupt-pidfile", "KIND", "hold the lock over a bad payload (KINDs below)"),
    ("pidfile-symlink", "", "pid path is a symlink to the file it locks"),
    ("pidfile-fifo", "", "a FIFO at the pid path; presence marker only"),
    ("unsafe-runtime-dir", "KIND", "use an unsafe dir: 0777|wrong-owner|link"),
    ("db-writer", "", "hold BEGIN IMMEDIATE on the store; no pid file"),
    ("old-generation", "PATH", "mmap PATH, delete it: maps show it (deleted)"),
    ("maps", "PATH", "mmap PATH and keep it (belongs to that install)"),
    ("hang-initialize", "", "read MCP initialize, never answer (EOF still exits)"),
    ("crash-on-initialize", "", "on MCP initialize: traceback, cleanup, exit 1"),
    ("slow-start", "MS", "sleep MS before anything (Python's import time)"),
    ("wiki-lock", "[ROOT]", "hold wiki-commit-<digest16>.lock (+ legacy) for life"),
    ("orphan", "", "double fork: its parent exits once it registered"),
    ("many", "N", "a launcher forks N servers (same store: 1 primary)"),
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

/// One fault, with its argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    IgnoreSigterm,
    CatchSigterm,
    SlowShutdown(Duration),
    LeakPidfile,
    ExitCodeOnTerm(i32),
    ForkChildren(u32),
    ChildrenCloseLock,
    ChildHoldsFlock,
    Daemonize,
    Respawn(Duration),
    RespawnOnTerm,
    LockBeforePayload(Duration),
    CrashOnStart,
    Stopped,
    Zombie,
    Secondary,
    CorruptPidfile(Corrupt),
    PidfileSymlink,
    PidfileFifo,
    UnsafeRuntimeDir(UnsafeDir),
    DbWriter,
    /// mmap the file and delete it.
    OldGeneration(PathBuf),
    /// mmap the file and keep it.
    Maps(PathBuf),
    HangInitialize,
    CrashOnInitialize,
    SlowStart(Duration),
    /// The wiki root; None: `~/.memtomem-wiki`.
    WikiLock(Option<PathBuf>),
    Orphan,
    Many(u32),
}

/// Process trees built at startup, in this order (see `topology.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Topology {
    Many(u32),
    Orphan,
    Daemonize,
    Zombie,
    Respawn(Duration),
}

/// What SIGTERM does.
#[derive(Clone, Debug)]
pub struct OnSigterm {
    /// Ignored: `Some("ignored")` by a SIG_IGN disposition or a catching handler.
    pub ignored: bool,
    /// Stay locked this long first.
    pub delay: Option<Duration>,
    /// Unlink the marker and pid file on the way out.
    pub cleanup: bool,
    pub code: i32,
    /// Spawn a replacement first.
    pub respawn: bool,
}

/// How the server registers.
#[derive(Clone, Debug, Default)]
pub struct Register {
    pub unsafe_dir: Option<UnsafeDir>,
    /// Exit 1 after the marker, before the pid file.
    pub crash_on_start: bool,
    /// A marker, but no pid file (the lost-lock WARNING).
    pub secondary: bool,
    /// Hold the store's SQLite write lock (no pid file).
    pub db_writer: bool,
    pub fifo: bool,
    pub symlink: bool,
    pub corrupt: Option<Corrupt>,
    /// Locked over an empty file this long before the payload.
    pub lock_gap: Option<Duration>,
    pub wiki: Option<Option<PathBuf>>,
    /// Files to map, and whether to delete each afterwards.
    pub maps: Vec<(PathBuf, bool)>,
}

impl Register {
    /// The presence marker is taken unless the process is only a SQLite writer.
    pub fn presence(&self) -> bool {
        !self.db_writer || self.secondary
    }
}

/// What it does once registered, before it says it is ready.
#[derive(Clone, Debug, Default)]
pub struct AfterRegister {
    pub fork_children: u32,
    pub children_close_lock: bool,
    pub child_holds_flock: bool,
    /// SIGTERM's disposition becomes SIG_IGN.
    pub ignore_disposition: bool,
    /// SIGSTOP itself once ready.
    pub stopped: bool,
}

/// How it answers MCP.
#[derive(Clone, Copy, Debug, Default)]
pub struct OnMcp {
    pub hang_initialize: bool,
    pub crash_on_initialize: bool,
}

impl Fault {
    pub fn topology(&self) -> Option<Topology> {
        Some(match self {
            Fault::Many(n) => Topology::Many(*n),
            Fault::Orphan => Topology::Orphan,
            Fault::Daemonize => Topology::Daemonize,
            Fault::Zombie => Topology::Zombie,
            Fault::Respawn(d) => Topology::Respawn(*d),
            _ => return None,
        })
    }

    pub fn on_register(&self, r: &mut Register) {
        match self {
            Fault::UnsafeRuntimeDir(k) => r.unsafe_dir = Some(*k),
            Fault::CrashOnStart => r.crash_on_start = true,
            Fault::Secondary => r.secondary = true,
            Fault::DbWriter => r.db_writer = true,
            Fault::PidfileFifo => r.fifo = true,
            Fault::PidfileSymlink => r.symlink = true,
            Fault::CorruptPidfile(c) => r.corrupt = Some(*c),
            Fault::LockBeforePayload(d) => r.lock_gap = Some(*d),
            Fault::WikiLock(root) => r.wiki = Some(root.clone()),
            Fault::Maps(p) => r.maps.push((p.clone(), false)),
            Fault::OldGeneration(p) => r.maps.push((p.clone(), true)),
            _ => {}
        }
    }

    pub fn after_register(&self, a: &mut AfterRegister) {
        match self {
            Fault::ForkChildren(n) => a.fork_children = *n,
            Fault::ChildrenCloseLock => a.children_close_lock = true,
            Fault::ChildHoldsFlock => a.child_holds_flock = true,
            Fault::IgnoreSigterm => a.ignore_disposition = true,
            Fault::Stopped => a.stopped = true,
            _ => {}
        }
    }

    pub fn on_sigterm(&self, t: &mut OnSigterm) {
        match self {
            Fault::IgnoreSigterm | Fault::CatchSigterm => t.ignored = true,
            Fault::SlowShutdown(d) => t.delay = Some(*d),
            Fault::LeakPidfile => t.cleanup = false,
            Fault::ExitCodeOnTerm(n) => t.code = *n,
            Fault::RespawnOnTerm => t.respawn = true,
            _ => {}
        }
    }

    pub fn on_mcp(&self, m: &mut OnMcp) {
        match self {
            Fault::HangInitialize => m.hang_initialize = true,
            Fault::CrashOnInitialize => m.crash_on_initialize = true,
            _ => {}
        }
    }
}

impl std::str::FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Fault, String> {
        let (name, arg) = match s.split_once('=') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        let num = |what: &str| -> Result<u64, String> {
            arg.ok_or(format!("{name} needs ={what}"))?
                .parse::<u64>()
                .map_err(|e| format!("{name}: {e}"))
        };
        let ms = || num("MS").map(Duration::from_millis);
        let none = |f: Fault| match arg {
            None => Ok(f),
            Some(_) => Err(format!("{name} takes no argument")),
        };
        let path = || {
            arg.filter(|a| !a.is_empty())
                .map(PathBuf::from)
                .ok_or(format!("{name} needs =PATH"))
        };
        match name {
            "ignore-sigterm" => none(Fault::IgnoreSigterm),
            "catch-sigterm" => none(Fault::CatchSigterm),
            "slow-shutdown" => Ok(Fault::SlowShutdown(ms()?)),
            "leak-pidfile" => none(Fault::LeakPidfile),
            "exit-code-on-term" => {
                let n: i32 = arg
                    .ok_or("exit-code-on-term needs =N")?
                    .parse()
                    .map_err(|e| format!("{name}: {e}"))?;
                if !(0..=255).contains(&n) {
                    return Err("exit-code-on-term: N must be 0..=255".into());
                }
                Ok(Fault::ExitCodeOnTerm(n))
            }
            "fork-children" => Ok(Fault::ForkChildren(num("N")? as u32)),
            "children-close-lock" => none(Fault::ChildrenCloseLock),
            "child-holds-flock" => none(Fault::ChildHoldsFlock),
            "daemonize" => none(Fault::Daemonize),
            "respawn" => Ok(Fault::Respawn(match arg {
                Some(_) => ms()?,
                None => Duration::ZERO,
            })),
            "respawn-on-term" => none(Fault::RespawnOnTerm),
            "lock-before-payload" => Ok(Fault::LockBeforePayload(ms()?)),
            "crash-on-start" => none(Fault::CrashOnStart),
            "stopped" => none(Fault::Stopped),
            "zombie" => none(Fault::Zombie),
            "secondary" => none(Fault::Secondary),
            "corrupt-pidfile" => Ok(Fault::CorruptPidfile(match arg.unwrap_or("") {
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
            })),
            "pidfile-symlink" => none(Fault::PidfileSymlink),
            "pidfile-fifo" => none(Fault::PidfileFifo),
            "unsafe-runtime-dir" => Ok(Fault::UnsafeRuntimeDir(match arg.unwrap_or("") {
                "0777" => UnsafeDir::World,
                "wrong-owner" => UnsafeDir::WrongOwner,
                "link" => UnsafeDir::Link,
                k => return Err(format!("unsafe-runtime-dir: unknown KIND {k:?}")),
            })),
            "db-writer" => none(Fault::DbWriter),
            "old-generation" => Ok(Fault::OldGeneration(path()?)),
            "maps" => Ok(Fault::Maps(path()?)),
            "hang-initialize" => none(Fault::HangInitialize),
            "crash-on-initialize" => none(Fault::CrashOnInitialize),
            "slow-start" => Ok(Fault::SlowStart(ms()?)),
            "wiki-lock" => Ok(Fault::WikiLock(match arg {
                None => None,
                Some("") => return Err("wiki-lock= needs a ROOT (or no =)".into()),
                Some(a) => Some(PathBuf::from(a)),
            })),
            "orphan" => none(Fault::Orphan),
            "many" => {
                let n = num("N")?;
                if !(1..=1000).contains(&n) {
                    return Err("many: N must be 1..=1000".into());
                }
                Ok(Fault::Many(n as u32))
            }
            _ => Err(format!("unknown mode {name:?} (see --help)")),
        }
    }
}

/// Validates one `--mode` value (clap's value parser).
pub fn check(s: &str) -> Result<String, String> {
    s.parse::<Fault>().map(|_| s.to_string())
}

/// The faults of one invocation, as given (`raw`, for the logs) and typed.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    pub raw: Vec<String>,
    list: Vec<Fault>,
}

impl Faults {
    pub fn parse(raw: &[String]) -> Result<Faults, String> {
        Ok(Faults {
            raw: raw.to_vec(),
            list: raw.iter().map(|s| s.parse()).collect::<Result<_, _>>()?,
        })
    }

    /// The topologies to build, outermost first.
    pub fn topologies(&self) -> Vec<Topology> {
        let mut t: Vec<Topology> = self.list.iter().filter_map(Fault::topology).collect();
        t.sort();
        t.dedup();
        t
    }

    pub fn register(&self) -> Register {
        let mut r = Register::default();
        self.list.iter().for_each(|f| f.on_register(&mut r));
        r
    }

    pub fn after_register(&self) -> AfterRegister {
        let mut a = AfterRegister::default();
        self.list.iter().for_each(|f| f.after_register(&mut a));
        a
    }

    pub fn sigterm(&self) -> OnSigterm {
        let mut t = OnSigterm {
            ignored: false,
            delay: None,
            cleanup: true,
            code: 0,
            respawn: false,
        };
        self.list.iter().for_each(|f| f.on_sigterm(&mut t));
        t
    }

    pub fn mcp(&self) -> OnMcp {
        let mut m = OnMcp::default();
        self.list.iter().for_each(|f| f.on_mcp(&mut m));
        m
    }

    /// `slow-start=MS`: Python's import time, before anything else.
    pub fn slow_start(&self) -> Option<Duration> {
        self.list.iter().find_map(|f| match f {
            Fault::SlowStart(d) => Some(*d),
            _ => None,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_catalogue_entry_parses_and_nothing_else_does() {
        for (name, arg, _) in CATALOGUE {
            let sample = match *arg {
                "" | "[MS]" | "[ROOT]" => name.to_string(),
                "MS" | "N" => format!("{name}=3"),
                "KIND" if *name == "corrupt-pidfile" => format!("{name}=empty"),
                "KIND" => format!("{name}=0777"),
                "PATH" => format!("{name}=/x"),
                a => panic!("untested argument kind {a}"),
            };
            assert!(sample.parse::<Fault>().is_ok(), "{sample}");
        }
        for bad in [
            "nope",
            "ignore-sigterm=1",
            "slow-shutdown",
            "many=0",
            "maps=",
            "wiki-lock=",
        ] {
            assert!(bad.parse::<Fault>().is_err(), "{bad}");
        }
    }

    #[test]
    fn plans_fold_every_fault_that_changes_them() {
        let f = Faults::parse(&[
            "catch-sigterm".into(),
            "exit-code-on-term=3".into(),
            "respawn=5".into(),
            "daemonize".into(),
            "maps=/a".into(),
            "old-generation=/b".into(),
        ])
        .unwrap();
        let t = f.sigterm();
        assert!(t.ignored && t.cleanup && t.code == 3 && !t.respawn);
        assert_eq!(
            f.topologies(),
            [
                Topology::Daemonize,
                Topology::Respawn(Duration::from_millis(5))
            ]
        );
        assert_eq!(
            f.register().maps,
            [("/a".into(), false), ("/b".into(), true)]
        );
        assert!(!f.after_register().ignore_disposition);
    }
}
