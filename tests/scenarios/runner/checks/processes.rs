//! Processes after the run: each server's outcome and the signals it logged, the
//! bystanders (always alive), the runner itself (never signalled), and nothing left
//! behind that is neither allowed nor of the new generation.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::super::Runner;
use crate::model::{Allowed, Expect, Liveness, Outcome, Signal};
use crate::sys;

impl Runner {
    /// `[expect.servers.<name>]`: outcome, signals (in order), not_signals, all_processes.
    pub(super) fn check_servers(&mut self, e: &Expect) {
        for (name, se) in &e.servers {
            let Some(idx) = self.procs.iter().position(|p| &p.name == name) else {
                continue; // the model checked the name
            };
            let pid = self.procs[idx].pid();
            let outcome = self.outcome(&self.procs[idx]);
            if let Some(want) = &se.outcome {
                if !outcome.satisfies(want) {
                    self.fail(format!(
                        "server {name} (pid {pid}): expected {want}, got {outcome}"
                    ));
                }
            }
            let got: Vec<Signal> = self
                .server_events(name)
                .iter()
                .filter(|v| v["event"] == "signal" && v["pid"].as_i64() == Some(pid as i64))
                .filter_map(|v| v["signal"].as_str()?.parse().ok())
                .collect();
            let shown = || got.iter().map(Signal::to_string).collect::<Vec<_>>();
            if let Some(want) = &se.signals {
                let mut it = got.iter();
                if !want.iter().all(|w| it.any(|g| g == w)) {
                    let want: Vec<String> = want.iter().map(Signal::to_string).collect();
                    self.fail(format!(
                        "server {name}: expected signals {want:?} (in order), its log shows {:?}",
                        shown()
                    ));
                }
            }
            for s in &se.not_signals {
                if got.contains(s) {
                    self.fail(format!("server {name}: received {s}, which it must not"));
                }
            }
            if let Some(want) = se.all_processes {
                for p in self.procs[idx].own_pids() {
                    let alive = sys::is_alive(p);
                    if alive != (want == Liveness::Alive) {
                        self.fail(format!(
                            "server {name}: process {p} ({}) should be {}",
                            sys::cmdline(p),
                            want.as_str()
                        ));
                    }
                }
            }
        }
    }

    /// Bystanders always survive; the runner, an ancestor of the upgrader, is never
    /// signalled.
    pub(super) fn check_bystanders_and_runner(&mut self) {
        let dead: Vec<(String, i32, String)> = self
            .procs
            .iter()
            .filter(|p| !p.is_server && !sys::is_alive(p.spawned))
            .map(|p| {
                let how = self
                    .reaper
                    .get(p.spawned)
                    .map_or("dead".into(), |r| sys::describe_status(r.status));
                (p.name.clone(), p.spawned, how)
            })
            .collect();
        for (name, pid, how) in dead {
            self.fail(format!(
                "bystander {name} (pid {pid}) did not survive: {how}"
            ));
        }
        for (sig, from) in sys::recorded_signals() {
            self.fail(format!(
                "the runner (pid {}, an ancestor of the upgrader) received {} from pid {from}",
                std::process::id(),
                sys::signal_name(sig)
            ));
        }
    }

    /// Nothing left behind: anything still running must be a bystander, a host, a
    /// server expected alive, an allowed process, or a process of the new generation
    /// (registered after the switch); `new_generation_only` asks that every fake-server
    /// process still running is of the new one.
    pub(super) fn check_leftovers(&mut self, e: &Expect) {
        let mut allowed: HashSet<i32> = HashSet::new();
        let me = std::process::id() as i32;
        for p in &self.procs {
            if p.host_log.is_some() {
                // The host is the client: it runs on (its server is judged by generation).
                allowed.insert(p.spawned);
            }
            if !p.is_server || e.outcome_of(&p.name) == Some(&Outcome::Alive) {
                allowed.insert(p.spawned);
                allowed.insert(p.pid());
                allowed.extend(p.ready_pids());
                allowed.extend(sys::descendants(p.spawned).iter().map(|d| d.pid));
            }
        }
        for a in &e.allow_alive {
            let Some(p) = self.proc_named(&a.name) else {
                continue; // the model checked the name
            };
            match a.what {
                Allowed::Server => {
                    allowed.insert(p.pid());
                }
                Allowed::Launcher => allowed.extend(p.elders()),
                Allowed::Descendants => {
                    allowed.insert(p.spawned);
                    allowed.extend(sys::descendants(p.spawned).iter().map(|d| d.pid));
                }
            }
        }
        let started = self.started_processes();
        let end = self.install_end();
        if e.new_generation_only {
            for (pid, (name, m)) in &started {
                let elders: Vec<i32> = self
                    .procs
                    .iter()
                    .filter(|p| &p.name == name)
                    .flat_map(|p| p.elders())
                    .collect();
                if sys::is_alive(*pid) && !elders.contains(pid) && end.is_none_or(|end| *m <= end) {
                    self.fail(format!(
                        "server {name}: pid {pid} of the old generation (registered before the switch) is still running"
                    ));
                }
            }
        }
        // A process may be caught mid-way (just forked, not logged yet; exiting): re-check
        // for a short while before calling it left behind. Servers of the new generation
        // (registered after the switch) may run on.
        let deadline = Instant::now() + sys::scaled(1.0);
        let leftovers: Vec<String> = loop {
            let mut allowed_now = allowed.clone();
            if let Some(end) = self.install_end() {
                let new = self
                    .started_processes()
                    .into_iter()
                    .filter(|(_, (_, m))| *m > end);
                allowed_now.extend(new.map(|(pid, _)| pid));
            }
            let left: Vec<String> = sys::descendants(me)
                .into_iter()
                .filter(|d| !allowed_now.contains(&d.pid))
                .map(|d| format!("pid {} [{}] {}", d.pid, d.state, sys::cmdline(d.pid)))
                .collect();
            if left.is_empty() || Instant::now() >= deadline {
                break left;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !leftovers.is_empty() {
            self.fail(format!("processes left behind: {}", leftovers.join("; ")));
        }
    }
}
