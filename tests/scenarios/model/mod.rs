//! The scenario file format (`scenarios/<area>/<name>.toml`). Every table denies unknown
//! fields and every short-string value is a type ([`types`], [`json`]), and [`load`]
//! checks what refers to what (names, sources), so a wrong scenario fails at load time
//! naming its file and key instead of silently testing nothing.
//! The reference for authors is `scenarios/README.md`.

pub mod json;
pub mod types;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

pub use json::JsonWant;
pub use types::*;

/// Reads and checks one scenario file. Errors read `<file>: <key>: <what is wrong>`.
pub fn load(path: &Path) -> Result<Scenario, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// [`load`] without the file: `<key>: <what is wrong>`.
pub fn parse(text: &str) -> Result<Scenario, String> {
    let de = toml::Deserializer::new(text);
    let sc: Scenario = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        // toml's own message: the line, a caret, and what was wrong.
        let inner = e.into_inner().to_string();
        if key == "." {
            inner
        } else {
            format!("{key}: {}", inner.trim_end())
        }
    })?;
    sc.validate()?;
    Ok(sc)
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// One or two sentences: what happens and what the user wants.
    pub description: String,
    #[allow(dead_code)]
    /// Upstream bug or issue references this scenario pins (e.g. `["#2002"]`).
    #[serde(default)]
    pub refs: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)]
    pub tags: Vec<String>,
    /// Hard cap for the whole scenario in seconds (scaled by `MM_SCENARIO_TIME_SCALE`).
    #[serde(default = "default_timeout")]
    pub timeout: f64,
    /// The scenario puts pids such as 0, -1 or 1 into pid files: a wrong upgrader could
    /// signal the whole machine. Runs inside its own pid namespace (`unshare`) when one is
    /// available; for another upgrader it is skipped otherwise.
    #[serde(default)]
    pub hostile: bool,
    /// Show as ignored with this reason.
    pub ignore: Option<String>,
    #[serde(default)]
    pub differential: Differential,
    #[serde(default, rename = "server")]
    pub servers: Vec<Server>,
    #[serde(default, rename = "bystander")]
    pub bystanders: Vec<Bystander>,
    #[serde(default, rename = "host")]
    pub hosts: Vec<Host>,
    #[serde(default, rename = "file")]
    pub files: Vec<FileSpec>,
    /// A run of the upgrader before `[upgrade]` that kills itself at a step boundary;
    /// `[upgrade]` is then the run that recovers, and `[expect]` is about it.
    pub crash: Option<Crash>,
    #[serde(default)]
    pub upgrade: Upgrade,
    #[serde(default)]
    pub uv: Uv,
    #[serde(default)]
    pub expect: Expect,
}

fn default_timeout() -> f64 {
    30.0
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Differential {
    /// What another upgrader (`MM_SCENARIO_UPGRADER`) is expected to do here:
    /// "pass", "fail" or "skip". Absent: just report.
    pub expect: Option<DiffExpect>,
    /// Why (shown in the table).
    pub reason: Option<String>,
    /// Arguments for the other upgrader instead of `[upgrade].args`.
    pub args: Option<Vec<String>>,
    /// Only for the other upgrader: time bounds between two timeline events. They stand
    /// in for evidence only mm-upgrade's JSON has (`stops`: "escalated at once",
    /// "confirmed dead by pidfd"), e.g. that a 5 s grace was not waited out.
    #[serde(default)]
    pub within: Vec<Within>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Within {
    /// Its first occurrence starts the clock.
    pub from: Pattern,
    /// Its first occurrence after `from` must come within `ms`.
    pub to: Pattern,
    /// Milliseconds (scaled by `MM_SCENARIO_TIME_SCALE`).
    pub ms: u64,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub name: String,
    /// Fault modes, each passed as `--mode X` (e.g. "ignore-sigterm", "slow-shutdown=300").
    #[serde(default)]
    pub modes: Vec<String>,
    /// Extra raw arguments for fake-server.
    #[serde(default)]
    pub args: Vec<String>,
    /// Store path; default: the sandbox's default store `{home}/.memtomem/memtomem.db`.
    pub store: Option<String>,
    /// Run as `mm web` (`--web`).
    #[serde(default)]
    pub web: bool,
    pub port: Option<u16>,
    /// `--legacy pre-0.1.25|alias`.
    pub legacy: Option<Legacy>,
    /// `--bare`: the bare `server.pid`.
    #[serde(default)]
    pub bare: bool,
    /// "own" (default: its own process group) or "shared-with:<name>" (join the group
    /// of an earlier server or bystander, as an MCP client's children do).
    #[serde(default)]
    pub group: Group,
    /// "pipe" (default; the runner keeps the write end open) or "null" (EOF at once).
    #[serde(default)]
    pub stdin: Stdin,
    /// "file" (default: wait for the ready file), "exit" (wait until it exits, e.g.
    /// crash-on-start), "event:<event>[:<detail>]" (wait for that line in its event log,
    /// e.g. "event:lock:pid" for the lock-before-payload gap), "none".
    #[serde(default)]
    pub ready: Readiness,
    /// Counted among the old-generation processes that must be dead when the new
    /// installation is switched in (mm-upgrade) or installed in place (another
    /// upgrader; the fake uv checks) (default true).
    #[serde(default = "default_true")]
    pub managed: bool,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Run this command instead of fake-server (a process that only looks like a server
    /// to the upgrader, e.g. `sh -c "trap '' TERM; exec sleep 300"`); use with `lock`
    /// and a planted payload, and `ready = "none"`.
    #[serde(default)]
    pub command: Vec<String>,
    /// With `command`: the process holds an exclusive flock on this file for life.
    pub lock: Option<String>,
}

fn default_true() -> bool {
    true
}

/// An MCP host (fake-host): keeps a server running from the installed entry point and
/// starts it again at once whenever it dies, logging every session's version. Started
/// after the servers; ready once its first session answered `initialize`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Host {
    pub name: String,
    /// The server command (placeholders allowed); default `["{toolbin}/memtomem-server"]`,
    /// the entry point uv linked, so a respawn after the switch runs the new release.
    #[serde(default)]
    pub command: Vec<String>,
    /// Ping the session this often (ms).
    #[serde(default = "default_ping_ms")]
    pub ping_ms: u64,
    /// Start the server again this long after it died (0: at once).
    #[serde(default)]
    pub respawn_ms: u64,
    /// Stop respawning after this many starts (a crash loop stays bounded).
    #[serde(default = "default_max_spawns")]
    pub max_spawns: u32,
}

fn default_ping_ms() -> u64 {
    20
}
fn default_max_spawns() -> u32 {
    200
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Bystander {
    pub name: String,
    /// Command and arguments (placeholders allowed); default `["sleep", "300"]`.
    #[serde(default)]
    pub command: Vec<String>,
    /// "own" (default) or "shared-with:<name>".
    #[serde(default)]
    pub group: Group,
    /// Hold an exclusive flock on this file for its whole life (the runner locks it and
    /// hands the descriptor down, so the bystander is the only holder).
    pub lock: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    pub path: String,
    /// "file" (default), "fifo", "symlink", "dir", "sqlite" (a valid empty SQLite
    /// database), "chmod" (only change the mode), "remove".
    #[serde(default)]
    pub kind: FileKind,
    /// Text content (placeholders expanded) for kind "file".
    pub content: Option<String>,
    /// Content given as hex bytes (for non-UTF-8 payloads).
    pub content_hex: Option<String>,
    /// Repeat `content` this many times (oversize payloads).
    pub repeat: Option<usize>,
    /// Symlink target.
    pub target: Option<String>,
    /// Octal mode, e.g. "0777".
    pub mode: Option<Mode>,
    /// "before-servers", "after-servers" (default), or "upgrader-start": written by the
    /// upgrader's own process just before it execs, so `{upgrader}` is its pid.
    #[serde(default)]
    pub when: When,
    /// The inner runner (an ancestor of the upgrader) holds an exclusive flock on it.
    #[serde(default)]
    pub lock: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Upgrade {
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Environment variables to remove from the upgrader's environment.
    #[serde(default)]
    pub env_remove: Vec<String>,
    /// Seconds before the runner kills the upgrader (default: the scenario timeout).
    pub timeout: Option<f64>,
}

/// `[crash]`: mm-upgrade run with `MM_UPGRADE_FAULT=<at>` (honoured only when it is built
/// with the `fault-points` feature, as `cargo test --all-features` builds it) must die by
/// SIGKILL at that step; a run that does not is a failed scenario, never a silent pass.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Crash {
    pub at: FaultPoint,
    /// The crashing run's arguments (default: `[upgrade] args`).
    pub args: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Uv {
    /// What an install does (mm-upgrade's one stage call, or another upgrader's
    /// in-place install): "succeed", "fail" (with code/stderr), "hang", "sleep" (with
    /// ms, then succeed), "absent" (no uv on PATH at all), "unresolvable" (the version
    /// does not exist), "delete-env-then-fail", "broken-entry" (installs, but every
    /// entry point exits 1), "broken-python" (installs, but `bin/python` exits 1),
    /// "wrong-version" (installs `version` whatever was asked).
    #[serde(default)]
    pub behavior: UvBehavior,
    pub code: Option<i32>,
    pub stderr: Option<String>,
    pub ms: Option<u64>,
    /// With "wrong-version": the version that gets installed.
    pub version: Option<String>,
    /// Extra arguments of every `memtomem-server` uv installs during the run (the staged
    /// one the upgrader proves), e.g. `["--mode", "hang-initialize"]`.
    #[serde(default)]
    pub server_args: Vec<String>,
    /// `uv tool dir` fails.
    #[serde(default)]
    pub dir_fails: bool,
    /// What `uv tool dir` (without `--bin`) prints instead of the tool dir: `""` (nothing)
    /// or a relative path, as a broken or hostile uv could.
    pub dir_prints: Option<String>,
    /// The installed version the sandbox starts with ("none": not installed).
    #[serde(default = "default_installed")]
    pub installed: String,
    /// Extras recorded in the installed receipt.
    #[serde(default)]
    pub installed_extras: Vec<String>,
    /// Extra `uv tool install` arguments of the starting installation (e.g. `["--with",
    /// "httpx>=0.27", "--python", "/usr/bin/python3.12"]`): they end up in its receipt.
    #[serde(default)]
    pub installed_args: Vec<String>,
    /// What "latest" resolves to.
    #[serde(default = "default_latest")]
    pub latest: String,
}

impl Default for Uv {
    fn default() -> Self {
        Uv {
            behavior: UvBehavior::Succeed,
            code: None,
            stderr: None,
            ms: None,
            version: None,
            server_args: vec![],
            dir_fails: false,
            dir_prints: None,
            installed: default_installed(),
            installed_extras: vec![],
            installed_args: vec![],
            latest: default_latest(),
        }
    }
}

fn default_installed() -> String {
    "0.6.11".into()
}
fn default_latest() -> String {
    "0.7.0".into()
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub exit_code: Option<i32>,
    /// Subset match against the upgrader's JSON document (see README for the rules).
    pub json: Option<JsonWant>,
    #[serde(default)]
    pub stdout_contains: Vec<String>,
    #[serde(default)]
    pub stdout_not_contains: Vec<String>,
    #[serde(default)]
    pub stderr_contains: Vec<String>,
    #[serde(default)]
    pub stderr_not_contains: Vec<String>,
    /// Each must appear in stdout or stderr (case-insensitive).
    #[serde(default)]
    pub output_contains: Vec<String>,
    /// None may appear in stdout or stderr (case-insensitive).
    #[serde(default)]
    pub output_not_contains: Vec<String>,
    /// Upgrader wall time bounds in milliseconds.
    pub min_ms: Option<u64>,
    pub max_ms: Option<u64>,
    #[serde(default)]
    pub files_present: Vec<String>,
    #[serde(default)]
    pub files_absent: Vec<String>,
    /// Exact file contents after the run (path → text).
    #[serde(default)]
    pub file_contents: BTreeMap<String, String>,
    /// Permission bits after the run (path → mode, e.g. `"0755"`; links not followed).
    #[serde(default)]
    pub file_modes: BTreeMap<String, Mode>,
    /// Event patterns `source:event[:detail]` that must occur in this order in the
    /// merged timeline (servers' event logs, the uv log, the runner's own events).
    #[serde(default)]
    pub order: Vec<Pattern>,
    /// Event patterns that must not occur at all.
    #[serde(default)]
    pub never: Vec<Pattern>,
    /// Number of stage calls (`uv tool install` into `<tool dir>/.mm-upgrade/stage-*`).
    /// Against another upgrader: its install calls (it installs in place).
    pub uv_stages: Option<usize>,
    #[serde(default, rename = "uv")]
    pub uv_calls: Vec<UvCall>,
    /// Per-server outcome.
    #[serde(default)]
    pub servers: BTreeMap<String, ServerExpect>,
    /// Per-host (`[[host]]`) session expectations.
    #[serde(default)]
    pub hosts: BTreeMap<String, HostExpect>,
    /// Processes allowed to be alive at the end besides the servers expected alive and
    /// the bystanders: `<name>`, `<name>:launcher`, `<name>:descendants`.
    #[serde(default)]
    pub allow_alive: Vec<AllowAlive>,
    /// Every fake-server process still running at the end registered after the switch
    /// (mm-upgrade's `switched`; another upgrader's last successful install), supervisors
    /// and launchers excepted.
    #[serde(default)]
    pub new_generation_only: bool,
    /// Installed version afterwards (from the tool dir's dist-info), "none" if absent.
    pub installed: Option<String>,
    /// The installation (`{tools}/memtomem` and uv's bin dir `{toolbin}`) is byte for
    /// byte what it was before the upgrader ran: paths, kinds, modes, contents, links.
    #[serde(default)]
    pub env_unchanged: bool,
    /// Subset match (JSON rules) against the installed `uv-receipt.toml` afterwards,
    /// e.g. `{ tool = { python = "/usr/bin/python3.12" } }`.
    pub receipt: Option<JsonWant>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UvCall {
    /// "dir", "stage" (mm-upgrade's install beside the old one), "install" (in place:
    /// only another upgrader makes these).
    pub kind: UvKind,
    #[serde(default)]
    pub args_contain: Vec<String>,
    #[serde(default)]
    pub args_not_contain: Vec<String>,
    /// Runs of consecutive arguments, e.g. `[["--with", "httpx>=0.27"]]`.
    #[serde(default)]
    pub args_adjacent: Vec<Vec<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ServerExpect {
    /// "exited(N)", "killed(SIGNAME)", "alive", "dead" (any way).
    pub outcome: Option<Outcome>,
    /// Signals its event log must show, in this order (a subsequence).
    pub signals: Option<Vec<Signal>>,
    /// Signals its event log must not show.
    #[serde(default)]
    pub not_signals: Vec<Signal>,
    /// Every process it created (ready file "pids") is dead / alive afterwards.
    pub all_processes: Option<Liveness>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HostExpect {
    /// No session started after the switch (mm-upgrade's `switched`; another upgrader's
    /// last successful install) reports the version the sandbox started with, and no
    /// session of that version is still being served when the upgrader exits. Sessions
    /// of the old version that started before the switch and answered after it (a
    /// respawn in flight, retired by the upgrader) are listed in the report.
    #[serde(default)]
    pub no_old_version_after_switch: bool,
    /// At least this many sessions in the host's log.
    pub min_sessions: Option<usize>,
    /// The version of the host's last session.
    pub last_version: Option<String>,
}

impl Expect {
    /// The outcome `[expect.servers.<name>]` wants, if any.
    pub fn outcome_of(&self, name: &str) -> Option<&Outcome> {
        self.servers.get(name).and_then(|s| s.outcome.as_ref())
    }
}

impl Scenario {
    /// What refers to what: every name, group and event source must exist; a few keys
    /// need others. Errors name the key.
    fn validate(&self) -> Result<(), String> {
        if self.crash.is_some() && self.differential.expect != Some(DiffExpect::Skip) {
            return Err(
                "crash: needs [differential] expect = \"skip\" (another upgrader has no fault points)"
                    .into(),
            );
        }
        let servers: Vec<&str> = self.servers.iter().map(|s| s.name.as_str()).collect();
        let hosts: Vec<&str> = self.hosts.iter().map(|h| h.name.as_str()).collect();
        let bystanders: Vec<&str> = self.bystanders.iter().map(|b| b.name.as_str()).collect();
        let mut seen: Vec<&str> = vec![];
        for n in servers.iter().chain(&bystanders).chain(&hosts) {
            if seen.contains(n) {
                return Err(format!(
                    "name {n:?} is used twice (servers, bystanders and hosts share names)"
                ));
            }
            seen.push(n);
        }
        // Groups are joined in start order: bystanders, then servers.
        let mut started: Vec<&str> = vec![];
        for (i, b) in self.bystanders.iter().enumerate() {
            check_group(&b.group, &started, &format!("bystander[{i}].group"))?;
            started.push(&b.name);
        }
        for (i, s) in self.servers.iter().enumerate() {
            check_group(&s.group, &started, &format!("server[{i}].group"))?;
            started.push(&s.name);
        }
        for (i, f) in self.files.iter().enumerate() {
            if f.content.is_some() && f.content_hex.is_some() {
                return Err(format!("file[{i}]: content or content_hex, not both"));
            }
            if matches!(f.kind, FileKind::Symlink | FileKind::Hardlink) && f.target.is_none() {
                return Err(format!(
                    "file[{i}].target: a {} needs a target",
                    f.kind.as_str()
                ));
            }
        }
        if self.uv.behavior == UvBehavior::WrongVersion && self.uv.version.is_none() {
            return Err(
                "uv.version: behavior = \"wrong-version\" needs version = \"X.Y.Z\"".into(),
            );
        }
        let e = &self.expect;
        for name in e.servers.keys() {
            if !servers.contains(&name.as_str()) && !hosts.contains(&name.as_str()) {
                return Err(format!(
                    "expect.servers.{name}: no server or host named {name:?}"
                ));
            }
        }
        for name in e.hosts.keys() {
            if !hosts.contains(&name.as_str()) {
                return Err(format!("expect.hosts.{name}: no [[host]] named {name:?}"));
            }
        }
        for (i, a) in e.allow_alive.iter().enumerate() {
            if !servers.contains(&a.name.as_str()) && !hosts.contains(&a.name.as_str()) {
                return Err(format!(
                    "expect.allow_alive[{i}]: no server or host named {:?}",
                    a.name
                ));
            }
        }
        let source_ok = |src: &str| {
            matches!(src, "*" | "mm" | "uv" | "upgrader" | "runner")
                || seen.contains(&src)
                || src
                    .strip_suffix(".host")
                    .is_some_and(|h| hosts.contains(&h))
        };
        let patterns = e
            .order
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("expect.order[{i}]"), p))
            .chain(
                e.never
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (format!("expect.never[{i}]"), p)),
            )
            .chain(
                self.differential
                    .within
                    .iter()
                    .enumerate()
                    .flat_map(|(i, w)| {
                        [
                            (format!("differential.within[{i}].from"), &w.from),
                            (format!("differential.within[{i}].to"), &w.to),
                        ]
                    }),
            );
        for (key, p) in patterns {
            if !source_ok(&p.source) {
                return Err(format!(
                    "{key}: {:?}: unknown source {:?} (a server, bystander or host name, <host>.host, mm, uv, upgrader, runner or *)",
                    p.to_string(),
                    p.source
                ));
            }
        }
        Ok(())
    }
}

fn check_group(g: &Group, started: &[&str], key: &str) -> Result<(), String> {
    match g {
        Group::SharedWith(n) if !started.contains(&n.as_str()) => Err(format!(
            "{key}: shared-with:{n}: no bystander or server named {n:?} starts before it"
        )),
        _ => Ok(()),
    }
}
