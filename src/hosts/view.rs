//! The hosts in `status`: which host launched each listed process, as JSON
//! fields of the process and the document, and as lines under each process.

use serde_json::{json, Value};

use super::{store_digest, survey, words, Listed, Survey};
use crate::discover::{Inventory, Role};
use crate::sys::{Pid, Processes};

/// The hosts of every process of `inv`; the store of each server (not the
/// web UI) for duplicates.
pub fn survey_inventory(os: &dyn Processes, inv: &Inventory) -> Survey {
    let listed: Vec<Listed> = inv
        .instances
        .iter()
        .filter_map(|i| {
            let store = match i.role {
                Role::Server | Role::Secondary => i.source.as_deref().and_then(store_digest),
                _ => None,
            };
            Some(Listed { pid: i.pid?, store })
        })
        .collect();
    survey(os, &listed)
}

/// Each process (a `status --json` entry with its `pid`) gets its `client`
/// (`{pid, host, name, command}`, `host` `gone` for an orphan) and `orphan`.
pub fn annotate(procs: &mut [Value], s: &Survey) {
    for p in procs.iter_mut() {
        let Some(pid) = p["pid"].as_i64() else {
            continue;
        };
        let Some(l) = s.launch(pid as i32) else {
            continue;
        };
        let client = s
            .clients
            .iter()
            .find(|c| c.servers.contains(&(pid as i32)))
            .map(|c| json!({"pid": c.pid, "host": c.host, "name": c.name, "command": c.command}));
        p["client"] = client.unwrap_or(Value::Null);
        p["orphan"] = json!(l.orphan);
    }
}

/// The top-level `status --json` keys: `clients`, `orphans`, `duplicates`.
pub fn doc_fields(s: &Survey) -> [(&'static str, Value); 3] {
    [
        ("clients", json!(s.clients)),
        ("orphans", json!(s.orphans)),
        ("duplicates", json!(s.duplicates)),
    ]
}

/// The line under a process in `status`, if its launch is known.
pub fn process_line(s: &Survey, pid: i64, reapable: &[Pid]) -> Option<String> {
    let pid = pid as i32;
    s.launch(pid)
        .map(|l| words::status_launch(l, reapable.contains(&pid)))
}

/// The lines after the process list: duplicates and what to do with orphans.
/// `reapable`: the orphans `mm-upgrade reap` would stop (proven ours).
pub fn summary_lines(s: &Survey, reapable: &[Pid]) -> Vec<String> {
    let mut out: Vec<String> = words::duplicate_lines(&s.duplicates, &s.clients)
        .into_iter()
        .map(|l| format!("Duplicate: {l}."))
        .collect();
    let n = s.orphans.len();
    let reaped: Vec<String> = s
        .orphans
        .iter()
        .filter(|p| reapable.contains(p))
        .map(|p| p.to_string())
        .collect();
    let what = match reaped.len() {
        0 => "none is provably ours, so `mm-upgrade reap` leaves them: stop them by hand".into(),
        k if k == n => "`mm-upgrade reap` stops them".into(),
        _ => format!(
            "`mm-upgrade reap` stops {} of them ({}); the others are not provably ours: stop them by hand",
            reaped.len(),
            reaped.join(", ")
        ),
    };
    if n > 0 {
        out.push(format!(
            "{n} orphan(s) (their host is gone, nothing will reconnect them): {what}."
        ));
    }
    out
}
