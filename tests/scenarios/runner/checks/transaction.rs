//! The install as a transaction, always checked: staged and proven before anything is
//! stopped, switched only when no old server is left (three independent accounts must
//! agree), the installation untouched by a run that did not switch, nothing left in
//! `{tools}/.mm-upgrade`, and the receipt afterwards.

use std::collections::{HashMap, HashSet};
use std::fs;

use serde_json::Value;

use super::super::evidence::read_jsonl;
use super::super::matching::{json_match, toml_to_json};
use super::super::sandbox::{tree_diff, tree_of};
use super::super::{Runner, Tree};
use crate::model::Expect;

impl Runner {
    /// The install as a transaction: staged and proven before anything is stopped,
    /// switched only when no old server is left, the installation untouched by a run
    /// that did not switch, nothing left in `{tools}/.mm-upgrade`.
    pub(super) fn check_transaction(&mut self, e: &Expect, diff: bool) -> Result<(), String> {
        let after = self.installation_tree();
        let before = self.env_before.clone().unwrap_or_default();
        let switched = self.switched_at();
        // A recovery that finished an interrupted upgrade (`[crash]`) changed the
        // installation with no `switched` of its own.
        let rolled_forward = read_jsonl(&self.dir("events").join("upgrader.jsonl"))
            .iter()
            .any(|v| v["event"] == "recovered" && v["outcome"] == "rolled-forward");
        if e.env_unchanged || (!diff && switched.is_empty() && !rolled_forward) {
            let d = tree_diff(&before, &after, 12);
            if !d.is_empty() {
                self.fail(format!(
                    "the installation changed{}:\n      {}",
                    if e.env_unchanged {
                        ""
                    } else {
                        " although mm-upgrade did not switch"
                    },
                    d.join("\n      ")
                ));
            }
        }
        let work = self.dir("tools").join(".mm-upgrade");
        if fs::symlink_metadata(&work).is_ok() {
            let mut t = Tree::new();
            tree_of(&work, "{tools}/.mm-upgrade", &mut t);
            self.fail(format!(
                "{} is left behind: {}",
                work.display(),
                t.keys().take(6).cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        if let Some(want) = &e.receipt {
            let path = self.dir("tools").join("memtomem/uv-receipt.toml");
            let got = fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|t| t.parse::<toml::Table>().map_err(|e| e.to_string()));
            match got {
                Ok(t) => {
                    let mut errs = vec![];
                    let got = toml_to_json(&toml::Value::Table(t));
                    json_match(self, want, &got, "", &mut errs, false);
                    for er in errs {
                        self.fail(format!("receipt {}: {er}", path.display()));
                    }
                }
                Err(err) => self.fail(format!("receipt {}: {err}", path.display())),
            }
        }
        if diff {
            return Ok(());
        }

        // Nothing is stopped before the new release is staged and proven: in each run
        // (a `[crash]` run, then the one that recovers), on its own records.
        let mm = read_jsonl(&self.dir("events").join("upgrader.jsonl"));
        let mut starts: Vec<u64> = self
            .timeline
            .iter()
            .filter(|e| e.source == "upgrader" && e.event == "start")
            .map(|e| e.mono)
            .collect();
        starts.sort();
        let calls = self.uv_calls();
        for (i, &from) in starts.iter().enumerate() {
            let until = starts.get(i + 1).copied().unwrap_or(u64::MAX);
            let within = |t: Option<u64>| t.is_some_and(|t| (from..until).contains(&t));
            let first = |name: &str| {
                mm.iter()
                    .filter(|v| v.get("event").and_then(Value::as_str) == Some(name))
                    .filter_map(|v| v.get("mono_ns").and_then(Value::as_u64))
                    .filter(|&t| within(Some(t)))
                    .min()
            };
            let Some(sig) = first("signalling") else {
                continue;
            };
            match first("proven") {
                Some(p) if p < sig => {}
                Some(_) => {
                    self.fail("mm-upgrade signalled a server before the staged release was proven")
                }
                None => self.fail("mm-upgrade signalled a server without a proven staged release"),
            }
            for c in &calls {
                if !within(c.get("mono_ns").and_then(Value::as_u64)) {
                    continue;
                }
                let end = c
                    .get("end_mono_ns")
                    .and_then(Value::as_u64)
                    .unwrap_or(u64::MAX);
                if c.get("kind").and_then(Value::as_str) == Some("stage") && end > sig {
                    self.fail(format!(
                        "the stage call ended after mm-upgrade signalled a server: staging (and its proof) must be done before anything is stopped ({})",
                        c["argv"]
                    ));
                }
            }
        }

        // The switch: every old server gone first (#443, split brain).
        let Some(&sw) = switched.first() else {
            return Ok(());
        };
        if switched.len() > 1 {
            self.fail(format!("mm-upgrade switched {} times", switched.len()));
        }
        // mm-upgrade's own account: each old server it had to stop exited before.
        for m in self.live_at_start.clone().iter().filter(|m| m.main) {
            let exited = mm.iter().find(|v| {
                v.get("event").and_then(Value::as_str) == Some("exited")
                    && v.get("pid").and_then(Value::as_i64) == Some(m.pid as i64)
            });
            match exited {
                None => self.fail(format!(
                    "mm-upgrade switched without an `exited` record for old server {} (pid {})",
                    m.server, m.pid
                )),
                Some(v) => {
                    let at = v.get("mono_ns").and_then(Value::as_u64).unwrap_or(u64::MAX);
                    if at > sw {
                        self.fail(format!(
                            "mm-upgrade switched {:.1} ms before old server {} (pid {}) exited",
                            (at - sw) as f64 / 1e6,
                            m.server,
                            m.pid
                        ));
                    }
                    if !v.get("error").is_none_or(Value::is_null) {
                        self.fail(format!(
                            "mm-upgrade switched although stopping old server {} (pid {}) failed: {}",
                            m.server, m.pid, v["error"]
                        ));
                    }
                }
            }
        }
        // The servers' own account: none logged its exit after the switch.
        let managed: HashMap<i32, String> = self
            .live_at_start
            .iter()
            .map(|m| (m.pid, m.server.clone()))
            .collect();
        for p in self.procs.iter().filter(|p| p.is_server) {
            for v in read_jsonl(&p.events) {
                let pid = v.get("pid").and_then(Value::as_i64).unwrap_or(0) as i32;
                let at = v.get("mono_ns").and_then(Value::as_u64).unwrap_or(0);
                if v.get("event").and_then(Value::as_str) == Some("exit")
                    && managed.contains_key(&pid)
                    && at > sw
                {
                    self.failures.push(format!(
                        "old-generation pid {pid} (server {}) was alive at the switch: it logged its exit {:.1} ms after `switched`",
                        managed[&pid],
                        (at - sw) as f64 / 1e6
                    ));
                }
            }
        }
        // The runner's own view of /proc: no old process seen alive after `switched`.
        let w = self.watched.clone();
        for m in self.live_at_start.clone() {
            if let Some(&t) = w.last_alive.get(&m.pid).filter(|t| **t > sw) {
                self.fail(format!(
                    "old-generation pid {} (server {}) was alive at the switch: the runner saw it running {:.1} ms after `switched`",
                    m.pid,
                    m.server,
                    (t - sw) as f64 / 1e6
                ));
            }
        }
        match &w.at_switch {
            Some(snap) => {
                // Old-generation processes a client respawned meanwhile may still run
                // (mm-upgrade retires them after the switch): reported, not failed.
                let started = self.started_processes();
                let elders: HashSet<i32> = self.procs.iter().flat_map(|p| p.elders()).collect();
                let unmanaged: HashSet<&str> = self
                    .procs
                    .iter()
                    .filter(|p| p.spec.as_ref().is_some_and(|s| !s.managed))
                    .map(|p| p.name.as_str())
                    .collect();
                let old: Vec<String> = snap
                    .alive
                    .iter()
                    .filter(|(pid, _)| !elders.contains(pid) && !managed.contains_key(pid))
                    .filter_map(|(pid, _)| {
                        let (name, m) = started.get(pid)?;
                        (*m < sw && !unmanaged.contains(name.as_str()))
                            .then(|| format!("{pid} ({name})"))
                    })
                    .collect();
                let in_flight = self.in_flight(sw);
                if !in_flight.is_empty() {
                    self.notes.push(format!(
                        "in flight at the switch (counted as new generation): {}",
                        in_flight.join(", ")
                    ));
                }
                if !old.is_empty() {
                    self.notes.push(format!(
                        "respawned old-generation processes alive {:.1} ms after `switched` (mm-upgrade retires them after the switch): {}",
                        snap.seen.saturating_sub(snap.switched) as f64 / 1e6,
                        old.join(", ")
                    ));
                }
            }
            None => self.fail("the runner did not see mm-upgrade's `switched` record while it ran"),
        }
        Ok(())
    }
}
