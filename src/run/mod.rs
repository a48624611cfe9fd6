//! The upgrade, stage by stage: discover → plan → stage → prove → stop →
//! clean → switch → verify. Only this module sequences side effects.

mod hosts;
mod others;
mod processes;
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
use crate::stop::StopConfig;
use crate::sys;
use crate::ui::{Confirm, Ui};
use crate::{exit, receipt, txn};
use processes::{retire_old_generation, stop_servers};
use report::{refusal_text, render_plan, Ctx, Progress};
use stage::{schema_allows, stage_and_prove, up_to_date};

pub fn upgrade(s: &Settings, ui: &mut Ui) -> u8 {
    // The prefilters of the first inventory's scan and of the survey of
    // other installations, read while uv is asked where its tools live (two
    // process starts) rather than after.
    sys::read_ahead(crate::foreign::needle(&s.paths));
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
    let mut inv = cx.inventory("initial");
    // Windows: nothing can be stopped, so a live server refuses the run.
    crate::platform::gate(&mut inv, crate::platform::Termination::this_os());
    let plan = plan::plan(&inv, r.main_req.pep508(), r.argv.clone(), s.skip_pkill);
    render_plan(
        cx,
        &plan,
        &r.extras,
        r.extras_source,
        s.extras.is_some(),
        r.installed_version.as_deref(),
    );
    others::in_plan(cx, &inv);
    // The tables read ahead were for the passes above alone.
    sys::discard_read_ahead();
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
    if !s.skip_pkill {
        progress.clients = hosts::settle(cx, &progress, switched.installed_ticks, &version);
    }
    // Another installation's server older than this version: old code remains.
    others::after_upgrade(cx, &spec, &version, &progress)?;
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
