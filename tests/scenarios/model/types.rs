//! The values scenario files spell as short strings, parsed once at load time into types:
//! a wrong one fails the scenario there, with its file and key (`expect.servers.main.outcome:
//! "killed(SIGFOO)": unknown signal ...`), instead of quietly testing nothing at run time.

use std::fmt;

use serde::Deserialize;

/// Implements `Deserialize` through `TryFrom<String>` with the type's own parser.
macro_rules! from_string {
    ($t:ty) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A signal by name (`SIGTERM`, `SIG40`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signal(pub i32);

impl std::str::FromStr for Signal {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        testkit::signal::number(s)
            .map(Signal)
            .ok_or_else(|| format!("{s:?}: not a signal name (SIGTERM, SIGKILL, SIGINT, ...)"))
    }
}
from_string!(Signal);

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&testkit::signal::name(self.0))
    }
}

/// How a process ended, or that it did not: `exited(N)`, `killed(SIGNAME)`, `alive`;
/// `dead` (any way) only as an expectation, or when nothing better is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    Killed(Signal),
    Alive,
    Dead,
}

impl Outcome {
    /// From a wait status.
    pub fn of_status(status: i32) -> Outcome {
        if libc::WIFEXITED(status) {
            Outcome::Exited(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            Outcome::Killed(Signal(libc::WTERMSIG(status)))
        } else {
            Outcome::Dead
        }
    }

    /// Whether this (what happened) is what `want` expects: `dead` is any death.
    pub fn satisfies(&self, want: &Outcome) -> bool {
        match want {
            Outcome::Dead => *self != Outcome::Alive,
            w => self == w,
        }
    }
}

impl std::str::FromStr for Outcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let usage = "use exited(N), killed(SIGNAME), alive or dead";
        let arg = |prefix: &str| s.strip_prefix(prefix).and_then(|r| r.strip_suffix(')'));
        match s {
            "alive" => Ok(Outcome::Alive),
            "dead" => Ok(Outcome::Dead),
            _ => {
                if let Some(n) = arg("exited(") {
                    let n: i32 = n
                        .parse()
                        .map_err(|_| format!("{s:?}: N is not a number ({usage})"))?;
                    if !(0..=255).contains(&n) {
                        return Err(format!("{s:?}: an exit status is 0..=255"));
                    }
                    return Ok(Outcome::Exited(n));
                }
                if let Some(sig) = arg("killed(") {
                    return Ok(Outcome::Killed(sig.parse()?));
                }
                Err(format!("{s:?} is not an outcome ({usage})"))
            }
        }
    }
}
from_string!(Outcome);

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Outcome::Exited(n) => write!(f, "exited({n})"),
            Outcome::Killed(s) => write!(f, "killed({s})"),
            Outcome::Alive => f.write_str("alive"),
            Outcome::Dead => f.write_str("dead"),
        }
    }
}

/// `own` (its own process group) or `shared-with:<name>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Group {
    #[default]
    Own,
    SharedWith(String),
}

impl std::str::FromStr for Group {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.strip_prefix("shared-with:") {
            _ if s == "own" => Ok(Group::Own),
            Some(n) if !n.is_empty() => Ok(Group::SharedWith(n.to_string())),
            _ => Err(format!("{s:?}: use \"own\" or \"shared-with:<name>\"")),
        }
    }
}
from_string!(Group);

/// When a server counts as started: `file` (its ready file), `exit` (it exited, e.g.
/// crash-on-start), `event:<event>[:<detail>]` (that line in its event log), `none`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Readiness {
    #[default]
    File,
    Exit,
    Event {
        event: String,
        detail: Option<String>,
    },
    None,
}

impl std::str::FromStr for Readiness {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "file" => Ok(Readiness::File),
            "exit" => Ok(Readiness::Exit),
            "none" => Ok(Readiness::None),
            _ => match s.strip_prefix("event:").map(|r| r.split_once(':')) {
                Some(Some((e, d))) if !e.is_empty() => Ok(Readiness::Event {
                    event: e.into(),
                    detail: Some(d.into()),
                }),
                Some(None) if s.len() > "event:".len() => Ok(Readiness::Event {
                    event: s["event:".len()..].into(),
                    detail: None,
                }),
                _ => Err(format!(
                    "{s:?}: use \"file\", \"exit\", \"event:<event>[:<detail>]\" or \"none\""
                )),
            },
        }
    }
}
from_string!(Readiness);

/// An event pattern `source:event[:detail]`: `*` matches any source or event; the
/// detail (placeholders expanded when it is matched) matches any string or number in
/// the record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    pub source: String,
    pub event: String,
    pub detail: Option<String>,
}

impl std::str::FromStr for Pattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.splitn(3, ':');
        let source = parts.next().unwrap_or("");
        let event = parts.next().unwrap_or("");
        if source.is_empty() || event.is_empty() {
            return Err(format!(
                "{s:?} is not an event pattern (source:event[:detail], e.g. \"main:signal:SIGTERM\")"
            ));
        }
        Ok(Pattern {
            source: source.into(),
            event: event.into(),
            detail: parts.next().map(str::to_string),
        })
    }
}
from_string!(Pattern);

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}:{}", self.source, self.event)?;
        if let Some(d) = &self.detail {
            write!(f, ":{d}")?;
        }
        Ok(())
    }
}

/// What `allow_alive` allows: `<name>` (the server), `<name>:launcher`,
/// `<name>:descendants`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowAlive {
    pub name: String,
    pub what: Allowed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allowed {
    Server,
    Launcher,
    Descendants,
}

impl std::str::FromStr for AllowAlive {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, what) = match s.split_once(':') {
            None => (s, Allowed::Server),
            Some((n, "launcher")) => (n, Allowed::Launcher),
            Some((n, "descendants")) => (n, Allowed::Descendants),
            Some(_) => {
                return Err(format!(
                    "{s:?}: use <name>, <name>:launcher or <name>:descendants"
                ))
            }
        };
        if name.is_empty() {
            return Err(format!("{s:?}: no name"));
        }
        Ok(AllowAlive {
            name: name.into(),
            what,
        })
    }
}
from_string!(AllowAlive);

/// A file mode in octal: `"0777"`, `"0o700"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mode(pub u32);

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        u32::from_str_radix(s.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .map(Mode)
            .ok_or_else(|| format!("{s:?} is not an octal mode (e.g. \"0700\")"))
    }
}
from_string!(Mode);

macro_rules! keyword_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal),+ $(,)? } $(default $d:ident)?) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $($(#[$vm])* $v),+ }

        impl $name {
            #[allow(dead_code)]
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s),+ }
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok($name::$v),)+
                    _ => Err(format!(
                        "{s:?}: use {}",
                        [$(concat!("\"", $s, "\"")),+].join(", ")
                    )),
                }
            }
        }
        from_string!($name);

        $(impl Default for $name {
            fn default() -> Self { $name::$d }
        })?
    };
}

keyword_enum!(
    /// What the runner connects to a server's stdin.
    Stdin { Pipe = "pipe", Null = "null" } default Pipe
);
keyword_enum!(
    /// `--legacy` eras of fake-server.
    Legacy { Pre0125 = "pre-0.1.25", Alias = "alias" }
);
keyword_enum!(
    /// `[[file]] kind`.
    FileKind {
        File = "file",
        Fifo = "fifo",
        Symlink = "symlink",
        /// A second name (hard link) of `target`.
        Hardlink = "hardlink",
        Dir = "dir",
        /// A valid empty SQLite database.
        Sqlite = "sqlite",
        /// Only change the mode.
        Chmod = "chmod",
        Remove = "remove",
    } default File
);
keyword_enum!(
    /// `[[file]] when`.
    When {
        BeforeServers = "before-servers",
        AfterServers = "after-servers",
        /// Written by the upgrader's own process just before it execs.
        UpgraderStart = "upgrader-start",
    } default AfterServers
);
keyword_enum!(
    /// `[uv] behavior`: what the stand-in uv's install (or stage) does.
    UvBehavior {
        Succeed = "succeed",
        Fail = "fail",
        Hang = "hang",
        Sleep = "sleep",
        Absent = "absent",
        Unresolvable = "unresolvable",
        DeleteEnvThenFail = "delete-env-then-fail",
        BrokenEntry = "broken-entry",
        BrokenPython = "broken-python",
        WrongVersion = "wrong-version",
        DanglingEntry = "dangling-entry",
    } default Succeed
);
keyword_enum!(
    /// `[differential] expect`.
    DiffExpect { Pass = "pass", Fail = "fail", Skip = "skip" }
);
keyword_enum!(
    /// `[[expect.uv]] kind`.
    UvKind { Dir = "dir", Stage = "stage", Install = "install" }
);
keyword_enum!(
    /// `all_processes`.
    Liveness { Dead = "dead", Alive = "alive" }
);
keyword_enum!(
    /// `[crash] at`: mm-upgrade's step boundaries (`MM_UPGRADE_FAULT`, the `fault-points`
    /// feature; `crate::sys::fault_point` in src/).
    FaultPoint {
        Staged = "staged",
        Relocated = "relocated",
        Stopped = "stopped",
        Switching = "switching",
        Exchanged = "exchanged",
        Linked = "linked",
        Checked = "checked",
        Committed = "committed",
        RollingBack = "rolling-back",
    }
);
