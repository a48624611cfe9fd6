//! The upgrade, stage by stage: discover → plan → stage → prove → stop →
//! clean → switch → verify. Only this module sequences side effects.

mod report;
mod stage;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Map};

use crate::cli::Settings;
use crate::discover::{self, Installation};
use crate::error::UpgradeError;
use crate::install;
use crate::plan;
use crate::stop::{self, RealOps, StopConfig, StopRecord};
use crate::sys;
use crate::ui::{Confirm, Ui};
use crate::{clean, exit, receipt, txn, verify};
use report::{join, refusal_text, render_plan, Ctx, Progress};
use stage::{schema_allows, stage_and_prove, up_to_date};

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
    match pipeline(&mut cx) {
        Ok(code) | Err(code) => code,
    }
}

/// The job, step by step. `Err` carries the exit code of a report already
/// written; every step that fails after staging discards or rolls back.
fn pipeline(cx: &mut Ctx) -> Result<u8, u8> {
    let s = cx.s;
    let r = resolve(cx)?;
    // The requested version is already installed: nothing to stop or change.
    if let (Some(want), Some(have), false) = (&s.version, &r.installed_version, s.reinstall) {
        if want == have {
            return Ok(up_to_date(cx, have));
        }
    }
    let inv = cx.inventory("initial");
    let plan = plan::plan(&inv, r.main_req.pep508(), r.argv.clone(), s.skip_pkill);
    render_plan(
        cx,
        &plan,
        &r.extras,
        r.extras_source,
        s.extras.is_some(),
        r.installed_version.as_deref(),
    );
    if s.dry_run {
        let uv_missing = r.uv_missing.clone();
        return Ok(report::dry_run(
            cx,
            &plan,
            &inv,
            &r.extras,
            uv_missing.as_deref(),
        ));
    }
    confirm(cx, &inv)?;
    let (Some(uv), Some(layout)) = (r.uv.as_ref(), r.layout.as_ref()) else {
        unreachable!("uv and the layout are resolved for real runs");
    };
    if let Some(code) = cx.interrupted_before_change() {
        return Err(code);
    }
    let spec = plan.spec.clone();

    // Stage and prove while the old servers still serve: a release that
    // cannot be installed or does not run fails here, and nothing is stopped.
    let mut staged = stage_and_prove(cx, uv, layout, &plan.argv, &spec)?;
    if r.installed_version.as_deref() == Some(staged.journal.version.as_str()) && !s.reinstall {
        txn::discard(&layout.work(), &staged.journal);
        return Ok(up_to_date(cx, &staged.journal.version));
    }
    ready_to_switch(cx, layout, &mut staged, &r)?;
    let version = staged.journal.version.clone();

    let cfg = StopConfig {
        grace: s.grace,
        kill_wait: Duration::from_secs(3),
    };
    let mut progress = Progress::default();
    // Last point at which an interrupt is honoured at once.
    if let Some(code) = cx.interrupted_before_change() {
        txn::discard(&layout.work(), &staged.journal);
        return Err(code);
    }
    if let Err(code) = stop_servers(cx, &plan, &inv, &mut progress, cfg) {
        // Servers may be down, but the installation was never touched.
        txn::discard(&layout.work(), &staged.journal);
        return Err(code);
    }
    crate::sys::fault_point("stopped");
    let switched = switch(cx, layout, &mut staged, &progress)?;
    cx.ui.event(
        "installed",
        json!({"spec": spec, "downtime_ms": switched.downtime_ms}),
    );
    let retired = match s.skip_pkill {
        true => Ok(()),
        false => retire_old_generation(cx, switched.installed_ticks, &spec, &mut progress, cfg),
    };
    // The old env's removal overlapped the retirement; it ends before we do,
    // whatever the outcome, so nothing is left in uv's tool dir.
    if let Some(h) = switched.removal {
        let _ = h.join();
    }
    retired?;
    Ok(report::success(
        cx,
        &plan,
        &progress,
        &r.extras,
        r.installed_version.as_deref(),
        &version,
        switched.downtime_ms,
    ))
}

/// What the run works on: uv, its tool dir (locked, recovered), and the
/// user's install as uv's receipt records it.
struct Resolved {
    uv: Option<install::Uv>,
    layout: Option<txn::Layout>,
    old_receipt: Option<receipt::Receipt>,
    installed_version: Option<String>,
    extras: Vec<String>,
    extras_source: &'static str,
    main_req: receipt::Requirement,
    argv: Vec<String>,
    /// Why uv could not be found (dry runs go on without it).
    uv_missing: Option<String>,
    _tool_lock: Option<txn::ToolLock>,
}

fn resolve(cx: &mut Ctx) -> Result<Resolved, u8> {
    let s = cx.s;
    // uv first: without it nothing may be stopped.
    let mut uv_missing = None;
    let uv = match install::Uv::locate(s.uv.as_deref(), s.path_var.as_deref(), s.uv_timeout) {
        Ok(uv) => Some(uv),
        Err(e) if s.dry_run => {
            uv_missing = Some(e.to_string());
            None
        }
        Err(e) => {
            let msg = format!("{e} Nothing was stopped.");
            return Err(cx.fail(UpgradeError::Install(msg), None));
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
                return Err(cx.fail(UpgradeError::Install(msg), None));
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
            return Err(cx.fail(UpgradeError::Install(msg), None));
        }
    };
    // Serialise on uv's tool dir with uv's own lock: two upgrades, or an
    // upgrade and a `uv tool install`, never interleave, whatever their
    // runtime dirs.
    let tool_lock = match (&layout, s.dry_run) {
        (Some(l), false) => match txn::lock_tool_dir(&l.tool_dir) {
            Ok(lock) => Some(lock),
            Err(msg) => return Err(cx.fail(UpgradeError::Refused(msg), None)),
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
                Err(e) => return Err(cx.fail(UpgradeError::Refused(e), None)),
            }
        }
    }
    // What the user installed and how: uv's receipt.
    let old_receipt = match layout.as_ref().map(|l| l.env()).filter(|e| e.exists()) {
        Some(env) => match receipt::read(&env) {
            Ok(r) => Some(r),
            Err(e) => {
                let msg = format!("{e}; nothing was changed");
                return Err(cx.fail(UpgradeError::Refused(msg), None));
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
        return Err(cx.fail(UpgradeError::Usage(msg), None));
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
    let argv = receipt::install_args(old_receipt.as_ref(), &main_req).map_err(|e| {
        cx.fail(
            UpgradeError::Refused(format!("{e}; nothing was changed")),
            None,
        )
    })?;
    let installed_version = layout
        .as_ref()
        .and_then(|l| install::installed_version(&l.tool_dir));
    Ok(Resolved {
        uv,
        layout,
        old_receipt,
        installed_version,
        extras,
        extras_source,
        main_req,
        argv,
        uv_missing,
        _tool_lock: tool_lock,
    })
}

/// Refuse an incomplete inventory; ask on a terminal unless `-y`.
fn confirm(cx: &mut Ctx, inv: &discover::Inventory) -> Result<(), u8> {
    let problems = inv.all_problems();
    if !problems.is_empty() {
        return Err(cx.fail(UpgradeError::Refused(refusal_text(&problems)), None));
    }
    if cx.s.yes {
        return Ok(());
    }
    match cx.ui.confirm("Proceed with upgrade?") {
        Confirm::Yes => Ok(()),
        Confirm::No => {
            cx.doc.insert("ok".into(), json!(true));
            cx.doc.insert("cancelled".into(), json!(true));
            cx.ui.say("Cancelled — nothing was changed.");
            Err(cx.finish(exit::OK))
        }
        Confirm::Interrupted => {
            let sig = crate::interrupt::requested().map_or("a signal", crate::interrupt::name);
            let msg = format!("interrupted by {sig} at the prompt; nothing was changed");
            Err(cx.fail(UpgradeError::Interrupted(msg), None))
        }
        Confirm::NotATerminal => {
            let msg =
                "Refusing to upgrade without confirmation in a non-interactive shell. Pass -y.";
            Err(cx.fail(UpgradeError::Refused(msg.into()), None))
        }
    }
}

/// Checks that need the staged release, then the journal entry that the
/// switch relies on. Any failure discards the staging; nothing was stopped.
fn ready_to_switch(
    cx: &mut Ctx,
    layout: &txn::Layout,
    staged: &mut txn::Staged,
    r: &Resolved,
) -> Result<(), u8> {
    let refuse = |cx: &mut Ctx, staged: &txn::Staged, err: UpgradeError| {
        txn::discard(&layout.work(), &staged.journal);
        cx.fail(err, None)
    };
    if let (Some(target), Some(installed)) =
        (cx.s.version.as_deref(), r.installed_version.as_deref())
    {
        if let Err(msg) = schema_allows(cx, layout, staged, installed, target) {
            return Err(refuse(cx, staged, UpgradeError::Refused(msg)));
        }
    }
    match txn::plan_links(layout, r.old_receipt.as_ref(), &staged.receipt) {
        Ok((before, after)) => {
            staged.journal.old_links = before;
            staged.journal.new_links = after;
        }
        Err(e) => {
            let err = UpgradeError::Refused(format!("{e}; nothing was changed"));
            return Err(refuse(cx, staged, err));
        }
    }
    if let Err(e) = txn::arm(&layout.work(), &mut staged.journal) {
        let msg = format!("{e}; nothing was changed");
        return Err(refuse(cx, staged, UpgradeError::Install(msg)));
    }
    Ok(())
}

/// Stop, clean, and stop again anything that respawned meanwhile (or, with
/// `--skip-pkill`, name what keeps running old code).
fn stop_servers(
    cx: &mut Ctx,
    plan: &plan::Plan,
    inv: &discover::Inventory,
    progress: &mut Progress,
    cfg: StopConfig,
) -> Result<(), u8> {
    if cx.s.skip_pkill {
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
        return Ok(());
    }
    let mut targets = plan.stops.clone();
    for round in 0..3 {
        if targets.is_empty() {
            break;
        }
        if progress.first_signal.is_none() {
            progress.first_signal = Some(Instant::now());
            progress.first_signal_ticks = sys::boot_ticks_now();
        }
        for t in &targets {
            if t.ppid > 1
                && !cx.protected.contains(&t.ppid)
                && !progress.launchers.contains(&t.ppid)
            {
                progress.launchers.push(t.ppid);
            }
        }
        let recs = stop_instances(cx, &targets, cfg);
        progress.last_exit = Some(Instant::now());
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
            return Err(cx.fail(UpgradeError::Partial(failed.join("; ")), Some(progress)));
        }
        let boundary = cx.inventory("boundary");
        let problems = boundary.all_problems();
        if !problems.is_empty() {
            let err = UpgradeError::Partial(refusal_text(&problems));
            return Err(cx.fail(err, Some(progress)));
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
    Ok(())
}

/// The switch is done: when (for the generation split), how long the
/// servers were down, and the removal of the old env still running.
struct Switched {
    installed_ticks: u64,
    downtime_ms: Option<f64>,
    removal: Option<std::thread::JoinHandle<()>>,
}

/// Under memtomem's lifecycle barrier: one exchange, the links, the
/// in-place check; rolled back (the exchange back) if any of it fails.
fn switch(
    cx: &mut Ctx,
    layout: &txn::Layout,
    staged: &mut txn::Staged,
    progress: &Progress,
) -> Result<Switched, u8> {
    let switch_started = Instant::now();
    let runtime_dirs: Vec<PathBuf> =
        cx.s.paths
            .runtime_dirs()
            .into_iter()
            .map(|d| d.path)
            .collect();
    let barrier = txn::take_barrier(&runtime_dirs, Duration::from_secs(1));
    for m in &barrier.missed {
        cx.warnings.push(format!(
            "{} could not be locked exclusively in time (a server restarted meanwhile); switched without the barrier",
            m.display()
        ));
    }
    let work = layout.work();
    let switched = txn::switch(&staged.journal).and_then(|()| txn::check_in_place(&staged.journal));
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
        let err = UpgradeError::Install(format!("{e}.{tail}"));
        return Err(cx.fail(err, Some(progress)));
    }
    drop(barrier);
    let in_place = Instant::now();
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
    let ms = |from: Instant| {
        (in_place.duration_since(from).as_secs_f64() * 1000.0 * 100.0).round() / 100.0
    };
    let switch_ms = ms(switch_started);
    // The window a host sees: from the last old server's exit to the new
    // env in place (the boundary inventory included).
    let exit_to_switch_ms = progress.last_exit.map(ms);
    let downtime_ms = progress
        .first_signal
        .map(|t| t.elapsed().as_secs_f64() * 1000.0);
    cx.doc.insert("switch_ms".into(), json!(switch_ms));
    cx.doc
        .insert("exit_to_switch_ms".into(), json!(exit_to_switch_ms));
    cx.doc
        .insert("downtime_ms".into(), json!(downtime_ms.map(|w| w.round())));
    cx.ui.event(
        "switched",
        json!({"version": staged.journal.version, "switch_ms": switch_ms, "exit_to_switch_ms": exit_to_switch_ms, "downtime_ms": downtime_ms}),
    );
    Ok(Switched {
        installed_ticks: sys::boot_ticks_now(),
        downtime_ms,
        removal,
    })
}

/// Retire whatever of the old generation is still (or again) running, and
/// refuse to call the job done while old code runs.
fn retire_old_generation(
    cx: &mut Ctx,
    installed_ticks: u64,
    spec: &str,
    progress: &mut Progress,
    cfg: StopConfig,
) -> Result<(), u8> {
    let incomplete = |cx: &mut Ctx| {
        cx.doc.insert("reinstalled".into(), json!(spec));
        cx.doc.insert("cleanup_complete".into(), json!(false));
    };
    for _ in 0..3 {
        let inv = cx.inventory("post-install");
        let (old, new) = verify::split_generations(&inv, installed_ticks);
        // A process that started after the install runs the new code,
        // whatever else is unclear about it.
        let problems = verify::old_generation_problems(&inv, installed_ticks);
        if !problems.is_empty() {
            incomplete(cx);
            let msg = format!(
                "{}\nThe package was reinstalled, but process generation cleanup is incomplete: stop and restart every memtomem server and `mm web` manually.",
                refusal_text(&problems)
            );
            return Err(cx.fail(UpgradeError::Verify(msg), Some(progress)));
        }
        if old.is_empty() {
            let seen: Vec<sys::Pid> = inv.instances.iter().filter_map(|i| i.pid).collect();
            if respawn_registered(cx, progress, &seen, installed_ticks) {
                continue;
            }
            // What `status` would say of the survivors: started after the
            // install, but still mapping deleted files of the installation
            // or running another installation's interpreter.
            let stale: Vec<String> = new
                .iter()
                .filter_map(|i| {
                    let (stale, ev) =
                        crate::status::classify(i.pid?, 0.0, None, cx.install.env_dir.as_deref());
                    stale.then(|| format!("pid {}: {}", i.pid.unwrap_or(0), ev.join("; ")))
                })
                .collect();
            if !stale.is_empty() {
                incomplete(cx);
                let msg = format!(
                    "memtomem {spec} is installed, but stale code still runs: {}",
                    stale.join(" | ")
                );
                return Err(cx.fail(UpgradeError::Verify(msg), Some(progress)));
            }
            return Ok(());
        }
        let recs = stop_instances(cx, &old, cfg);
        progress.records.extend(recs);
        clean::after_stop(
            &old,
            &progress.records,
            &mut progress.removed,
            &mut cx.warnings,
            cx.ui,
        );
    }
    let final_inv = cx.inventory("final");
    let (remaining, _) = verify::split_generations(&final_inv, installed_ticks);
    if remaining.is_empty() {
        return Ok(());
    }
    incomplete(cx);
    cx.doc.insert("remaining".into(), json!(remaining));
    let list = remaining.iter().filter_map(|i| i.pid).collect::<Vec<_>>();
    let msg = format!(
        "memtomem {spec} is installed, but old-generation pid {} still runs; stop it manually",
        join(&list)
    );
    Err(cx.fail(UpgradeError::Verify(msg), Some(progress)))
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

/// How long a respawn still starting up at the switch may take to register
/// (a real memtomem-server takes ~1.5 s of imports to write its pid file).
const RESPAWN_SETTLE: Duration = Duration::from_secs(3);

/// A child that a stopped server's launcher (its MCP host) started between
/// our first signal and the switch, and that no inventory has seen: a
/// respawn of the old code still starting up, not yet provably a server.
/// Wait (bounded) until it registers — then `true`, and the caller retires
/// it with the usual proofs — or exits. One that does neither is named in
/// a warning; it is never signalled without proof.
fn respawn_registered(
    cx: &mut Ctx,
    progress: &Progress,
    seen: &[sys::Pid],
    installed_ticks: u64,
) -> bool {
    use crate::sys::Processes;
    let stopped: Vec<sys::Pid> = progress.records.iter().map(|r| r.pid).collect();
    let pending = |table: &[sys::ProcStat]| -> Vec<sys::Pid> {
        table
            .iter()
            .filter(|p| progress.launchers.contains(&p.ppid))
            .filter(|p| p.state != sys::RunState::Zombie)
            .filter(|p| (progress.first_signal_ticks..=installed_ticks).contains(&p.start_ticks))
            .filter(|p| !seen.contains(&p.pid) && !stopped.contains(&p.pid))
            .filter(|p| !cx.protected.contains(&p.pid))
            .map(|p| p.pid)
            .collect()
    };
    if progress.launchers.is_empty() || pending(&sys::real().table()).is_empty() {
        return false;
    }
    let deadline = Instant::now() + RESPAWN_SETTLE;
    loop {
        let waiting = pending(&sys::real().table());
        if waiting.is_empty() {
            return false;
        }
        let inv = discover::discover(&cx.scope(true));
        if inv
            .instances
            .iter()
            .any(|i| i.pid.is_some_and(|p| waiting.contains(&p)))
        {
            return true;
        }
        if Instant::now() >= deadline {
            cx.warnings.push(format!(
                "pid {} started by the host of a stopped server during the upgrade never registered as a memtomem server within {}s; if it is one, it runs the previous version",
                join(&waiting),
                RESPAWN_SETTLE.as_secs()
            ));
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
