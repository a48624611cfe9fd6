//! Every expectation of `[expect]`, and the invariants checked in every scenario. This
//! module: the order of the checks, the upgrader's own output (exit code, time, JSON,
//! text), the uv calls and the files. The others: [`transaction`] (the install as a
//! transaction), [`processes`] (servers, bystanders, the runner, leftovers), [`events`]
//! (`order`, `never`, `within`) and [`hosts`] (MCP sessions).

mod events;
mod hosts;
mod processes;
mod transaction;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::matching::{exit_class, glob, json_match};
use super::sandbox::installed_version;
use super::{Runner, Upgrader};
use crate::model::{Expect, Outcome};
use crate::sys;

impl Runner {
    /// Before the checks: processes the upgrader stopped may still be on their way out
    /// (an exit racing our reaper), and a host restarts its server when the upgrader
    /// retires the last old one, maybe just as the upgrader exits. Bounded waits.
    pub(super) fn settle(&self) {
        let deadline = Instant::now() + sys::scaled(1.0);
        for p in &self.procs {
            let want_dead = self
                .sc
                .expect
                .outcome_of(&p.name)
                .is_some_and(|o| *o != Outcome::Alive);
            if want_dead {
                while sys::is_alive(p.pid()) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        // Each host's first session started after the switch (or its giving up), so the
        // checks see how the host ended up.
        let Some(sw) = self.install_end() else {
            return;
        };
        for log in self.procs.iter().filter_map(|p| p.host_log.as_ref()) {
            testkit::wait_until(sys::scaled(5.0), || {
                super::evidence::read_jsonl(log).iter().any(|v| {
                    v["event"] == "gave-up"
                        || (v["event"] == "session"
                            && v["spawned_mono_ns"].as_u64().is_some_and(|m| m > sw))
                })
            });
        }
    }

    pub(super) fn check(&mut self) -> Result<(), String> {
        let Some(up) = self.upgrader.take() else {
            return Ok(());
        };
        let diff = self.differential();
        let e = std::mem::take(&mut self.sc.expect);
        self.check_output(&e, &up, diff)?;
        self.check_uv(&e, diff);
        self.check_transaction(&e, diff)?;
        if let Some(want) = &e.installed {
            let got = installed_version(self.dir("tools")).unwrap_or_else(|| "none".into());
            if &got != want {
                self.fail(format!(
                    "installed version afterwards: expected {want}, got {got}"
                ));
            }
        }
        self.check_files(&e)?;
        self.check_servers(&e);
        self.check_bystanders_and_runner();
        self.check_events(&e, diff)?;
        self.check_hosts(&e);
        self.check_leftovers(&e);
        self.sc.expect = e;
        self.upgrader = Some(up);
        Ok(())
    }

    /// The upgrader's exit, time, JSON document and text; it never panics.
    fn check_output(&mut self, e: &Expect, up: &Upgrader, diff: bool) -> Result<(), String> {
        if up.timed_out {
            self.fail(format!(
                "the upgrader did not finish within {:?} and was killed",
                up.duration
            ));
        }
        if let Some(want) = e.exit_code {
            let ok = if diff {
                exit_class(up.exit) == exit_class(Some(want))
            } else {
                up.exit == Some(want)
            };
            if !ok {
                self.fail(format!(
                    "exit code: expected {want}, got {}",
                    up.status_text
                ));
            }
        }
        let ms = up.duration.as_millis() as u64;
        if let Some(max) = e.max_ms {
            let max_scaled = (max as f64 * sys::time_scale()) as u64;
            if ms > max_scaled {
                self.fail(format!("took {ms} ms, more than max_ms = {max_scaled}"));
            }
        }
        if let Some(min) = e.min_ms {
            if ms < min {
                self.fail(format!("took {ms} ms, less than min_ms = {min}"));
            }
        }
        let doc: Option<Value> = if up.cmdline.iter().any(|a| a == "--json") {
            match serde_json::from_str::<Value>(up.stdout.trim()) {
                Ok(v) => Some(v),
                Err(err) => {
                    // A usage error (exit 2) may legitimately print no JSON.
                    if up.exit != Some(2) || !up.stdout.trim().is_empty() {
                        self.fail(format!(
                            "--json: stdout is not exactly one JSON document ({err})"
                        ));
                    }
                    None
                }
            }
        } else {
            None
        };
        if let Some(want) = &e.json {
            match &doc {
                Some(actual) => {
                    let mut errs = vec![];
                    json_match(self, want, actual, "", &mut errs, diff);
                    for er in errs {
                        self.fail(format!("json: {er}"));
                    }
                }
                None => self.fail("json: expected a JSON document on stdout, found none"),
            }
        }
        if !diff {
            let checks: [(&Vec<String>, &str, bool, &str); 4] = [
                (&e.stdout_contains, &up.stdout, true, "stdout"),
                (&e.stdout_not_contains, &up.stdout, false, "stdout"),
                (&e.stderr_contains, &up.stderr, true, "stderr"),
                (&e.stderr_not_contains, &up.stderr, false, "stderr"),
            ];
            for (pats, text, want, what) in checks {
                for pat in pats {
                    let pat = self.expand(pat)?;
                    if text.contains(&pat) != want {
                        self.fail(format!(
                            "{what} {} {pat:?}",
                            if want { "lacks" } else { "contains" }
                        ));
                    }
                }
            }
            let both = format!("{}\n{}", up.stdout, up.stderr).to_lowercase();
            for (pats, want) in [(&e.output_contains, true), (&e.output_not_contains, false)] {
                for pat in pats {
                    let pat = self.expand(pat)?;
                    if both.contains(&pat.to_lowercase()) != want {
                        self.fail(format!(
                            "output (stdout+stderr) {} {pat:?}",
                            if want { "lacks" } else { "contains" }
                        ));
                    }
                }
            }
        }
        if up.stderr.contains("panicked at") {
            self.fail("the upgrader panicked");
        }
        Ok(())
    }

    /// The uv calls: none in place under a live old server (another upgrader), none
    /// outside the staging dir (mm-upgrade), the stage count, and `[[expect.uv]]`.
    fn check_uv(&mut self, e: &Expect, diff: bool) {
        let calls = self.uv_calls();
        let kind_of = |c: &Value| c["kind"].as_str().unwrap_or("").to_string();
        for c in &calls {
            // Another upgrader installs in place: never under a live old server (the
            // fake uv refuses with 97 and records who was alive).
            let alive = c["managed_alive"].as_array().map_or(0, |a| a.len());
            if kind_of(c) == "install" && alive > 0 {
                self.fail(format!(
                    "uv install ran while old-generation processes were alive: {} (argv {})",
                    c["managed_alive"], c["argv"]
                ));
            }
            // mm-upgrade never lets uv write the real tool dir: it stages beside it.
            if !diff && matches!(kind_of(c).as_str(), "install" | "prepare") {
                self.fail(format!(
                    "mm-upgrade ran a uv {} call outside its staging dir (UV_TOOL_DIR {}, argv {})",
                    kind_of(c),
                    c["uv_tool_dir"],
                    c["argv"]
                ));
            }
        }
        let count = |k: &str| calls.iter().filter(|c| kind_of(c) == k).count();
        if let Some(n) = e.uv_stages {
            let kind = if diff { "install" } else { "stage" };
            let got = count(kind);
            if got != n {
                self.fail(format!("uv {kind} calls: expected {n}, got {got}"));
            }
        }
        if diff {
            return;
        }
        for want in &e.uv_calls {
            let found = calls.iter().any(|c| {
                let argv: Vec<&str> = c["argv"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                kind_of(c) == want.kind.as_str()
                    && want.args_contain.iter().all(|a| argv.contains(&a.as_str()))
                    && !want
                        .args_not_contain
                        .iter()
                        .any(|a| argv.contains(&a.as_str()))
                    && want.args_adjacent.iter().all(|run| {
                        run.is_empty()
                            || argv
                                .windows(run.len())
                                .any(|w| w.iter().zip(run).all(|(a, b)| *a == b.as_str()))
                    })
            });
            if !found {
                self.fail(format!(
                    "no uv {} call with args containing {:?}{} and not {:?}",
                    want.kind.as_str(),
                    want.args_contain,
                    if want.args_adjacent.is_empty() {
                        String::new()
                    } else {
                        format!(", runs {:?}", want.args_adjacent)
                    },
                    want.args_not_contain
                ));
            }
        }
    }

    fn check_files(&mut self, e: &Expect) -> Result<(), String> {
        for f in &e.files_present {
            let pat = self.expand(f)?;
            if glob(&pat).is_empty() {
                self.fail(format!("file missing: {pat}"));
            }
        }
        for f in &e.files_absent {
            let pat = self.expand(f)?;
            let hits = glob(&pat);
            if !hits.is_empty() {
                self.fail(format!(
                    "file should be absent: {}",
                    hits.iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        for (f, want) in &e.file_contents {
            let path = self.expand(f)?;
            let want = self.expand(want)?;
            match fs::read(&path) {
                Ok(b) if b == want.as_bytes() => {}
                Ok(b) => self.fail(format!(
                    "{path}: content {:?}, expected {want:?}",
                    String::from_utf8_lossy(&b)
                )),
                Err(err) => self.fail(format!("{path}: {err}")),
            }
        }
        for (f, want) in &e.file_modes {
            let path = self.expand(f)?;
            match fs::symlink_metadata(&path) {
                Ok(m) if m.permissions().mode() & 0o7777 == want.0 => {}
                Ok(m) => self.fail(format!(
                    "{path}: mode {:04o}, expected {:04o}",
                    m.permissions().mode() & 0o7777,
                    want.0
                )),
                Err(err) => self.fail(format!("{path}: {err}")),
            }
        }
        Ok(())
    }
}
