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

    // uv first: without it nothing may be stopped.
    let uv = match install::Uv::locate(s.uv.as_deref(), s.path_var.as_deref(), s.uv_timeout) {
        Ok(uv) => Some(uv),
        Err(e) if s.dry_run => {
            cx.warnings.push(e.to_string());
            None
        }
        Err(e) => {
            let msg = format!("{e} Nothing was stopped.");
            return cx.fail(UpgradeError::Install(msg), None);
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
                return cx.fail(UpgradeError::Install(msg), None);
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
            return cx.fail(UpgradeError::Install(msg), None);
        }
    };

    // Serialise on uv's tool dir with uv's own lock: two upgrades, or an
    // upgrade and a `uv tool install`, never interleave, whatever their
    // runtime dirs.
    let _tool_lock = match (&layout, s.dry_run) {
        (Some(l), false) => match txn::lock_tool_dir(&l.tool_dir) {
            Ok(lock) => Some(lock),
            Err(msg) => return cx.fail(UpgradeError::Refused(msg), None),
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
                Err(e) => return cx.fail(UpgradeError::Refused(e), None),
            }
        }
    }
    // What the user installed and how: uv's receipt.
    let old_receipt = match layout.as_ref().map(|l| l.env()).filter(|e| e.exists()) {
        Some(env) => match receipt::read(&env) {
            Ok(r) => Some(r),
            Err(e) => {
                let msg = format!("{e}; nothing was changed");
                return cx.fail(UpgradeError::Refused(msg), None);
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
        return cx.fail(UpgradeError::Usage(msg), None);
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
        Err(e) => {
            return cx.fail(
                UpgradeError::Refused(format!("{e}; nothing was changed")),
                None,
            )
        }
    };
    let installed_version = layout
        .as_ref()
        .and_then(|l| install::installed_version(&l.tool_dir));

    // The requested version is already installed: nothing to stop or change.
    if let (Some(want), Some(have), false) = (&s.version, &installed_version, s.reinstall) {
        if want == have {
            return up_to_date(&mut cx, have);
        }
    }
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
        return cx.fail(UpgradeError::Refused(refusal_text(&problems)), None);
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
                    UpgradeError::Interrupted(format!(
                        "interrupted by {sig} at the prompt; nothing was changed"
                    )),
                    None,
                );
            }
            Confirm::NotATerminal => return cx.fail(
                UpgradeError::Refused(
                    "Refusing to upgrade without confirmation in a non-interactive shell. Pass -y."
                        .into(),
                ),
                None,
            ),
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
    if installed_version.as_deref() == Some(staged.journal.version.as_str()) && !s.reinstall {
        txn::discard(&layout.work(), &staged.journal);
        return up_to_date(&mut cx, &staged.journal.version);
    }
    let version = Some(staged.journal.version.clone());
    let prev = installed_version.clone();
    if let (Some(target), Some(installed)) = (s.version.as_deref(), prev.as_deref()) {
        if let Err(msg) = schema_allows(&cx, &layout, &staged, installed, target) {
            txn::discard(&layout.work(), &staged.journal);
            return cx.fail(UpgradeError::Refused(msg), None);
        }
    }
    match txn::plan_links(&layout, old_receipt.as_ref(), &staged.receipt) {
        Ok((before, after)) => {
            staged.journal.old_links = before;
            staged.journal.new_links = after;
        }
        Err(e) => {
            txn::discard(&layout.work(), &staged.journal);
            return cx.fail(
                UpgradeError::Refused(format!("{e}; nothing was changed")),
                None,
            );
        }
    }
    if let Err(e) = txn::journal::store(&layout.work(), &staged.journal) {
        txn::discard(&layout.work(), &staged.journal);
        let msg = format!("cannot write the journal: {e}; nothing was changed");
        return cx.fail(UpgradeError::Install(msg), None);
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
                return cx.fail(UpgradeError::Partial(failed.join("; ")), Some(&progress));
            }
            let boundary = cx.inventory("boundary");
            let problems = boundary.all_problems();
            if !problems.is_empty() {
                txn::discard(&layout.work(), &staged.journal);
                return cx.fail(
                    UpgradeError::Partial(refusal_text(&problems)),
                    Some(&progress),
                );
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
        return cx.fail(
            UpgradeError::Install(format!("{e}.{tail}")),
            Some(&progress),
        );
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
                return cx.fail(UpgradeError::Verify(msg), Some(&progress));
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
                    return cx.fail(UpgradeError::Verify(msg), Some(&progress));
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
        return cx.fail(UpgradeError::Verify(msg), Some(&progress));
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
