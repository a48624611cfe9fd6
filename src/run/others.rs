//! Servers of another installation in the upgrade report ([`crate::foreign`]):
//! the plan names them, and after the switch one still on a version older
//! than the one installed means old code remains (exit 6), with the host
//! config entries to change.

use serde_json::json;

use crate::discover::{self, Inventory};
use crate::error::UpgradeError;
use crate::foreign::{self, Survey};
use crate::sys;

use super::report::{Ctx, Progress};

fn survey(cx: &mut Ctx, inv: &Inventory, target: Option<&str>) -> Survey {
    let sv = foreign::survey(sys::real(), inv, &cx.scope(true), target);
    for w in &sv.warnings {
        if !cx.warnings.contains(w) {
            cx.warnings.push(w.clone());
        }
    }
    sv
}

/// The plan: each server of another installation, against the version asked for.
pub(super) fn in_plan(cx: &mut Ctx, inv: &Inventory) {
    let target = cx.s.version.clone();
    let sv = survey(cx, inv, target.as_deref());
    if sv.others.is_empty() {
        return;
    }
    for l in foreign::lines(&sv.others, target.as_deref()) {
        cx.ui.say(l);
    }
    cx.doc
        .insert("other_installations".into(), json!(sv.others));
}

/// After the switch: a server of another installation older than `version`
/// (or of unknown version) still runs old code, so the run ends with exit 6
/// naming it and the configs that launch it.
pub(super) fn after_upgrade(
    cx: &mut Ctx,
    spec: &str,
    version: &str,
    progress: &Progress,
) -> Result<(), u8> {
    let inv = discover::discover(&cx.scope(true));
    let sv = survey(cx, &inv, Some(version));
    cx.doc.remove("other_installations");
    if sv.others.is_empty() {
        return Ok(());
    }
    cx.doc
        .insert("other_installations".into(), json!(sv.others));
    // --skip-pkill keeps old code running by request (exit 0, `kept`): these
    // are named, as the kept ones are, and do not fail the run either.
    if cx.s.skip_pkill || sv.old_code().next().is_none() {
        for l in foreign::lines(&sv.others, Some(version)) {
            cx.ui.say(l);
        }
        return Ok(());
    }
    cx.doc.insert("reinstalled".into(), json!(spec));
    cx.doc.insert("version".into(), json!(version));
    cx.doc.insert("cleanup_complete".into(), json!(false));
    let pids: Vec<String> = sv.old_code().map(|f| f.pid.to_string()).collect();
    let msg = format!(
        "memtomem {version} is installed, but pid {} of another installation still runs old code; change what launches it, then restart it:\n{}",
        pids.join(", "),
        foreign::lines(&sv.others, Some(version)).join("\n")
    );
    Err(cx.fail(UpgradeError::Verify(msg), Some(progress)))
}
