//! The evidence: every log of the run (the servers', the hosts', the fake uv's,
//! mm-upgrade's `--events`, the runner's own notes and the reaper's statuses) merged into
//! one timeline on CLOCK_MONOTONIC, how each server ended, when the switch happened, and
//! when each process joined its generation.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;

use serde_json::{json, Value};

use super::{Proc, Runner};
use crate::model::Outcome;
use crate::sys;

/// One line of the merged timeline.
#[derive(Clone, Debug)]
pub(super) struct Ev {
    pub mono: u64,
    pub source: String,
    pub event: String,
    pub fields: Value,
}

/// The JSON lines of a log (lines that do not parse are skipped).
pub(super) fn read_jsonl(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

impl Runner {
    pub(super) fn uv_calls(&self) -> Vec<Value> {
        read_jsonl(&self.sandbox.join("uv.jsonl"))
    }

    pub(super) fn server_events(&self, name: &str) -> Vec<Value> {
        self.procs
            .iter()
            .find(|p| p.name == name)
            .map(|p| read_jsonl(&p.events))
            .unwrap_or_default()
    }

    pub(super) fn merged_timeline(&self) -> Vec<Ev> {
        let mut all = self.timeline.clone();
        // Every log carries CLOCK_MONOTONIC `mono_ns`, so events order exactly.
        let mut push = |source: &str, key: &str, v: Value| {
            let mono = v.get("mono_ns").and_then(Value::as_u64).unwrap_or(0);
            let event = v
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string();
            all.push(Ev {
                mono,
                source: source.to_string(),
                event,
                fields: v,
            });
        };
        for p in self.procs.iter().filter(|p| p.is_server) {
            for v in read_jsonl(&p.events) {
                push(&p.name, "event", v);
            }
            if let Some(log) = &p.host_log {
                for v in read_jsonl(log) {
                    push(&format!("{}.host", p.name), "event", v);
                }
            }
        }
        for v in read_jsonl(&self.dir("events").join("upgrader.jsonl")) {
            push("mm", "event", v);
        }
        for v in self.uv_calls() {
            push("uv", "kind", v);
        }
        // The reaper thread notices a death a little late on a loaded machine (it must be
        // scheduled first), while an upgrader watching a pidfd sees it at once and may act
        // within that delay. The runner's /proc watch (every ms while the upgrader runs)
        // and the fake uv (when a call starts) check every managed pid: a managed pid
        // found gone was dead by then, so its `reaped` event is placed no later.
        let managed: HashSet<i32> = fs::read_to_string(self.sandbox.join("managed-pids"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect();
        let calls = self.uv_calls();
        let dead_by = |pid: i32| -> Option<(u64, String)> {
            if !managed.contains(&pid) {
                return None;
            }
            // The runner's own /proc watch during the upgrade (every ms).
            let watched = self
                .watched
                .first_gone
                .get(&pid)
                .map(|m| (*m, "the runner's /proc watch".to_string()));
            calls
                .iter()
                .filter(|c| {
                    c.get("managed_alive")
                        .and_then(Value::as_array)
                        .is_some_and(|a| !a.iter().any(|v| v.as_i64() == Some(pid as i64)))
                })
                .filter_map(|c| {
                    let m = c.get("mono_ns").and_then(Value::as_u64)?;
                    let kind = c.get("kind").and_then(Value::as_str).unwrap_or("?");
                    Some((m.saturating_sub(1), format!("uv {kind}")))
                })
                .chain(watched)
                .min()
        };
        for (pid, r) in self.reaper.all() {
            for p in &self.procs {
                let role = if pid == p.pid() {
                    "reaped"
                } else if pid == p.spawned {
                    "launcher-reaped"
                } else {
                    continue;
                };
                let mut mono = r.mono_ns;
                let mut fields = json!({"pid": pid, "status": sys::describe_status(r.status)});
                if let Some((m, by)) = dead_by(pid).filter(|(m, _)| *m < mono) {
                    mono = m;
                    fields["dead_before"] = json!(by);
                    fields["runner_noticed_ms_later"] =
                        json!(((r.mono_ns - m) as f64 / 1e6 * 1000.0).round() / 1000.0);
                }
                all.push(Ev {
                    mono,
                    source: p.name.clone(),
                    event: role.into(),
                    fields,
                });
            }
        }
        if let Some(snap) = &self.watched.at_switch {
            all.push(Ev {
                mono: snap.seen,
                source: "runner".into(),
                event: "switch-look".into(),
                fields: json!({
                    "alive": snap.alive.iter().map(|(p, c)| format!("{p} {c}")).collect::<Vec<_>>(),
                }),
            });
        }
        all.sort_by_key(|e| e.mono);
        all
    }

    /// How a server ended: from our own wait status, else from its event log or its
    /// supervisor's, else from /proc.
    pub(super) fn outcome(&self, p: &Proc) -> Outcome {
        let pid = p.pid();
        if let Some(r) = self.reaper.get(pid) {
            return Outcome::of_status(r.status);
        }
        if sys::is_alive(pid) {
            return Outcome::Alive;
        }
        // Not our child: look for its exit in the event logs.
        for q in &self.procs {
            for v in read_jsonl(&q.events) {
                if v["event"] == "child-exit" && v["child"].as_i64() == Some(pid as i64) {
                    if let Some(c) = v.pointer("/status/code").and_then(Value::as_i64) {
                        return Outcome::Exited(c as i32);
                    }
                    if let Some(s) = v.pointer("/status/signal").and_then(Value::as_str) {
                        if let Ok(sig) = s.parse() {
                            return Outcome::Killed(sig);
                        }
                    }
                }
            }
        }
        for v in read_jsonl(&p.events) {
            if v["event"] == "exit" && v["pid"].as_i64() == Some(pid as i64) {
                if let Some(c) = v["code"].as_i64() {
                    return Outcome::Exited(c as i32);
                }
            }
        }
        Outcome::Dead
    }

    /// mm-upgrade's `switched` records (CLOCK_MONOTONIC ns), in order.
    pub(super) fn switched_at(&self) -> Vec<u64> {
        let mut v: Vec<u64> = read_jsonl(&self.dir("events").join("upgrader.jsonl"))
            .iter()
            .filter(|e| e.get("event").and_then(Value::as_str) == Some("switched"))
            .filter_map(|e| e.get("mono_ns").and_then(Value::as_u64))
            .collect();
        v.sort();
        v
    }

    /// When the new installation took the old one's place (CLOCK_MONOTONIC ns): the
    /// `switched` record of mm-upgrade (written after the exchange, so a process that
    /// started before it counts as old, as mm-upgrade itself counts it), or the end of
    /// another upgrader's last successful in-place install.
    pub(super) fn install_end(&self) -> Option<u64> {
        let installs = self
            .uv_calls()
            .iter()
            .filter(|c| c.get("kind").and_then(Value::as_str) == Some("install"))
            .filter(|c| c.get("exit_code").and_then(Value::as_i64) == Some(0))
            .filter_map(|c| c.get("end_mono_ns").and_then(Value::as_u64))
            .max();
        installs.into_iter().chain(self.switched_at()).max()
    }

    /// Every fake-server process that logged anything: pid -> (server name, when it
    /// joined its generation). That is when it registered as a server (its first `lock`
    /// event); a process that never locks anything (a forked child) is dated by its first
    /// event (forked workers log no `start`; `fork`/`respawn` events of their parent come
    /// first). A process that started before the switch but registered after it was in
    /// flight: no upgrader can attribute it before it registers (a real memtomem-server
    /// could be attributed by its command line, the installation's python; a fake one
    /// cannot), so it counts as new (see `in_flight`).
    pub(super) fn started_processes(&self) -> HashMap<i32, (String, u64)> {
        self.process_dates()
            .into_iter()
            .map(|(pid, (name, first, lock))| (pid, (name, lock.unwrap_or(first).max(first))))
            .collect()
    }

    /// pid -> (server name, mono of its first event, mono of its first `lock` event).
    fn process_dates(&self) -> HashMap<i32, (String, u64, Option<u64>)> {
        let mut out: HashMap<i32, (String, u64, Option<u64>)> = HashMap::new();
        for p in self.procs.iter().filter(|p| p.is_server) {
            for v in read_jsonl(&p.events) {
                let Some(m) = v.get("mono_ns").and_then(Value::as_u64) else {
                    continue;
                };
                // The process itself, and children announced by their parent (`fork`,
                // `respawn`: logged right after fork, before the child logs anything).
                let ev = v.get("event").and_then(Value::as_str).unwrap_or("");
                let child = if ev == "fork" || ev == "respawn" {
                    v.get("child").and_then(Value::as_i64)
                } else {
                    None
                };
                let own = v.get("pid").and_then(Value::as_i64);
                for pid in own.into_iter().chain(child) {
                    let e = out.entry(pid as i32).or_insert((p.name.clone(), m, None));
                    e.1 = e.1.min(m);
                    if ev == "lock" && Some(pid) == own {
                        e.2 = Some(e.2.map_or(m, |l| l.min(m)));
                    }
                }
            }
        }
        out
    }

    /// Processes that started before `at` and registered (took their first lock) after.
    pub(super) fn in_flight(&self, at: u64) -> Vec<String> {
        let mut v: Vec<String> = self
            .process_dates()
            .into_iter()
            .filter(|(_, (_, first, lock))| *first < at && lock.is_some_and(|l| l > at))
            .map(|(pid, (name, first, lock))| {
                format!(
                    "{pid} ({name}: started {:.1} ms before, registered {:.1} ms after)",
                    (at - first) as f64 / 1e6,
                    (lock.unwrap_or(at) - at) as f64 / 1e6
                )
            })
            .collect();
        v.sort();
        v
    }
}

/// One MCP session of a `[[host]]`, from fake-host's log (CLOCK_MONOTONIC ns).
#[derive(Debug)]
pub(super) struct HostSession {
    pub n: u64,
    pub server: i32,
    pub version: String,
    pub spawned: u64,
    pub answered: u64,
    pub died: Option<u64>,
}

pub(super) fn host_sessions(log: &[Value]) -> Vec<HostSession> {
    let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let mut out: Vec<HostSession> = log
        .iter()
        .filter(|v| v["event"] == "session")
        .map(|v| HostSession {
            n: num(v, "n"),
            server: num(v, "server") as i32,
            version: v["version"].as_str().unwrap_or("").to_string(),
            spawned: num(v, "spawned_mono_ns"),
            answered: num(v, "mono_ns"),
            died: None,
        })
        .collect();
    for d in log.iter().filter(|v| v["event"] == "died") {
        if let Some(s) = out.iter_mut().find(|s| s.n == num(d, "n")) {
            s.died = Some(num(d, "mono_ns"));
        }
    }
    out.sort_by_key(|s| s.answered);
    out
}
