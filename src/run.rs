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
use crate::{clean, exit, verify};

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
            eprintln!("error: {msg}");
            if let Some(p) = progress {
                let killed = p.killed();
                if !killed.is_empty() {
                    eprintln!("Stopped before failure: {}", join(&killed));
                }
                for r in &p.removed {
                    eprintln!("Removed before failure: {}", r.display());
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

    // Serialise real runs: two upgrades must never interleave.
    let _run_lock = if s.dry_run {
        None
    } else {
        match crate::lock::acquire(&s.paths.primary_runtime_dir(), s.paths.euid) {
            Ok(l) => l,
            Err(msg) => return cx.fail(exit::REFUSED, msg, None),
        }
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
            Err(e) => cx.warnings.push(format!(
                "cannot ask uv for its tool directory ({e}); extras not detected"
            )),
        }
    }
    let (extras, extras_source) = match &s.extras {
        Some(e) => (e.clone(), "from --extras"),
        None => (
            cx.install
                .tool_dir()
                .map(install::receipt_extras)
                .unwrap_or_default(),
            "auto-detected from uv tool receipt",
        ),
    };

    let inv = cx.inventory("initial");
    let plan = plan::plan(
        &inv,
        &extras,
        s.version.as_deref(),
        !s.no_prepare,
        s.skip_pkill,
    );
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
    if let Some(code) = cx.interrupted_before_change() {
        return code;
    }

    // Prepare while the old servers still serve: a version that cannot be
    // installed fails here, before anything is stopped.
    let mut version = s.version.clone();
    let mut prepared = false;
    // The rollback copy is made while uv prepares: the two overlap.
    let snapshot = match (cx.install.tool_dir(), s.no_rollback || s.skip_pkill) {
        (Some(dir), false) => Some(crate::rollback::Pending::start(
            dir.to_path_buf(),
            cx.install.bin_dir.clone(),
        )),
        _ => None,
    };
    if !s.no_prepare {
        let spec = install::package_spec(&extras, version.as_deref());
        cx.ui.say(format!(
            "Preparing {spec} (the running servers keep serving)…"
        ));
        let env_python = cx
            .install
            .env_dir
            .as_ref()
            .map(|d| d.join("bin/python"))
            .filter(|p| p.exists());
        match install::prepare(&uv, &spec, env_python.as_deref()) {
            Ok(p) => {
                prepared = true;
                if version.is_none() {
                    version = p.version.clone();
                }
                cx.ui.event(
                    "prepared",
                    json!({"spec": spec, "version": p.version, "ms": p.elapsed.as_millis() as u64}),
                );
                cx.doc.insert(
                    "prepared".into(),
                    json!({"version": p.version, "ms": p.elapsed.as_millis() as u64}),
                );
            }
            Err(e) => {
                if let Some(err) = e.stderr() {
                    cx.doc.insert("stderr".into(), json!(err));
                    if !cx.ui.json {
                        eprint!("{err}");
                    }
                }
                let code = match e {
                    UvError::Interrupted { .. } => exit::INTERRUPTED,
                    _ => exit::INSTALL_FAILED,
                };
                let msg = format!("cannot prepare {spec}: {e}. Nothing was stopped; the installed memtomem is untouched.");
                return cx.fail(code, msg, None);
            }
        }
    }
    let spec = install::package_spec(&extras, version.as_deref());
    let cfg = StopConfig {
        grace: s.grace,
        kill_wait: Duration::from_secs(3),
    };
    let mut progress = Progress::default();

    // The copy that lets a failed install be undone.
    let backup = match snapshot.map(|p| p.finish()) {
        Some(Ok(b)) => b,
        Some(Err(e)) => {
            cx.warnings.push(format!(
                "no rollback copy of the installation could be made ({e})"
            ));
            None
        }
        None => None,
    };

    // Last point at which an interrupt is honoured at once.
    if let Some(code) = cx.interrupted_before_change() {
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
                return cx.fail(exit::PARTIAL, failed.join("; "), Some(&progress));
            }
            let boundary = cx.inventory("boundary");
            let problems = boundary.all_problems();
            if !problems.is_empty() {
                return cx.fail(exit::PARTIAL, refusal_text(&problems), Some(&progress));
            }
            targets = boundary.targets().cloned().collect();
            if round == 2 && !targets.is_empty() {
                // A client respawning faster than we stop: install anyway and
                // retire what is old afterwards.
                cx.warnings.push(format!(
                    "servers keep respawning (pids {}); they are retired after the install",
                    join(&targets.iter().filter_map(|t| t.pid).collect::<Vec<_>>())
                ));
            }
        }
        clean::stale_files(&inv.stale, &mut progress.removed, &mut cx.warnings, cx.ui);
    }

    // The install itself.
    let argv = install::install_args(&spec, prepared);
    cx.ui.event("installing", json!({"argv": argv}));
    let install_started = Instant::now();
    // Never cut short: stopped servers and a half-written environment are
    // worse than a finished install.
    let uv_install = install::Uv {
        interruptible: false,
        ..uv.clone()
    };
    let mut result = uv_install.run("uv tool install", &argv, &[], s.uv_timeout);
    // The offline install needs what the prepare put in the cache; should uv
    // still find something missing, the network is the lesser evil now that
    // the servers are down.
    if prepared {
        if let Err(UvError::Failed { stderr, .. }) = &result {
            let lower = stderr.to_lowercase();
            if lower.contains("offline") || lower.contains("network") {
                let online = install::online_retry_args(&spec);
                cx.warnings.push(format!(
                    "the offline install missed the cache; retried online: uv {}",
                    online.join(" ")
                ));
                cx.ui
                    .event("installing", json!({"argv": online, "retry": true}));
                result = uv_install.run("uv tool install", &online, &[], s.uv_timeout);
            }
        }
    }
    let installed_ticks = sys::boot_ticks_now();
    let window_ms = progress
        .first_signal
        .map(|t| t.elapsed().as_secs_f64() * 1000.0);
    cx.doc.insert(
        "install_ms".into(),
        json!((install_started.elapsed().as_secs_f64() * 1000.0).round()),
    );
    cx.doc
        .insert("downtime_ms".into(), json!(window_ms.map(|w| w.round())));
    if let Err(e) = result {
        if let Some(err) = e.stderr() {
            cx.doc.insert("stderr".into(), json!(err));
            if !cx.ui.json {
                eprintln!("\nuv tool install failed:\n{err}");
            }
        }
        let restored = backup.as_ref().map(|b| b.restore());
        let tail = match restored {
            Some(Ok(())) => {
                cx.doc.insert("rolled_back".into(), json!(true));
                cx.ui.event("rolled_back", json!({}));
                " Rolled back: the previous installation is restored.".to_string()
            }
            Some(Err(r)) => {
                cx.doc.insert("rolled_back".into(), json!(false));
                format!(" Rollback failed too ({r}); reinstall memtomem by hand.")
            }
            None => String::new(),
        };
        return cx.fail(exit::INSTALL_FAILED, format!("{e}.{tail}"), Some(&progress));
    }
    let _discard = backup.map(|b| b.discard_in_background());
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

    // Proof that the new entry point starts.
    let mut verified = Value::Null;
    if !s.no_verify {
        if let Some(bin) = cx.install.bin_dir.clone() {
            match verify::entry_point_starts(&bin, &s.paths.home) {
                Ok(v) => verified = json!(v),
                Err(msg) => {
                    cx.doc.insert("reinstalled".into(), json!(spec));
                    return cx.fail(exit::VERIFY_FAILED, msg, Some(&progress));
                }
            }
        }
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
    d.insert("prepared_install".into(), json!(prepared));
    d.insert("stops".into(), json!(progress.records));
    if !verified.is_null() {
        d.insert("verified".into(), verified);
    }
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
    cx.ui.say(format!("Reinstalled {spec}{window}."));
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
    if plan.prepare {
        lines.push(format!(
            "  Prepare first: resolve and download {} while servers still run",
            plan.spec
        ));
    }
    lines.push(format!("  Reinstall: {}", plan.install_argv().join(" ")));
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
