//! The processes side of the run: stopping the servers (and whatever
//! respawns before the switch), and retiring the old generation after it.

use std::time::{Duration, Instant};

use serde_json::json;

use super::report::{refusal_text, Ctx, Progress};
use crate::discover;
use crate::error::UpgradeError;
use crate::plan;
use crate::stop::{self, StopConfig, StopRecord};
use crate::sys;
use crate::ui::pid_list;
use crate::{clean, verify};

/// Stop, clean, and stop again anything that respawned meanwhile (or, with
/// `--skip-pkill`, name what keeps running old code).
pub(super) fn stop_servers(
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
        progress
            .hosts
            .note(sys::real(), targets.iter().filter_map(|t| t.pid));
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
                pid_list(&targets.iter().filter_map(|t| t.pid).collect::<Vec<_>>())
            ));
        }
    }
    clean::stale_files(&inv.stale, &mut progress.removed, &mut cx.warnings, cx.ui);
    Ok(())
}

/// Retire whatever of the old generation is still (or again) running, and
/// refuse to call the job done while old code runs.
pub(super) fn retire_old_generation(
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
                    let (_, ev) =
                        crate::status::classify(i.pid?, 0.0, None, cx.install.env_dir.as_deref());
                    // Another installation's server is judged by its own
                    // version, with the configs that launch it (run/others.rs).
                    let ev: Vec<String> = ev
                        .into_iter()
                        .filter(|e| !e.starts_with(crate::status::OTHER_INSTALLATION))
                        .collect();
                    (!ev.is_empty())
                        .then(|| format!("pid {}: {}", i.pid.unwrap_or(0), ev.join("; ")))
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
        progress
            .hosts
            .note(sys::real(), old.iter().filter_map(|t| t.pid));
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
        pid_list(&list)
    );
    Err(cx.fail(UpgradeError::Verify(msg), Some(progress)))
}

fn stop_instances(
    cx: &mut Ctx,
    instances: &[discover::Instance],
    cfg: StopConfig,
) -> Vec<StopRecord> {
    let targets = plan::stop_targets(instances, &cx.protected);
    stop::stop_all_reported(cx.ui, &targets, cfg)
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
        // Registered with its proofs (pid file written, lock held), not
        // merely seen in its startup gap: the caller's next inventory must
        // find it provable, or its retries are spent on a process it may
        // not stop yet.
        let inv = discover::discover(&cx.scope(true));
        if inv
            .targets()
            .any(|i| i.pid.is_some_and(|p| waiting.contains(&p)))
        {
            return true;
        }
        if Instant::now() >= deadline {
            cx.warnings.push(format!(
                "pid {} started by the host of a stopped server during the upgrade never registered as a memtomem server within {}s; if it is one, it runs the previous version",
                pid_list(&waiting),
                RESPAWN_SETTLE.as_secs()
            ));
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
