//! The upgrade, stage by stage: discover → plan → (prepare) → stop → clean →
//! install → verify. Only this module sequences side effects.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::cli::Settings;
use crate::discover::{self, Installation, Inventory, Scope};
use crate::install::{self, UvError};
use crate::plan::{self, Plan};
use crate::stop::{self, RealOps, StopConfig, StopRecord};
use crate::sys::{self, Pid};
use crate::ui::{Confirm, Ui};
use crate::{clean, exit, receipt, txn, verify};

/// What the run did so far, for every report (success or failure).
#[derive(Default)]
struct Progress {
    records: Vec<StopRecord>,
    removed: Vec<PathBuf>,
    first_signal: Option<Instant>,
}

impl Progress {
    fn killed(&self) -> Vec<Pid> {
        let mut out: Vec<Pid> = Vec::new();
        for r in self.records.iter().filter(|r| r.was_signalled()) {
            if !out.contains(&r.pid) {
                out.push(r.pid);
            }
        }
        out
    }
    fn removed_json(&self) -> Value {
        json!(self
            .removed
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>())
    }
}

struct Ctx<'a> {
    s: &'a Settings,
    ui: &'a mut Ui,
    doc: Map<String, Value>,
    warnings: Vec<String>,
    protected: Vec<Pid>,
    install: Installation,
}

impl Ctx<'_> {
    fn scope(&self, scan: bool) -> Scope<'_> {
        Scope {
            env: &self.s.paths,
            install: &self.install,
            protected: &self.protected,
            scan_processes: scan,
        }
    }

    fn inventory(&mut self, phase: &str) -> Inventory {
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
    fn interrupted_before_change(&mut self) -> Option<u8> {
        let sig = crate::interrupt::requested()?;
        let msg = format!(
            "interrupted by {} before anything was changed",
            crate::interrupt::name(sig)
        );
        Some(self.fail(exit::INTERRUPTED, msg, None))
    }

    /// Emit the final document and return the exit code.
    fn finish(&mut self, code: u8) -> u8 {
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
        code
    }

    fn fail(&mut self, code: u8, msg: String, progress: Option<&Progress>) -> u8 {
        self.doc.insert("ok".into(), json!(false));
        self.doc.insert("error".into(), json!(msg));
        if let Some(p) = progress {
            self.doc.insert("killed".into(), json!(p.killed()));
            self.doc.insert("removed".into(), p.removed_json());
            self.doc.insert("stops".into(), json!(p.records));
        }
        if !self.ui.json {
            crate::ui::errln!("error: {msg}");
            if let Some(p) = progress {
                let killed = p.killed();
                if !killed.is_empty() {
                    crate::ui::errln!("Stopped before failure: {}", join(&killed));
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
const KEY_ORDER: &[&str] = &[
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

fn ordered(doc: &Map<String, Value>) -> Map<String, Value> {
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

fn join(pids: &[Pid]) -> String {
    pids.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn upgrade(s: &Settings, ui: &mut Ui) -> u8 {
    crate::interrupt::install();
    let mut cx = Ctx {
        s,
        ui,
        doc: Map::new(),
        warnings: Vec::new(),
        protected: sys::self_and_ancestors(),
        install: Installation::default(),
    };

    // uv first: without it nothing may be stopped.
    let uv = match install::Uv::locate(s.uv.as_deref(), s.path_var.as_deref(), s.uv_timeout) {
        Ok(uv) => Some(uv),
        Err(e) if s.dry_run => {
            cx.warnings.push(e.to_string());
            None
        }
        Err(e) => {
            let msg = format!("{e} Nothing was stopped.");
            return cx.fail(exit::INSTALL_FAILED, msg, None);
        }
    };
    if let Some(uv) = &uv {
        match Installation::from_uv(uv) {
            Ok(i) => cx.install = i,
            Err(e) if s.dry_run => cx.warnings.push(format!(
                "cannot ask uv for its tool directory ({e}); extras not detected"
            )),
            Err(e) => {
                let msg =
                    format!("cannot ask uv for its tool directory ({e}); nothing was changed");
                return cx.fail(exit::INSTALL_FAILED, msg, None);
            }
        }
    }
    let layout = match (cx.install.tool_dir(), &cx.install.bin_dir) {
        (Some(t), Some(b)) if t.is_absolute() && b.is_absolute() => Some(txn::Layout {
            tool_dir: t.to_path_buf(),
            bin_dir: Some(b.clone()),
        }),
        _ if s.dry_run => None,
        _ => {
            let msg =
                "uv did not name an absolute tool dir and bin dir; nothing was changed".to_string();
            return cx.fail(exit::INSTALL_FAILED, msg, None);
        }
    };

    // Serialise on uv's tool dir with uv's own lock: two upgrades, or an
    // upgrade and a `uv tool install`, never interleave, whatever their
    // runtime dirs.
    let _tool_lock = match (&layout, s.dry_run) {
        (Some(l), false) => match txn::lock_tool_dir(&l.tool_dir) {
            Ok(lock) => Some(lock),
            Err(msg) => return cx.fail(exit::REFUSED, msg, None),
        },
        _ => None,
    };
    // An earlier run that was killed mid-transaction is finished or undone first.
    if let Some(l) = &layout {
        if s.dry_run {
            if let Some(p) = txn::pending(l) {
                cx.warnings.push(p);
            }
        } else {
            match txn::recover(l) {
                Ok(Some(r)) => {
                    cx.ui.event("recovered", json!({"outcome": r.key()}));
                    cx.doc.insert("recovered".into(), json!(r.key()));
                    cx.warnings.push(r.describe());
                }
                Ok(None) => {}
                Err(e) => return cx.fail(exit::REFUSED, e, None),
            }
        }
    }
    // What the user installed and how: uv's receipt.
    let old_receipt = match layout.as_ref().map(|l| l.env()).filter(|e| e.exists()) {
        Some(env) => match receipt::read(&env) {
            Ok(r) => Some(r),
            Err(e) => {
                let msg = format!("{e}; nothing was changed");
                return cx.fail(exit::REFUSED, msg, None);
            }
        },
        None => None,
    };
    let (extras, extras_source) = match &s.extras {
        Some(e) => (e.clone(), "from --extras"),
        None => (
            old_receipt
                .as_ref()
                .map(|r| r.main.extras.clone())
                .unwrap_or_default(),
            "auto-detected from uv tool receipt",
        ),
    };
    if let Some(bad) = extras.iter().find(|e| !receipt::is_valid_name(e)) {
        let msg = format!("extra {bad:?} is not a PEP 508 name");
        return cx.fail(exit::USAGE, msg, None);
    }
    let unpinned = receipt::Requirement {
        name: install::PACKAGE.into(),
        extras: vec![],
        specifier: String::new(),
        marker: None,
    };
    let main_req = receipt::target_requirement(
        old_receipt.as_ref().map_or(&unpinned, |r| &r.main),
        &extras,
        s.version.as_deref(),
    );
    let argv = match receipt::install_args(old_receipt.as_ref(), &main_req) {
        Ok(a) => a,
        Err(e) => return cx.fail(exit::REFUSED, format!("{e}; nothing was changed"), None),
    };
    let installed_version = layout
        .as_ref()
        .and_then(|l| install::installed_version(&l.tool_dir));

    let inv = cx.inventory("initial");
    let plan = plan::plan(&inv, main_req.pep508(), argv.clone(), s.skip_pkill);
    render_plan(&mut cx, &plan, &extras, extras_source, s.extras.is_some());

    let problems = inv.all_problems();
    if s.dry_run {
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
        d.insert("version".into(), json!(s.version));
        d.insert("processes".into(), json!(inv.instances));
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
            return cx.finish(exit::REFUSED);
        }
        return cx.finish(exit::OK);
    }
    if !problems.is_empty() {
        return cx.fail(exit::REFUSED, refusal_text(&problems), None);
    }
    if !s.yes {
        match cx.ui.confirm("Proceed with upgrade?") {
            Confirm::Yes => {}
            Confirm::No => {
                cx.doc.insert("ok".into(), json!(true));
                cx.doc.insert("cancelled".into(), json!(true));
                cx.ui.say("Cancelled — nothing was changed.");
                return cx.finish(exit::OK);
            }
            Confirm::Interrupted => {
                let sig = crate::interrupt::requested().map_or("a signal", crate::interrupt::name);
                return cx.fail(
                    exit::INTERRUPTED,
                    format!("interrupted by {sig} at the prompt; nothing was changed"),
                    None,
                );
            }
            Confirm::NotATerminal => {
                return cx.fail(
                    exit::REFUSED,
                    "Refusing to upgrade without confirmation in a non-interactive shell. Pass -y."
                        .into(),
                    None,
                )
            }
        }
    }
    let uv = uv.expect("uv is located for real runs");
    let layout = layout.expect("the layout is known for real runs");
    if let Some(code) = cx.interrupted_before_change() {
        return code;
    }
    let spec = main_req.pep508();

    // Stage and prove while the old servers still serve: a release that
    // cannot be installed or does not run fails here, and nothing is stopped.
    let mut staged = match stage_and_prove(&mut cx, &uv, &layout, &argv, &spec) {
        Ok(st) => st,
        Err(code) => return code,
    };
    let version = Some(staged.journal.version.clone());
    let prev = installed_version.clone();
    if let (Some(target), Some(installed)) = (s.version.as_deref(), prev.as_deref()) {
        if let Err(msg) = schema_allows(&cx, &layout, &staged, installed, target) {
            txn::discard(&layout.work(), &staged.journal);
            return cx.fail(exit::REFUSED, msg, None);
        }
    }
    match txn::plan_links(&layout, old_receipt.as_ref(), &staged.receipt) {
        Ok((before, after)) => {
            staged.journal.old_links = before;
            staged.journal.new_links = after;
        }
        Err(e) => {
            txn::discard(&layout.work(), &staged.journal);
            return cx.fail(exit::REFUSED, format!("{e}; nothing was changed"), None);
        }
    }
    if let Err(e) = txn::journal::store(&layout.work(), &staged.journal) {
        txn::discard(&layout.work(), &staged.journal);
        let msg = format!("cannot write the journal: {e}; nothing was changed");
        return cx.fail(exit::INSTALL_FAILED, msg, None);
    }
    let cfg = StopConfig {
        grace: s.grace,
        kill_wait: Duration::from_secs(3),
    };
    let mut progress = Progress::default();

    // Last point at which an interrupt is honoured at once.
    if let Some(code) = cx.interrupted_before_change() {
        txn::discard(&layout.work(), &staged.journal);
        return code;
    }

    if s.skip_pkill {
        for i in &plan.kept {
            let w = format!(
                "pid {} ({}{}) keeps running the old code (--skip-pkill)",
                i.pid.unwrap_or(0),
                i.role.label(),
                i.source
                    .as_ref()
                    .map(|p| format!(", {}", p.display()))
                    .unwrap_or_default()
            );
            cx.warnings.push(w);
        }
    } else {
        // Stop, clean, and stop again anything that respawned meanwhile.
        let mut targets = plan.stops.clone();
        for round in 0..3 {
            if targets.is_empty() {
                break;
            }
            if progress.first_signal.is_none() {
                progress.first_signal = Some(Instant::now());
            }
            let recs = stop_instances(&mut cx, &targets, cfg);
            let failed: Vec<String> = recs.iter().filter_map(|r| r.error.clone()).collect();
            progress.records.extend(recs);
            clean::after_stop(
                &targets,
                &progress.records,
                &mut progress.removed,
                &mut cx.warnings,
                cx.ui,
            );
            if !failed.is_empty() {
                txn::discard(&layout.work(), &staged.journal);
                return cx.fail(exit::PARTIAL, failed.join("; "), Some(&progress));
            }
            let boundary = cx.inventory("boundary");
            let problems = boundary.all_problems();
            if !problems.is_empty() {
                txn::discard(&layout.work(), &staged.journal);
                return cx.fail(exit::PARTIAL, refusal_text(&problems), Some(&progress));
            }
            targets = boundary.targets().cloned().collect();
            if round == 2 && !targets.is_empty() {
                // A client respawning faster than we stop: switch anyway and
                // retire what is old afterwards.
                cx.warnings.push(format!(
                    "servers keep respawning (pids {}); they are retired after the switch",
                    join(&targets.iter().filter_map(|t| t.pid).collect::<Vec<_>>())
                ));
            }
        }
        clean::stale_files(&inv.stale, &mut progress.removed, &mut cx.warnings, cx.ui);
    }
    crate::sys::fault_point("stopped");

    // The switch: under memtomem's lifecycle barrier, one exchange.
    let switch_started = Instant::now();
    let runtime_dirs: Vec<PathBuf> = s.paths.runtime_dirs().into_iter().map(|d| d.path).collect();
    let barrier = txn::take_barrier(&runtime_dirs, Duration::from_secs(1));
    for m in &barrier.missed {
        cx.warnings.push(format!(
            "{} could not be locked exclusively in time (a server restarted meanwhile); switched without the barrier",
            m.display()
        ));
    }
    let work = layout.work();
    let switched =
        txn::switch(&work, &mut staged.journal).and_then(|()| txn::check_in_place(&staged.journal));
    if let Err(e) = switched {
        let tail = match txn::rollback(&work, &mut staged.journal) {
            Ok(()) => {
                cx.doc.insert("rolled_back".into(), json!(true));
                cx.ui.event("rolled_back", json!({}));
                " Rolled back: the previous installation is in place again.".to_string()
            }
            Err(r) => {
                cx.doc.insert("rolled_back".into(), json!(false));
                format!(" The rollback failed too ({r}); `mm-upgrade recover` finishes it.")
            }
        };
        drop(barrier);
        return cx.fail(exit::INSTALL_FAILED, format!("{e}.{tail}"), Some(&progress));
    }
    drop(barrier);
    let switch_ms = switch_started.elapsed().as_secs_f64() * 1000.0;
    crate::sys::fault_point("checked");
    let removal = match txn::commit(&work, &mut staged.journal) {
        Ok(h) => Some(h),
        Err(e) => {
            cx.warnings.push(format!(
                "{e}; the old environment is removed by the next run"
            ));
            None
        }
    };
    let installed_ticks = sys::boot_ticks_now();
    let window_ms = progress
        .first_signal
        .map(|t| t.elapsed().as_secs_f64() * 1000.0);
    cx.doc.insert(
        "switch_ms".into(),
        json!((switch_ms * 100.0).round() / 100.0),
    );
    cx.doc
        .insert("downtime_ms".into(), json!(window_ms.map(|w| w.round())));
    cx.ui.event(
        "switched",
        json!({"spec": spec, "version": version, "switch_ms": switch_ms, "downtime_ms": window_ms}),
    );
    cx.ui
        .event("installed", json!({"spec": spec, "downtime_ms": window_ms}));

    // Retire whatever of the old generation is still (or again) running.
    let mut remaining = Vec::new();
    if !s.skip_pkill {
        for _ in 0..3 {
            let inv = cx.inventory("post-install");
            let (old, new) = verify::split_generations(&inv, installed_ticks);
            // A process that started after the install runs the new code,
            // whatever else is unclear about it.
            let problems = verify::old_generation_problems(&inv, installed_ticks);
            if !problems.is_empty() {
                cx.doc.insert("reinstalled".into(), json!(spec));
                cx.doc.insert("cleanup_complete".into(), json!(false));
                let msg = format!(
                    "{}\nThe package was reinstalled, but process generation cleanup is incomplete: stop and restart every memtomem server and `mm web` manually.",
                    refusal_text(&problems)
                );
                return cx.fail(exit::VERIFY_FAILED, msg, Some(&progress));
            }
            if old.is_empty() {
                // What `status` would say of the survivors: started after the
                // install, but still mapping deleted files of the installation
                // or running another installation's interpreter.
                let stale: Vec<String> = new
                    .iter()
                    .filter_map(|i| {
                        let (stale, ev) = crate::status::classify(
                            i.pid?,
                            0.0,
                            None,
                            cx.install.env_dir.as_deref(),
                        );
                        stale.then(|| format!("pid {}: {}", i.pid.unwrap_or(0), ev.join("; ")))
                    })
                    .collect();
                if !stale.is_empty() {
                    cx.doc.insert("reinstalled".into(), json!(spec));
                    cx.doc.insert("cleanup_complete".into(), json!(false));
                    let msg = format!(
                        "memtomem {spec} is installed, but stale code still runs: {}",
                        stale.join(" | ")
                    );
                    return cx.fail(exit::VERIFY_FAILED, msg, Some(&progress));
                }
                remaining.clear();
                break;
            }
            let recs = stop_instances(&mut cx, &old, cfg);
            progress.records.extend(recs);
            clean::after_stop(
                &old,
                &progress.records,
                &mut progress.removed,
                &mut cx.warnings,
                cx.ui,
            );
            remaining = old;
        }
        if !remaining.is_empty() {
            let final_inv = cx.inventory("final");
            let (old, _) = verify::split_generations(&final_inv, installed_ticks);
            remaining = old;
        }
    }
    if !remaining.is_empty() {
        cx.doc.insert("reinstalled".into(), json!(spec));
        cx.doc.insert("cleanup_complete".into(), json!(false));
        cx.doc.insert("remaining".into(), json!(remaining));
        let list = remaining.iter().filter_map(|i| i.pid).collect::<Vec<_>>();
        let msg = format!(
            "memtomem {spec} is installed, but old-generation pid {} still runs; stop it manually",
            join(&list)
        );
        return cx.fail(exit::VERIFY_FAILED, msg, Some(&progress));
    }

    if let Some(h) = removal {
        let _ = h.join();
    }
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
    d.insert("reinstalled".into(), json!(spec));
    d.insert("extras".into(), json!(extras));
    d.insert("version".into(), json!(version));
    d.insert("db_lock_warning".into(), json!(db_holder.is_some()));
    d.insert("cleanup_complete".into(), json!(true));
    d.insert("stops".into(), json!(progress.records));
    if s.skip_pkill {
        d.insert(
            "kept".into(),
            json!(plan.kept.iter().filter_map(|i| i.pid).collect::<Vec<_>>()),
        );
    }
    match killed.as_slice() {
        [] => {}
        [one] => cx.ui.say(format!("\nStopped pid {one}.")),
        many => cx.ui.say(format!("\nStopped pids {}.", join(many))),
    }
    for r in progress.removed.clone() {
        cx.ui.say(format!("Removed {}.", r.display()));
    }
    let window = window_ms
        .map(|w| format!(" (servers down for {w:.0} ms)"))
        .unwrap_or_default();
    let from = prev.map(|p| format!("{p} → ")).unwrap_or_default();
    let to = version.as_deref().unwrap_or("?");
    cx.ui
        .say(format!("Installed memtomem {from}{to} ({spec}){window}."));
    cx.finish(exit::OK)
}

fn stop_instances(
    cx: &mut Ctx,
    instances: &[discover::Instance],
    cfg: StopConfig,
) -> Vec<StopRecord> {
    let targets = plan::stop_targets(instances, &cx.protected);
    for t in &targets {
        cx.ui
            .event("signalling", json!({"pid": t.pid, "role": t.role}));
    }
    let recs = stop::stop_all(&RealOps::default(), &targets, cfg);
    for r in &recs {
        cx.ui.event(
            "signalled",
            json!({"pid": r.pid, "signals": r.signals, "via": r.via}),
        );
        if r.escalated.is_some() {
            cx.ui
                .event("escalated", json!({"pid": r.pid, "why": r.escalated}));
        }
        cx.ui.event("exited", json!({"pid": r.pid, "confirmed_by": r.confirmed_by, "after_ms": r.after_ms, "error": r.error}));
    }
    recs
}

fn refusal_text(problems: &[String]) -> String {
    let mut s = String::from("Cannot verify the complete memtomem process inventory:");
    for p in problems {
        s.push_str("\n- ");
        s.push_str(p);
    }
    s.push_str("\nRefusing to reinstall. Restore access to every reported path and stop the reported process manually, then retry.");
    s
}

fn render_plan(cx: &mut Ctx, plan: &Plan, extras: &[String], source: &str, explicit: bool) {
    if cx.ui.json {
        return;
    }
    let home = cx.s.paths.home.clone();
    let t = |p: &Path| crate::pidfile::tilde(p, &home);
    let mut lines = vec!["memtomem upgrade plan:".to_string()];
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

fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}")
    } else {
        format!("{s}")
    }
}

/// Stage the new release beside the installed one and prove it: metadata,
/// entry points and an MCP handshake from the staged copy, with the bytecode
/// compiled meanwhile. Any failure discards the staging dir; nothing was
/// stopped or changed.
fn stage_and_prove(
    cx: &mut Ctx,
    uv: &install::Uv,
    layout: &txn::Layout,
    argv: &[String],
    spec: &str,
) -> Result<txn::Staged, u8> {
    cx.ui.say(format!(
        "Staging {spec} beside the current installation (the running servers keep serving)…"
    ));
    let mut staged = match txn::stage(layout, uv, argv) {
        Ok(st) => st,
        Err(e) => {
            // Best effort: whatever uv left in the staging dir goes.
            if let Ok(Some(j)) = txn::journal::load(&layout.work()) {
                txn::discard(&layout.work(), &j);
            }
            if let txn::StageError::Uv(u) = &e {
                if let Some(err) = u.stderr() {
                    cx.doc.insert("stderr".into(), json!(err));
                    cx.ui.warn(format!("uv said:\n{}", err.trim_end()));
                }
            }
            let code = match e {
                txn::StageError::Uv(UvError::Interrupted { .. }) => exit::INTERRUPTED,
                _ => exit::INSTALL_FAILED,
            };
            let msg = format!("cannot install {spec}: {e}. Nothing was stopped; the installed memtomem is untouched.");
            return Err(cx.fail(code, msg, None));
        }
    };
    let version = staged.journal.version.clone();
    cx.ui.event(
        "staged",
        json!({"spec": spec, "version": version, "ms": staged.elapsed.as_millis() as u64}),
    );
    cx.doc.insert(
        "staged".into(),
        json!({"version": version, "ms": staged.elapsed.as_millis() as u64}),
    );
    let timeout = cx.s.uv_timeout;
    let env = staged.journal.stage_env.clone();
    let real = staged.journal.env.clone();
    // Bytecode for the real path, overlapping the proof.
    let compile = (!staged.compiled_by_uv).then(|| {
        let (env, real) = (env.clone(), real.clone());
        std::thread::spawn(move || txn::prove::compile_bytecode(&env, &real, timeout))
    });
    let proof = prove_staged(&env, &version, !cx.s.no_verify, timeout);
    let compiled = compile.map(|h| h.join().unwrap_or_else(|_| Err("panicked".into())));
    let fail = |cx: &mut Ctx, staged: &txn::Staged, msg: String| {
        txn::discard(&layout.work(), &staged.journal);
        let code = if crate::interrupt::requested().is_some() {
            exit::INTERRUPTED
        } else {
            exit::INSTALL_FAILED
        };
        cx.fail(code, msg, None)
    };
    let proof = match proof {
        Ok(p) => p,
        Err(e) => {
            let msg = format!("the staged memtomem {version} failed its proof: {e}. Nothing was stopped; the installed memtomem is untouched.");
            return Err(fail(cx, &staged, msg));
        }
    };
    if let Some(Err(e)) = compiled {
        cx.warnings.push(format!(
            "bytecode was not compiled ({e}); the first start compiles it"
        ));
    }
    cx.ui.event("proven", proof.clone());
    cx.doc.insert("proof".into(), proof);
    match txn::relocate::relocate(
        &env,
        &real,
        &staged.bin,
        layout.bin_dir.as_deref().unwrap_or(Path::new("/")),
    ) {
        Ok(files) => {
            cx.ui.event("relocated", json!({"files": files.len()}));
        }
        Err(e) => {
            let msg = format!("cannot relocate the staged environment: {e}. Nothing was stopped.");
            return Err(fail(cx, &staged, msg));
        }
    }
    crate::sys::fault_point("relocated");
    staged.receipt = match receipt::read(&env) {
        Ok(r) => r,
        Err(e) => return Err(fail(cx, &staged, e)),
    };
    Ok(staged)
}

/// The proof of a staged environment, as a JSON record for the report.
fn prove_staged(
    env: &Path,
    version: &str,
    handshake: bool,
    timeout: Duration,
) -> Result<Value, String> {
    let meta = txn::prove::metadata(env, false, timeout)?;
    if let Some(e) = &meta.error {
        return Err(format!("its metadata cannot be read: {e}"));
    }
    if meta.version.as_deref() != Some(version) {
        return Err(format!(
            "its interpreter reports memtomem {} instead of {version}",
            meta.version.as_deref().unwrap_or("(none)")
        ));
    }
    if !meta.missing.is_empty() {
        return Err(format!(
            "entry points do not resolve: {}",
            meta.missing.join(", ")
        ));
    }
    if !handshake {
        return Ok(json!({"version": version, "initialize": null}));
    }
    let hs = txn::prove::mcp_initialize(env, timeout.min(Duration::from_secs(120)))?;
    if hs.version != version {
        return Err(format!(
            "its server answers initialize with version {} instead of {version}",
            hs.version
        ));
    }
    Ok(
        json!({"version": version, "initialize": {"name": hs.name, "version": hs.version, "ms": hs.ms}}),
    )
}

/// A downgrade the store cannot survive is refused: memtomem refuses to open
/// a store stamped with a newer schema than it knows.
fn schema_allows(
    cx: &Ctx,
    layout: &txn::Layout,
    staged: &txn::Staged,
    installed: &str,
    target: &str,
) -> Result<(), String> {
    if crate::version::compare(target, installed) != Some(std::cmp::Ordering::Less) {
        return Ok(());
    }
    let Some(db) = cx.s.paths.store_path() else {
        return Ok(());
    };
    let timeout = Duration::from_secs(30);
    let Some(store) = txn::prove::store_schema(&layout.env().join("bin/python"), &db, timeout)
    else {
        return Ok(());
    };
    let meta = txn::prove::metadata(&staged.journal.stage_env, true, timeout)?;
    match meta.schema {
        Some(supported) if store > supported => Err(format!(
            "refusing to downgrade memtomem {installed} to {target}: the store {} has schema version {store}, and {target} supports only up to {supported}; nothing was changed",
            db.display()
        )),
        _ => Ok(()),
    }
}
