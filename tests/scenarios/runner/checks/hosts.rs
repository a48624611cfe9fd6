//! `[[host]]` sessions: each host's sessions and the client-visible gap, always reported
//! (never asserted as a timing), and `[expect.hosts.<name>]`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::super::evidence::{host_sessions, read_jsonl, HostSession};
use super::super::Runner;
use crate::model::Expect;
use crate::sys;

impl Runner {
    /// `[[host]]` sessions: what each reported, and when. The client-visible gap is
    /// reported, never asserted (speed is measured in `bench/`).
    pub(super) fn check_hosts(&mut self, e: &Expect) {
        let old = self.sc.uv.installed.clone();
        let sw = self.install_end();
        let at = |src: &str, ev: &str| {
            self.timeline
                .iter()
                .find(|x| x.source == src && x.event == ev)
                .map(|x| x.mono)
        };
        let window = (at("upgrader", "start"), at("upgrader", "exit"));
        for name in e.hosts.keys() {
            if !self
                .procs
                .iter()
                .any(|p| &p.name == name && p.host_log.is_some())
            {
                self.fail(format!("[expect.hosts.{name}]: no [[host]] named {name:?}"));
            }
        }
        let hosts: Vec<(String, PathBuf)> = self
            .procs
            .iter()
            .filter_map(|p| Some((p.name.clone(), p.host_log.clone()?)))
            .collect();
        for (name, log) in hosts {
            let sessions = host_sessions(&read_jsonl(&log));
            self.notes
                .push(host_summary(&name, &sessions, &old, window));
            let Some(want) = e.hosts.get(&name) else {
                continue;
            };
            if let Some(n) = want.min_sessions {
                if sessions.len() < n {
                    self.fail(format!(
                        "host {name}: {} sessions, expected at least {n}",
                        sessions.len()
                    ));
                }
            }
            if let Some(v) = &want.last_version {
                let last = sessions.last().map(|s| s.version.as_str());
                if last != Some(v.as_str()) {
                    self.fail(format!(
                        "host {name}: last session reports {last:?}, expected {v}"
                    ));
                }
            }
            if !want.no_old_version_after_switch {
                continue;
            }
            let Some(sw) = sw else {
                self.fail(format!(
                    "host {name}: no_old_version_after_switch, but the upgrader never switched"
                ));
                continue;
            };
            let ms = |a: u64, b: u64| a.abs_diff(b) as f64 / 1e6;
            let mut in_flight = vec![];
            for s in sessions.iter().filter(|s| s.version == old) {
                if s.spawned > sw {
                    self.fail(format!(
                        "host {name}: session {} (pid {}) started {:.1} ms after the switch and reports the old version {old}",
                        s.n, s.server, ms(s.spawned, sw)
                    ));
                } else if s.answered > sw {
                    in_flight.push(format!(
                        "session {} (pid {}: started {:.1} ms before, answered {:.1} ms after, served {})",
                        s.n,
                        s.server,
                        ms(sw, s.spawned),
                        ms(s.answered, sw),
                        s.died.map_or("until the end".into(), |d| format!("{:.1} ms", ms(d, s.answered)))
                    ));
                }
                if s.died.is_none() && sys::is_alive(s.server) {
                    self.fail(format!(
                        "host {name}: session {} (pid {}) of the old version {old} is still served after the upgrade",
                        s.n, s.server
                    ));
                }
            }
            if !in_flight.is_empty() {
                self.notes.push(format!(
                    "host {name}: old-version sessions in flight at the switch (respawned before it, retired after): {}",
                    in_flight.join(", ")
                ));
            }
        }
    }
}

/// The sessions in one line, the client-visible gap (the last old-version session's
/// death to the first new-version answer), and how long the host had no session while
/// the upgrader ran.
fn host_summary(
    name: &str,
    sessions: &[HostSession],
    old: &str,
    (start, end): (Option<u64>, Option<u64>),
) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for s in sessions {
        *counts.entry(&s.version).or_default() += 1;
    }
    let counts: Vec<String> = counts.iter().map(|(v, n)| format!("{v} x{n}")).collect();
    let mut text = format!(
        "host {name}: {} sessions ({})",
        sessions.len(),
        counts.join(", ")
    );
    let first_new = sessions.iter().find(|s| s.version != old);
    match first_new {
        Some(f) => {
            let last_old_death = sessions
                .iter()
                .filter(|s| s.version == old)
                .filter_map(|s| s.died)
                .filter(|d| *d <= f.answered)
                .max();
            match last_old_death {
                Some(d) => text.push_str(&format!(
                    "; client-visible gap {:.1} ms (last {old} session died -> first {} session answered)",
                    (f.answered - d) as f64 / 1e6,
                    f.version
                )),
                None => text.push_str("; no old-version session died before the first new one"),
            }
        }
        None => text.push_str(&format!("; no session of another version than {old}")),
    }
    if let (Some(a), Some(b)) = (start, end) {
        // Covered: [answered, died) of every session, clipped to the upgrader's run.
        let mut spans: Vec<(u64, u64)> = sessions
            .iter()
            .map(|s| (s.answered.max(a), s.died.unwrap_or(u64::MAX).min(b)))
            .filter(|(x, y)| x < y)
            .collect();
        spans.sort();
        let (mut covered, mut cur): (u64, Option<(u64, u64)>) = (0, None);
        for (x, y) in spans {
            cur = match cur {
                Some((cx, cy)) if x <= cy => Some((cx, cy.max(y))),
                Some((cx, cy)) => {
                    covered += cy - cx;
                    Some((x, y))
                }
                None => Some((x, y)),
            };
        }
        if let Some((cx, cy)) = cur {
            covered += cy - cx;
        }
        text.push_str(&format!(
            "; without a session {:.1} ms of the upgrader's {:.1} ms",
            (b - a).saturating_sub(covered) as f64 / 1e6,
            (b - a) as f64 / 1e6
        ));
    }
    text
}
