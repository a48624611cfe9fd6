//! `mm-upgrade reap`: stop the orphans — memtomem servers whose MCP host is
//! gone (reparented to init or a subreaper, [`crate::hosts`]). Nothing will
//! ever talk to them again, but they keep the store open and accumulate.
//! Only proven targets ([`crate::proof`]: the lock of a pid file or marker,
//! or this installation's interpreter on an entry point) are stopped, by the
//! upgrade's stop engine, with the upgrade's report style: a plan first, a
//! prompt or `-y`, `--dry-run`, `--json`. A server that has a host is never
//! touched; an inventory problem elsewhere does not block the orphans (it is
//! a warning: we stop only what is proven).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::cli::{path_env, Common, ReapArgs};
use crate::discover::{self, Instance, Scope};
use crate::stop::{self, StopConfig};
use crate::sys::Pid;
use crate::ui::{Confirm, Ui};
use crate::{clean, exit, hosts, plan, sys};

/// What a reap found: the orphans it may stop, with how each was launched.
pub struct Found {
    pub orphans: Vec<(Instance, hosts::Launch)>,
    pub warnings: Vec<String>,
}

/// The proven instances of `inv` whose host is gone.
pub fn orphans_in(
    os: &dyn sys::Processes,
    inv: &discover::Inventory,
) -> Vec<(Instance, hosts::Launch)> {
    inv.targets()
        .filter_map(|i| {
            let l = hosts::launch_of(os, i.pid?);
            l.orphan.then(|| (i.clone(), l))
        })
        .collect()
}

fn orphan_json(i: &Instance, l: &hosts::Launch) -> Value {
    json!({"pid": i.pid, "role": i.role, "source": i.source, "via": l.via, "evidence": i.evidence})
}

pub fn run(common: &Common, args: &ReapArgs) -> u8 {
    let mut ui = match Ui::new(common.json, None) {
        Ok(ui) => ui,
        Err(e) => {
            crate::ui::error_line(e);
            return exit::INTERNAL;
        }
    };
    // Ctrl-C at the prompt or before the stop ends the run with nothing
    // stopped (exit 130, as the upgrade); once the stop began it finishes.
    crate::interrupt::install();
    let mut doc = Map::new();
    let mut warnings = Vec::new();
    let install = crate::status::installation(common, &mut warnings);
    // Never beside an upgrade or a `uv tool` command: uv's own lock.
    let _lock = match install
        .tool_dir()
        .filter(|t| t.is_absolute() && !args.dry_run)
    {
        Some(t) => match crate::txn::lock_tool_dir(t) {
            Ok(l) => Some(l),
            Err(msg) => return finish(&mut ui, doc, warnings, Err(msg), exit::REFUSED),
        },
        None => None,
    };
    let env = path_env(common);
    let protected = sys::self_and_ancestors();
    let inv = discover::discover_stable(
        &Scope {
            env: &env,
            install: &install,
            protected: &protected,
            scan_processes: true,
        },
        &|d| std::thread::sleep(d),
    );
    warnings.extend(inv.warnings.iter().cloned());
    warnings.extend(
        inv.all_problems()
            .into_iter()
            .map(|p| format!("not an orphan we can prove, left alone: {p}")),
    );
    let found = orphans_in(sys::real(), &inv);
    let pids: Vec<Pid> = found.iter().filter_map(|(i, _)| i.pid).collect();
    doc.insert(
        "orphans".into(),
        json!(found
            .iter()
            .map(|(i, l)| orphan_json(i, l))
            .collect::<Vec<_>>()),
    );
    for line in plan_lines(&found, args.grace) {
        ui.say(line);
    }
    if args.dry_run || found.is_empty() {
        doc.insert("dry_run".into(), json!(args.dry_run));
        doc.insert("would_kill".into(), json!(pids));
        return finish(&mut ui, doc, warnings, Ok(()), exit::OK);
    }
    if !args.yes {
        match ui.confirm("Stop them?") {
            Confirm::Yes => {}
            Confirm::No => {
                doc.insert("cancelled".into(), json!(true));
                ui.say("Cancelled — nothing was stopped.");
                return finish(&mut ui, doc, warnings, Ok(()), exit::OK);
            }
            Confirm::Interrupted => {}
            Confirm::NotATerminal => {
                let msg = "Refusing to stop processes without confirmation in a non-interactive shell. Pass -y.";
                return finish(&mut ui, doc, warnings, Err(msg.into()), exit::REFUSED);
            }
        }
    }
    if let Some(sig) = crate::interrupt::requested() {
        let msg = format!(
            "interrupted by {} before anything was stopped",
            crate::interrupt::name(sig)
        );
        return finish(&mut ui, doc, warnings, Err(msg), exit::INTERRUPTED);
    }
    let orphans: Vec<Instance> = found.into_iter().map(|(i, _)| i).collect();
    let targets = plan::stop_targets(&orphans, &protected);
    let cfg = StopConfig {
        grace: args.grace,
        kill_wait: Duration::from_secs(3),
    };
    let records = stop::stop_all_reported(&mut ui, &targets, cfg);
    let mut removed: Vec<PathBuf> = Vec::new();
    clean::after_stop(&orphans, &records, &mut removed, &mut warnings, &mut ui);
    let killed: Vec<Pid> = records
        .iter()
        .filter(|r| r.was_signalled())
        .map(|r| r.pid)
        .collect();
    let failed: Vec<String> = records.iter().filter_map(|r| r.error.clone()).collect();
    doc.insert("killed".into(), json!(killed));
    doc.insert(
        "removed".into(),
        json!(removed
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()),
    );
    doc.insert("stops".into(), json!(records));
    if !killed.is_empty() {
        ui.say(format!(
            "\nStopped {} orphan(s): pid {}.",
            killed.len(),
            crate::ui::pid_list(&killed)
        ));
    }
    for r in &removed {
        ui.say(format!("Removed {}.", r.display()));
    }
    if failed.is_empty() {
        finish(&mut ui, doc, warnings, Ok(()), exit::OK)
    } else {
        finish(
            &mut ui,
            doc,
            warnings,
            Err(failed.join("; ")),
            exit::PARTIAL,
        )
    }
}

/// The plan in words (nothing under `--json`: the caller's `Ui` decides).
pub fn plan_lines(found: &[(Instance, hosts::Launch)], grace: Duration) -> Vec<String> {
    if found.is_empty() {
        return vec!["No orphaned memtomem server: nothing to reap.".into()];
    }
    let mut out = vec![format!(
        "memtomem reap plan: {} orphan(s), their MCP host is gone",
        found.len()
    )];
    for (i, l) in found {
        let src = i
            .source
            .as_ref()
            .map_or("no pid file".into(), |p| p.display().to_string());
        out.push(format!(
            "  Stop orphaned {} (pid {}, {src})",
            i.role.label(),
            i.pid.unwrap_or(0)
        ));
        for e in &i.evidence {
            out.push(format!("      evidence: {e}"));
        }
        out.push(format!("      {}", hosts::words::launch_line(l)));
    }
    out.push(format!(
        "  Wait up to {}s for graceful exit, then SIGKILL; remove their pid files under their locks",
        grace.as_secs_f64()
    ));
    out
}

/// The JSON document (`ok`, `error`, `warnings`, `exit_code` around what
/// the run put in `doc`), or the error and warnings in words.
fn finish(
    ui: &mut Ui,
    mut doc: Map<String, Value>,
    warnings: Vec<String>,
    outcome: Result<(), String>,
    code: u8,
) -> u8 {
    let mut out = Map::new();
    out.insert("ok".into(), json!(outcome.is_ok()));
    if let Err(e) = &outcome {
        out.insert("error".into(), json!(e));
        if !ui.json {
            ui.error(e);
        }
    }
    out.append(&mut doc);
    out.insert("warnings".into(), json!(warnings));
    out.insert("exit_code".into(), json!(code));
    ui.finish_json(&out);
    if !ui.json {
        for w in &warnings {
            ui.warn(w);
        }
    }
    // The closing line on a terminal, as the upgrade's.
    ui.finished(&out);
    code
}
