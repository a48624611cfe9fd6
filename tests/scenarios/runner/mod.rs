//! The inner runner: runs ONE scenario inside its own process (optionally inside its own
//! pid namespace), as the subreaper of everything it starts. It builds the sandbox,
//! starts bystanders, fake servers and hosts, plants files, runs the upgrader, checks
//! every expectation, kills and reaps everything, and prints a report.
//!
//! One module per job: [`placeholders`] (expanding `{…}`), [`sandbox`] (directories,
//! the starting installation, planted files, teardown), [`spawn`] (processes and their
//! readiness), [`upgrader`] (its environment, argv and launch) with [`watch`] (the
//! runner's own /proc watch while it runs), [`evidence`] (logs, the merged timeline,
//! outcomes), [`checks`] (the expectations and the invariants), [`matching`] (JSON,
//! event and path matchers) and [`report`].

mod checks;
mod evidence;
mod matching;
mod placeholders;
mod report;
mod sandbox;
mod spawn;
mod upgrader;
mod watch;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ChildStdin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::model::{self, Scenario, Server};
use crate::sys::{self, Reaper};
use evidence::Ev;
use watch::Watched;

pub struct Config {
    pub scenario_path: PathBuf,
    pub name: String,
    pub bin_dir: PathBuf,
    /// Our upgrader binary.
    pub mm_upgrade: Option<PathBuf>,
    /// `MM_SCENARIO_UPGRADER`: another upgrader command (differential mode).
    pub other: Option<String>,
    pub keep: bool,
    pub pause: bool,
    pub run_id: String,
}

pub enum Verdict {
    Pass,
    Fail,
}

/// A process the runner started: a server, a bystander, or a host.
struct Proc {
    name: String,
    /// A server or host: its event log is read, and it may be of the old generation.
    is_server: bool,
    /// The process the runner spawned.
    spawned: i32,
    /// What the ready file says (server pid, all pids), if it became ready.
    ready: Option<Value>,
    pgid: i32,
    events: PathBuf,
    stderr: PathBuf,
    spec: Option<Server>,
    /// A `[[host]]`: fake-host's session log (its servers log into `events`).
    host_log: Option<PathBuf>,
}

impl Proc {
    /// The server's own pid: the ready file's `pid`, else the spawned process.
    fn pid(&self) -> i32 {
        self.ready
            .as_ref()
            .and_then(|r| r.get("pid"))
            .and_then(Value::as_i64)
            .map(|p| p as i32)
            .unwrap_or(self.spawned)
    }

    fn ready_pids(&self) -> Vec<i32> {
        self.ready
            .as_ref()
            .and_then(|r| r.get("pids"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_i64)
                    .map(|p| p as i32)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Processes the server itself created: its pid and everything after it in `pids`
    /// (the ones before it are launchers/supervisors: the "client").
    fn own_pids(&self) -> Vec<i32> {
        let pids = self.ready_pids();
        let me = self.pid();
        match pids.iter().position(|p| *p == me) {
            Some(i) => pids[i..].to_vec(),
            None => vec![me],
        }
    }

    fn elders(&self) -> Vec<i32> {
        let pids = self.ready_pids();
        let me = self.pid();
        let mut out: Vec<i32> = match pids.iter().position(|p| *p == me) {
            Some(i) => pids[..i].to_vec(),
            None => vec![],
        };
        if self.spawned != me && !out.contains(&self.spawned) {
            out.push(self.spawned);
        }
        out
    }

    /// Counted among the old generation that must be gone at the switch.
    fn managed(&self) -> bool {
        self.is_server && self.spec.as_ref().is_some_and(|s| s.managed)
    }

    /// Polls its ready file until it parses, at most until `deadline`.
    fn ready_from_file(&mut self, path: &Path, deadline: Instant) -> bool {
        loop {
            if let Ok(Ok(v)) = fs::read_to_string(path).map(|t| serde_json::from_str::<Value>(&t)) {
                self.ready = Some(v);
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(3));
        }
    }
}

struct Upgrader {
    cmdline: Vec<String>,
    exit: Option<i32>,
    status_text: String,
    stdout: String,
    stderr: String,
    duration: Duration,
    timed_out: bool,
}

/// A managed process (old generation) alive when the upgrader started.
#[derive(Clone, Debug)]
struct Managed {
    pid: i32,
    /// Its start time in /proc (field 22), so a reused pid is not mistaken for it.
    start: u64,
    server: String,
    /// The server's own pid (not a forked child of it).
    main: bool,
}

/// Every entry under some roots: relative path -> kind, mode and content digest or
/// link target.
type Tree = BTreeMap<String, String>;

pub struct Runner {
    cfg: Config,
    sc: Scenario,
    reaper: Arc<Reaper>,
    sandbox: PathBuf,
    dirs: BTreeMap<&'static str, PathBuf>,
    procs: Vec<Proc>,
    timeline: Vec<Ev>,
    stdins: Vec<ChildStdin>,
    held: Vec<fs::File>,
    failures: Vec<String>,
    notes: Vec<String>,
    upgrader: Option<Upgrader>,
    env_for_upgrader: Vec<(String, String)>,
    /// The old-generation processes alive when the upgrader started (managed ones).
    live_at_start: Vec<Managed>,
    /// The installation (`{tools}/memtomem`, `{toolbin}`) just before the upgrader ran.
    env_before: Option<Tree>,
    /// The runner's own watch of the old generation while the upgrader ran.
    watched: Watched,
}

impl Runner {
    fn dir(&self, k: &str) -> &Path {
        &self.dirs[k]
    }

    fn differential(&self) -> bool {
        self.cfg.other.is_some()
    }

    fn note(&mut self, source: &str, event: &str, fields: Value) {
        self.timeline.push(Ev {
            mono: sys::mono_ns(),
            source: source.into(),
            event: event.into(),
            fields,
        });
    }

    fn fail(&mut self, msg: impl Into<String>) {
        self.failures.push(msg.into());
    }

    fn proc_named(&self, name: &str) -> Option<&Proc> {
        self.procs.iter().find(|p| p.name == name)
    }
}

/// Entry point of the inner runner: the verdict and the report.
pub fn run_one(cfg: Config) -> (Verdict, String) {
    let sc = match model::load(&cfg.scenario_path) {
        Ok(s) => s,
        Err(e) => return (Verdict::Fail, format!("invalid scenario file: {e}\n")),
    };
    if std::process::id() != 1 {
        sys::set_subreaper();
    }
    sys::install_signal_recorder();
    let reaper = Reaper::start();
    let keep = cfg.keep;
    let mut r = match Runner::new(cfg, sc, reaper) {
        Ok(r) => r,
        Err(e) => return (Verdict::Fail, e),
    };
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<(), String> {
            r.setup_sandbox()?;
            r.plant_files(model::When::BeforeServers)?;
            r.start_bystanders()?;
            r.start_servers()?;
            r.start_hosts()?;
            r.plant_files(model::When::AfterServers)?;
            let managed = r.write_managed_pids()?;
            r.run_crash(&managed)?;
            r.run_upgrader(&managed)?;
            r.settle();
            r.check()
        }));
    let setup_error = match result {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(p) => Some(format!(
            "runner panicked: {}",
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
    };
    let passed = setup_error.is_none() && r.failures.is_empty();
    let mut report = r.report(setup_error.as_deref());
    r.teardown();
    if keep || !passed && std::env::var("MM_SCENARIO_KEEP_FAILED").is_ok() {
        report.push_str(&format!(
            "--- sandbox kept: {}\n    . {}/env.sh\n",
            r.sandbox.display(),
            r.sandbox.display()
        ));
    } else {
        let _ = fs::remove_dir_all(&r.sandbox);
    }
    let verdict = if passed { Verdict::Pass } else { Verdict::Fail };
    (verdict, report)
}
