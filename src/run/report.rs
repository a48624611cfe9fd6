//! What a run tells: the state carried through the run (`Ctx`, `Progress`),
//! the final JSON document in upstream's key order, the refusal text and the
//! rendered plan. Only this module writes the report.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::cli::Settings;
use crate::discover::{self, Installation, Inventory, Scope};
use crate::error::UpgradeError;
use crate::plan::Plan;
use crate::stop::StopRecord;
use crate::sys::Pid;
use crate::txn;
use crate::ui::{pid_list, Ui};

/// What the run did so far, for every report (success or failure).
#[derive(Default)]
pub(super) struct Progress {
    pub(super) records: Vec<StopRecord>,
    pub(super) removed: Vec<PathBuf>,
    pub(super) first_signal: Option<Instant>,
    /// When the last stop round returned (every target's exit confirmed).
    pub(super) last_exit: Option<Instant>,
    /// The process-table start time of the first signal.
    pub(super) first_signal_ticks: u64,
    /// Parents of the stopped servers (their MCP hosts): a child they
    /// start during the upgrade is a respawn.
    pub(super) launchers: Vec<Pid>,
    /// Who launched each server we stop, noted before its stop.
    pub(super) hosts: crate::hosts::Ledger,
    /// The hosts of the stopped servers, once the upgrade is done.
    pub(super) clients: Vec<crate::hosts::Client>,
}

impl Progress {
    pub(super) fn killed(&self) -> Vec<Pid> {
        let mut out: Vec<Pid> = Vec::new();
        for r in self.records.iter().filter(|r| r.was_signalled()) {
            if !out.contains(&r.pid) {
                out.push(r.pid);
            }
        }
        out
    }
    pub(super) fn removed_json(&self) -> Value {
        json!(self
            .removed
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>())
    }
}

pub(super) struct Ctx<'a> {
    pub(super) s: &'a Settings,
    pub(super) ui: &'a mut Ui,
    pub(super) doc: Map<String, Value>,
    pub(super) warnings: Vec<String>,
    pub(super) protected: Vec<Pid>,
    pub(super) install: Installation,
}

impl Ctx<'_> {
    pub(super) fn scope(&self, scan: bool) -> Scope<'_> {
        Scope {
            env: &self.s.paths,
            install: &self.install,
            protected: &self.protected,
            scan_processes: scan,
        }
    }

    pub(super) fn inventory(&mut self, phase: &str) -> Inventory {
        let inv = discover::discover_stable(&self.scope(true), &|d| std::thread::sleep(d));
        for w in &inv.warnings {
            if !self.warnings.contains(w) {
                self.warnings.push(w.clone());
            }
        }
        for i in &inv.instances {
            self.ui.event(
                "discovered",
                json!({"phase": phase, "pid": i.pid, "role": i.role, "source": i.source, "started": i.started, "problem": i.problem}),
            );
        }
        inv
    }

    /// An interrupt that arrived while nothing has changed yet ends the run.
    pub(super) fn interrupted_before_change(&mut self) -> Option<u8> {
        let sig = crate::interrupt::requested()?;
        let msg = format!(
            "interrupted by {} before anything was changed",
            crate::interrupt::name(sig)
        );
        Some(self.fail(UpgradeError::Interrupted(msg), None))
    }

    /// Emit the final document and return the exit code.
    pub(super) fn finish(&mut self, code: u8) -> u8 {
        if !self.warnings.is_empty() {
            self.doc.insert("warnings".into(), json!(self.warnings));
        }
        self.doc.insert("exit_code".into(), json!(code));
        let doc = ordered(&self.doc);
        self.ui.finish_json(&doc);
        if !self.ui.json {
            for w in self.warnings.clone() {
                self.ui.warn(w);
            }
        }
        self.ui.finished(&doc);
        code
    }

    pub(super) fn fail(&mut self, err: UpgradeError, progress: Option<&Progress>) -> u8 {
        let code = err.exit_code();
        let msg = err.to_string();
        self.ui.abandon();
        self.doc.insert("ok".into(), json!(false));
        self.doc.insert("error".into(), json!(msg));
        if let Some(p) = progress {
            self.doc.insert("killed".into(), json!(p.killed()));
            self.doc.insert("removed".into(), p.removed_json());
            self.doc.insert("stops".into(), json!(p.records));
            self.doc
                .insert("clients".into(), json!(p.hosts.clients(&p.killed())));
        }
        if !self.ui.json {
            self.ui.error(&msg);
            if let Some(p) = progress {
                let killed = p.killed();
                if !killed.is_empty() {
                    crate::ui::errln!("Stopped before failure: {}", pid_list(&killed));
                }
                for r in &p.removed {
                    crate::ui::errln!("Removed before failure: {}", r.display());
                }
            }
        }
        self.finish(code)
    }
}

/// Upstream's keys first, in upstream's order (scripts may rely on the
/// order of a one-line document), then ours.
pub(super) const KEY_ORDER: &[&str] = &[
    "ok",
    "dry_run",
    "cancelled",
    "inventory_complete",
    "would_kill",
    "would_remove",
    "would_install",
    "error",
    "stderr",
    "killed",
    "removed",
    "reinstalled",
    "extras",
    "version",
    "db_lock_warning",
    "cleanup_complete",
];

pub(super) fn ordered(doc: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for k in KEY_ORDER {
        if let Some(v) = doc.get(*k) {
            out.insert((*k).to_string(), v.clone());
        }
    }
    for (k, v) in doc {
        if !out.contains_key(k) && k != "warnings" && k != "exit_code" {
            out.insert(k.clone(), v.clone());
        }
    }
    for k in ["warnings", "exit_code"] {
        if let Some(v) = doc.get(k) {
            out.insert(k.to_string(), v.clone());
        }
    }
    out
}

pub(super) fn refusal_text(problems: &[String]) -> String {
    let mut s = String::from("Cannot verify the complete memtomem process inventory:");
    for p in problems {
        s.push_str("\n- ");
        s.push_str(p);
    }
    s.push_str("\nRefusing to reinstall. Restore access to every reported path and stop the reported process manually, then retry.");
    s
}

pub(super) fn render_plan(
    cx: &mut Ctx,
    plan: &Plan,
    extras: &[String],
    source: &str,
    explicit: bool,
    installed: Option<&str>,
) {
    if cx.ui.json {
        return;
    }
    let home = cx.s.paths.home.clone();
    let t = |p: &Path| crate::pidfile::tilde(p, &home);
    let target = cx.s.version.as_deref().unwrap_or("the latest release");
    let head = match (installed, cx.install.tool_dir()) {
        (Some(v), _) if v == target => {
            format!("memtomem reinstall plan: {v}, the installed version")
        }
        (Some(v), _) => format!("memtomem upgrade plan: {v} → {target}"),
        // Without uv's tool dir nothing is known of the installation.
        (None, None) => format!("memtomem upgrade plan: installed version unknown → {target}"),
        (None, Some(_)) => format!("memtomem is not installed: this installs {target}"),
    };
    let mut lines = vec![head];
    for i in &plan.stops {
        let pid = i.pid.map_or("?".into(), |p| p.to_string());
        let lock = i.source.as_deref().map_or("no pid file".into(), t);
        lines.push(format!(
            "  Stop running {} (pid {pid}, {lock})",
            i.role.label()
        ));
        for e in &i.evidence {
            lines.push(format!("      evidence: {e}"));
        }
        if let Some(pid) = i.pid {
            let launch = crate::hosts::launch_of(crate::sys::real(), pid);
            lines.push(format!(
                "      {}",
                crate::hosts::words::launch_line(&launch)
            ));
        }
    }
    if !plan.stops.is_empty() {
        lines.push(format!(
            "  Wait up to {}s for graceful exit, then SIGKILL",
            fmt_secs(cx.s.grace)
        ));
    }
    for i in &plan.kept {
        lines.push(format!(
            "  Keep running {} (pid {}) on old code (--skip-pkill)",
            i.role.label(),
            i.pid.unwrap_or(0)
        ));
    }
    if plan.stops.is_empty() && plan.kept.is_empty() {
        lines.push("  No running server or web UI detected — reinstall only".into());
    }
    for p in plan.would_remove() {
        if plan.stale.contains(&p) {
            lines.push(format!("  Remove stale {}", t(&p)));
        } else {
            lines.push(format!(
                "  Remove {} once its holder has exited (if nobody holds it then)",
                t(&p)
            ));
        }
    }
    if !extras.is_empty() {
        lines.push(format!("  Extras: [{}] ({source})", extras.join(",")));
    } else if !explicit {
        lines.push("  Extras: none detected (bare install)".into());
    }
    lines.push(format!(
        "  Stage first, while the servers still run: {} (into {}), then prove it starts and answers MCP initialize",
        plan.install_argv().join(" "),
        cx.install
            .tool_dir()
            .map(|t| t.join(txn::WORK_DIR).display().to_string())
            .unwrap_or_else(|| "uv's tool dir".into())
    ));
    lines.push("  Switch: exchange the old and the new environment in one atomic rename after the stop (rollback: the same exchange back)".into());
    lines.push(
        "  Recycle any server or Web UI process of the old generation present after reinstall"
            .into(),
    );
    let problems = plan.problems.clone();
    if !problems.is_empty() {
        lines.push("  Inventory diagnostics:".into());
        for p in problems {
            lines.push(format!("    - {p}"));
        }
    }
    for l in lines {
        cx.ui.say(l);
    }
}

pub(super) fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}")
    } else {
        format!("{s}")
    }
}

/// `--dry-run`: the plan as upstream's keys (`would_*`), nothing changed.
pub(super) fn dry_run(
    cx: &mut Ctx,
    plan: &Plan,
    inv: &Inventory,
    extras: &[String],
    uv_missing: Option<&str>,
) -> u8 {
    let problems = inv.all_problems();
    let d = &mut cx.doc;
    d.insert("ok".into(), json!(problems.is_empty()));
    d.insert("dry_run".into(), json!(true));
    d.insert("inventory_complete".into(), json!(problems.is_empty()));
    d.insert(
        "would_kill".into(),
        json!(plan.stops.iter().filter_map(|i| i.pid).collect::<Vec<_>>()),
    );
    d.insert(
        "would_remove".into(),
        json!(plan
            .would_remove()
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()),
    );
    d.insert("would_install".into(), json!(plan.install_argv()));
    d.insert("extras".into(), json!(extras));
    d.insert("version".into(), json!(cx.s.version));
    d.insert("processes".into(), plan_processes(&inv.instances));
    let mut ledger = crate::hosts::Ledger::default();
    let would: Vec<Pid> = plan.stops.iter().filter_map(|i| i.pid).collect();
    ledger.note(crate::sys::real(), would.iter().copied());
    d.insert("clients".into(), json!(ledger.clients(&would)));
    if !plan.kept.is_empty() {
        d.insert(
            "would_keep".into(),
            json!(plan.kept.iter().filter_map(|i| i.pid).collect::<Vec<_>>()),
        );
    }
    if !problems.is_empty() {
        let msg = refusal_text(&problems);
        d.insert("error".into(), json!(msg));
        if !cx.ui.json {
            cx.ui.say(&msg);
        }
        return cx.finish(crate::exit::REFUSED);
    }
    // The plan cannot be carried out without uv: say so, with the code the
    // real run would end with (before stopping anything).
    if let Some(e) = uv_missing {
        let msg = format!("{e} A real run would stop nothing and fail.");
        cx.doc.insert("ok".into(), json!(false));
        cx.doc.insert("error".into(), json!(msg));
        if !cx.ui.json {
            cx.ui.say(format!("error: {msg}"));
        }
        return cx.finish(crate::exit::INSTALL_FAILED);
    }
    cx.finish(crate::exit::OK)
}

/// The upgrade is done: what was stopped and removed, old → new version.
pub(super) fn success(
    cx: &mut Ctx,
    plan: &Plan,
    progress: &Progress,
    extras: &[String],
    previous: Option<&str>,
    version: &str,
    downtime_ms: Option<f64>,
) -> u8 {
    let s = cx.s;
    let db_holder = s
        .paths
        .store_path()
        .and_then(|db| crate::dblock::write_lock_holder(&db).map(|pid| (db, pid)));
    if let Some((db, pid)) = &db_holder {
        let who = if *pid > 0 {
            format!("pid {pid}")
        } else {
            "another process".into()
        };
        cx.warnings.push(format!(
            "{who} still holds a write lock on {} — it keeps running the previous version until it exits; restart it",
            db.display()
        ));
    }
    if let Some(sig) = crate::interrupt::requested() {
        cx.warnings.push(format!(
            "{} arrived during the upgrade; it was held until the upgrade finished, so nothing is left half-done",
            crate::interrupt::name(sig)
        ));
    }
    let killed = progress.killed();
    let d = &mut cx.doc;
    d.insert("ok".into(), json!(true));
    d.insert("killed".into(), json!(killed));
    d.insert("removed".into(), progress.removed_json());
    d.insert("reinstalled".into(), json!(plan.spec));
    d.insert("extras".into(), json!(extras));
    d.insert("version".into(), json!(version));
    d.insert("previous_version".into(), json!(previous));
    d.insert("db_lock_warning".into(), json!(db_holder.is_some()));
    d.insert("cleanup_complete".into(), json!(true));
    d.insert("stops".into(), json!(progress.records));
    d.insert("clients".into(), json!(progress.clients));
    if s.skip_pkill {
        d.insert(
            "kept".into(),
            json!(plan.kept.iter().filter_map(|i| i.pid).collect::<Vec<_>>()),
        );
    }
    match killed.as_slice() {
        [] => {}
        [one] => cx.ui.say(format!("\nStopped pid {one}.")),
        many => cx.ui.say(format!("\nStopped pids {}.", pid_list(many))),
    }
    for r in &progress.removed {
        cx.ui.say(format!("Removed {}.", r.display()));
    }
    // Nothing restarts a stopped server but its MCP host: say what the
    // window was, not that the servers are back.
    let window = downtime_ms
        .map(|w| format!(" ({w:.0} ms from the first stop to the new version in place)"))
        .unwrap_or_default();
    // A reinstall of the same version is not an upgrade "X → X".
    let (verb, from) = match previous {
        Some(p) if p == version => ("Reinstalled", String::new()),
        Some(p) => ("Installed", format!("{p} → ")),
        None => ("Installed", String::new()),
    };
    cx.ui.say(format!(
        "{verb} memtomem {from}{version} ({}){window}.",
        plan.spec
    ));
    for line in crate::hosts::words::upgrade_lines(&progress.clients) {
        cx.ui.say(line);
    }
    cx.finish(crate::exit::OK)
}

/// The plan's processes, each `started` from the process table as `status`
/// gives it (the pid file's stamp is the server's own, later, reading: the
/// two disagreed for the same pid).
fn plan_processes(instances: &[discover::Instance]) -> Value {
    let os = crate::sys::real();
    Value::Array(
        instances
            .iter()
            .map(|i| {
                let mut v = json!(i);
                if i.pid.is_some() {
                    v["started"] = json!(crate::status::fmt_start(os, i.start_ticks));
                }
                v
            })
            .collect(),
    )
}
