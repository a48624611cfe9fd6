//! The report of one scenario: what it is about, every failed check and note, the
//! upgrader's command line, status, time and output, every uv call, each process's ready
//! file, logs and stderr, the merged timeline, and the runtime dir afterwards.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::evidence::read_jsonl;
use super::upgrader::shell_quote;
use super::Runner;

impl Runner {
    pub(super) fn report(&self, setup_error: Option<&str>) -> String {
        let mut r = String::new();
        let path = self.cfg.scenario_path.display();
        r.push_str(&format!("scenario: {} ({path})\n", self.cfg.name));
        r.push_str(&format!("  {}\n", self.sc.description.trim()));
        if let Some(err) = setup_error {
            r.push_str(&format!("SETUP ERROR: {err}\n"));
        }
        if !self.failures.is_empty() {
            r.push_str("FAILED CHECKS:\n");
            for f in &self.failures {
                r.push_str(&format!("  - {f}\n"));
            }
        }
        for n in &self.notes {
            r.push_str(&format!("note: {n}\n"));
        }
        if let Some(up) = &self.upgrader {
            r.push_str(&format!(
                "--- upgrader: {} -> {} in {} ms\n",
                up.cmdline
                    .iter()
                    .map(|a| shell_quote(a))
                    .collect::<Vec<_>>()
                    .join(" "),
                up.status_text,
                up.duration.as_millis()
            ));
            r.push_str(&format!("--- upgrader stdout:\n{}\n", up.stdout.trim_end()));
            r.push_str(&format!("--- upgrader stderr:\n{}\n", up.stderr.trim_end()));
        }
        r.push_str("--- uv log:\n");
        for c in self.uv_calls() {
            r.push_str(&format!("  {c}\n"));
        }
        for p in &self.procs {
            r.push_str(&format!(
                "--- {} {} (spawned pid {}, pid {}, pgid {}): {}\n",
                match (p.is_server, &p.host_log) {
                    (_, Some(_)) => "host",
                    (true, None) => "server",
                    (false, None) => "bystander",
                },
                p.name,
                p.spawned,
                p.pid(),
                p.pgid,
                self.outcome(p)
            ));
            if let Some(rd) = &p.ready {
                r.push_str(&format!("  ready: {rd}\n"));
            }
            if let Some(log) = &p.host_log {
                for v in read_jsonl(log) {
                    r.push_str(&format!("  host: {v}\n"));
                }
            }
            for v in read_jsonl(&p.events) {
                r.push_str(&format!("  {v}\n"));
            }
            let err = fs::read_to_string(&p.stderr).unwrap_or_default();
            if !err.trim().is_empty() {
                r.push_str(&format!(
                    "  stderr: {}\n",
                    err.trim_end().replace('\n', "\n          ")
                ));
            }
        }
        r.push_str("--- merged timeline (ms since first event):\n");
        let tl = self.merged_timeline();
        let t0 = tl.first().map(|e| e.mono).unwrap_or(0);
        for ev in &tl {
            let detail = match ev.source.as_str() {
                "uv" => ev
                    .fields
                    .get("argv")
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                _ => {
                    let mut f = ev.fields.clone();
                    if let Some(o) = f.as_object_mut() {
                        for k in ["ts", "mono_ns", "event", "argv"] {
                            o.remove(k);
                        }
                    }
                    f.to_string()
                }
            };
            r.push_str(&format!(
                "  {:>9.3} {:<12} {:<16} {}\n",
                (ev.mono.saturating_sub(t0)) as f64 / 1e6,
                ev.source,
                ev.event,
                detail
            ));
        }
        r.push_str(&format!(
            "--- runtime dir after the run:\n{}",
            list_dir(self.dir("runtime"))
        ));
        r
    }
}

fn list_dir(dir: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        let mut entries: Vec<_> = rd.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let md = fs::symlink_metadata(&p);
            let desc = match &md {
                Ok(m) if m.file_type().is_symlink() => format!(
                    "-> {}",
                    fs::read_link(&p)
                        .map(|t| t.display().to_string())
                        .unwrap_or_default()
                ),
                Ok(m) if m.is_dir() => {
                    stack.push(p.clone());
                    format!("dir {:o}", m.permissions().mode() & 0o7777)
                }
                Ok(m) => format!("{} bytes {:o}", m.len(), m.permissions().mode() & 0o7777),
                Err(e) => e.to_string(),
            };
            out.push_str(&format!(
                "  {} {desc}\n",
                p.strip_prefix(dir).unwrap_or(&p).display()
            ));
        }
    }
    out
}
