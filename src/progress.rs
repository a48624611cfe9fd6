//! What a person watching a terminal sees while the upgrade runs: each step
//! as it happens (a spinner while uv stages and while the staged server is
//! proven, a line when a step is done) and a closing line with the elapsed
//! time and how long after the first stop the new version was in place.
//! Rendered on stderr only when it is a terminal and `--json` is off, so
//! piped output stays what it was. The engine never calls this directly:
//! [`crate::ui::Ui`] feeds it the run's events and its few step hooks.

use std::io::{self, IsTerminal, Write};
use std::time::{Duration, Instant};

use anstyle::{AnsiColor, Style};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Map, Value};

const OK: Style = AnsiColor::Green.on_default().bold();
const FAILED: Style = AnsiColor::Red.on_default().bold();
const DIM: Style = Style::new().dimmed();

/// Colour on stderr, decided as clap decides for its own output: a
/// terminal, unless `NO_COLOR`; `CLICOLOR_FORCE` forces it.
pub fn colour_on_stderr() -> bool {
    anstream::AutoStream::choice(&io::stderr()) != anstream::ColorChoice::Never
}

/// `text` in `style` when `colour`, else as it is.
pub fn paint(colour: bool, style: Style, text: &str) -> String {
    if colour {
        format!("{style}{text}{style:#}")
    } else {
        text.to_string()
    }
}

/// The step renderer; inert unless stderr is a terminal (and not `--json`).
pub struct Steps {
    on: bool,
    colour: bool,
    started: Instant,
    spinner: Option<(ProgressBar, String)>,
    /// Processes signalled and not yet reported: (pid, role, signals).
    stopping: Vec<(i64, String, Vec<String>)>,
}

impl Steps {
    pub fn new(json: bool, started: Instant) -> Steps {
        let term = std::env::var_os("TERM").is_none_or(|t| t != "dumb");
        Steps {
            on: !json && term && io::stderr().is_terminal(),
            colour: colour_on_stderr(),
            started,
            spinner: None,
            stopping: Vec::new(),
        }
    }

    /// Whether anything is rendered at all.
    pub fn active(&self) -> bool {
        self.on
    }

    /// A slow step begins: a spinner with `what` until it is done.
    pub fn begin(&mut self, what: &str) {
        if !self.on {
            return;
        }
        self.clear();
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("{spinner} {msg} {elapsed:.dim}")
            .expect("a valid template")
            .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ ");
        bar.set_style(style);
        bar.set_message(what.to_string());
        bar.enable_steady_tick(Duration::from_millis(80));
        self.spinner = Some((bar, what.to_string()));
    }

    /// Run `f` (which writes to the terminal) with the spinner out of the way.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.spinner {
            Some((bar, _)) => bar.suspend(f),
            None => f(),
        }
    }

    fn clear(&mut self) {
        if let Some((bar, _)) = self.spinner.take() {
            bar.finish_and_clear();
        }
    }

    /// A step is done: the spinner (if any) gives way to `line`.
    fn done(&mut self, ok: bool, line: &str) {
        self.clear();
        let mark = match ok {
            true => paint(self.colour, OK, "✓"),
            false => paint(self.colour, FAILED, "✗"),
        };
        let _ = writeln!(io::stderr().lock(), "{mark} {line}");
    }

    fn dim(&self, text: &str) -> String {
        paint(self.colour, DIM, text)
    }

    /// The run failed while a step was under way: mark that step failed.
    pub fn abandon(&mut self) {
        if let Some((_, what)) = &self.spinner {
            let what = what.clone();
            self.done(false, &what);
        }
    }

    /// One event of the run (the same as `--events` writes).
    pub fn event(&mut self, kind: &str, f: &Map<String, Value>) {
        if !self.on {
            return;
        }
        let s = |k: &str| f.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let ms = |k: &str| f.get(k).and_then(Value::as_f64);
        match kind {
            "recovered" => self.done(
                true,
                &format!("Finished an interrupted upgrade first ({})", s("outcome")),
            ),
            "staged" => {
                let took = self.dim(&fmt_ms(ms("ms")));
                self.done(true, &format!("Staged memtomem {} {took}", s("version")));
                self.begin(&format!(
                    "Proving memtomem {} before anything is stopped",
                    s("version")
                ));
            }
            "proven" => {
                let line = match f.get("initialize").and_then(Value::as_object) {
                    Some(i) => format!(
                        "Proven: the staged server answers MCP initialize as {} {}",
                        i.get("version").and_then(Value::as_str).unwrap_or("?"),
                        self.dim(&fmt_ms(i.get("ms").and_then(Value::as_f64)))
                    ),
                    None => format!(
                        "Proven: memtomem {} and its entry points (no MCP handshake)",
                        s("version")
                    ),
                };
                self.done(true, &line);
            }
            "signalling" => {
                let pid = f.get("pid").and_then(Value::as_i64).unwrap_or(0);
                self.stopping.push((pid, s("role"), Vec::new()));
                let pids: Vec<String> = self.stopping.iter().map(|p| p.0.to_string()).collect();
                self.begin(&format!("Stopping pid {}", pids.join(", ")));
            }
            "signalled" => {
                let pid = f.get("pid").and_then(Value::as_i64).unwrap_or(0);
                let sigs: Vec<String> = f
                    .get("signals")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect();
                if let Some(p) = self.stopping.iter_mut().find(|p| p.0 == pid) {
                    p.2 = sigs;
                }
            }
            "exited" => {
                let pid = f.get("pid").and_then(Value::as_i64).unwrap_or(0);
                let Some(at) = self.stopping.iter().position(|p| p.0 == pid) else {
                    return;
                };
                let (_, role, sigs) = self.stopping.remove(at);
                let still = self.spinner.as_ref().map(|(_, what)| what.clone());
                match f.get("error").and_then(Value::as_str) {
                    Some(e) => {
                        self.done(false, &format!("pid {pid} ({role}) was not stopped: {e}"))
                    }
                    None => {
                        let took = self.dim(&fmt_ms(ms("after_ms")));
                        let how = match sigs.is_empty() {
                            true => "already gone".to_string(),
                            false => sigs.join(" → "),
                        };
                        self.done(true, &format!("Stopped pid {pid} ({role}, {how}) {took}"));
                    }
                }
                // The spinner goes on while others are still being stopped.
                if let Some(what) = still.filter(|_| !self.stopping.is_empty()) {
                    self.begin(&what);
                }
            }
            "switched" => {
                let took = self.dim(&fmt_ms(ms("switch_ms")));
                self.done(
                    true,
                    &format!("Switched to memtomem {} in one rename {took}", s("version")),
                );
                // Respawns of the old code are looked for (and waited for) now.
                self.begin("Checking that nothing runs the old version");
            }
            "rolled_back" => self.done(
                false,
                "The switch failed; the previous installation is back in place",
            ),
            _ => {}
        }
    }

    /// The run is over (its final report is `doc`): the closing line.
    pub fn finish(&mut self, doc: &Map<String, Value>) {
        if !self.on {
            return;
        }
        let (ok, line) = closing_line(doc, &fmt_secs(self.started.elapsed()));
        match ok {
            true => self.clear(),
            false => self.abandon(),
        }
        self.done(ok, &line);
    }
}

/// The last line of a run whose report is `doc`, `took` after it started:
/// whether it succeeded, and what it did to the servers. The downtime is the
/// window from the first stop to the new version in place; nothing restarts
/// a stopped server but its host, so the line never says they are back
/// unless every host was seen starting the new version (`clients`).
fn closing_line(doc: &Map<String, Value>, took: &str) -> (bool, String) {
    let ok = doc.get("ok").and_then(Value::as_bool).unwrap_or(false);
    let down = doc.get("downtime_ms").and_then(Value::as_f64);
    let version = doc.get("version").and_then(Value::as_str);
    let line = match (ok, down, version) {
        (true, Some(d), Some(v)) => {
            let clients = doc.get("clients").and_then(Value::as_array);
            let all_back = clients.is_some_and(|c| {
                !c.is_empty()
                    && c.iter()
                        .all(|h| h.get("respawned").is_some_and(|r| !r.is_null()))
            });
            let after = match all_back {
                true => "every host has started it again",
                false => "a stopped server is down until its host starts it again",
            };
            format!("Done in {took}; {v} was in place {d:.0} ms after the first stop; {after}")
        }
        (true, _, _) if doc.get("dry_run") == Some(&Value::Bool(true)) => {
            format!("Dry run done in {took}; nothing was changed")
        }
        (true, _, _) if doc.contains_key("cancelled") => "Cancelled; nothing was changed".into(),
        // `reap`'s report (the only one with `orphans`).
        (true, _, _) if doc.contains_key("orphans") => {
            match doc
                .get("killed")
                .and_then(Value::as_array)
                .map_or(0, Vec::len)
            {
                0 => format!("Done in {took}; no orphan was stopped"),
                n => format!("Done in {took}; {n} orphan(s) stopped"),
            }
        }
        (true, _, Some(v)) if doc.contains_key("up_to_date") => {
            format!("Done in {took}; memtomem {v} was already installed, nothing was stopped")
        }
        (true, _, _) => format!("Done in {took}; no server was stopped"),
        (false, d, _) => {
            let code = doc.get("exit_code").and_then(Value::as_u64).unwrap_or(1);
            let down = d
                .map(|d| format!("; the new version was in place {d:.0} ms after the first stop"))
                .unwrap_or_default();
            format!("Failed after {took} (exit {code}){down}")
        }
    };
    (ok, line)
}

fn fmt_ms(ms: Option<f64>) -> String {
    match ms {
        Some(ms) if ms >= 1000.0 => format!("({})", fmt_secs(Duration::from_secs_f64(ms / 1e3))),
        Some(ms) if ms >= 10.0 => format!("({ms:.0} ms)"),
        Some(ms) => format!("({ms:.1} ms)"),
        None => String::new(),
    }
}

fn fmt_secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_a_person_reads_them() {
        assert_eq!(fmt_ms(Some(0.34)), "(0.3 ms)");
        assert_eq!(fmt_ms(Some(54.2)), "(54 ms)");
        assert_eq!(fmt_ms(Some(1530.0)), "(1.5 s)");
        assert_eq!(fmt_ms(None), "");
    }

    #[test]
    fn the_closing_line_says_what_happened_to_the_servers() {
        let line = |doc: Value| {
            let Value::Object(m) = doc else {
                unreachable!()
            };
            closing_line(&m, "1.2 s")
        };
        let done = line(
            serde_json::json!({"ok": true, "version": "0.6.12", "downtime_ms": 54.4,
            "clients": [{"respawned": {"pid": 9, "version": "0.6.12"}}, {"respawned": null}]}),
        );
        assert_eq!(
            done,
            (true, "Done in 1.2 s; 0.6.12 was in place 54 ms after the first stop; a stopped server is down until its host starts it again".into())
        );
        let back = line(
            serde_json::json!({"ok": true, "version": "0.6.12", "downtime_ms": 54.4,
            "clients": [{"respawned": {"pid": 9, "version": "0.6.12"}}]}),
        );
        assert_eq!(
            back.1,
            "Done in 1.2 s; 0.6.12 was in place 54 ms after the first stop; every host has started it again"
        );
        let dry = line(serde_json::json!({"ok": true, "dry_run": true, "version": null}));
        assert_eq!(dry.1, "Dry run done in 1.2 s; nothing was changed");
        let same = line(serde_json::json!({"ok": true, "up_to_date": true, "version": "0.6.12"}));
        assert_eq!(
            same.1,
            "Done in 1.2 s; memtomem 0.6.12 was already installed, nothing was stopped"
        );
        let reaped = line(serde_json::json!({"ok": true, "orphans": [{}, {}], "killed": [7, 8]}));
        assert_eq!(reaped, (true, "Done in 1.2 s; 2 orphan(s) stopped".into()));
        let none = line(serde_json::json!({"ok": true, "orphans": [], "dry_run": false}));
        assert_eq!(none.1, "Done in 1.2 s; no orphan was stopped");
        let no = line(serde_json::json!({"ok": true, "cancelled": true}));
        assert_eq!(no.1, "Cancelled; nothing was changed");
        let failed = line(serde_json::json!({"ok": false, "exit_code": 5, "downtime_ms": 12.0}));
        assert_eq!(
            failed,
            (
                false,
                "Failed after 1.2 s (exit 5); the new version was in place 12 ms after the first stop"
                    .into()
            )
        );
    }

    #[test]
    fn paint_adds_escapes_only_with_colour() {
        assert_eq!(paint(false, OK, "✓"), "✓");
        let c = paint(true, OK, "✓");
        assert!(
            c.starts_with('\x1b') && c.contains('✓') && c.ends_with('m'),
            "{c:?}"
        );
    }
}
