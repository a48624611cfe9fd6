//! All output goes through here: human text on stdout, warnings on stderr,
//! one JSON document at the end with `--json`, and optional JSON-lines events.

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::path::Path;

use serde_json::{json, Map, Value};

/// Text on stdout that never panics and never changes the run: a closed or
/// full stdout (EPIPE, ENOSPC, EIO) loses the text, nothing else. Every
/// `print!`/`println!` of the program goes through here (or [`outln!`]).
pub fn out(args: std::fmt::Arguments) {
    let mut o = io::stdout().lock();
    let _ = o.write_fmt(args);
    let _ = o.flush();
}

/// The same for stderr ([`errln!`]), instead of `eprint!`/`eprintln!`.
pub fn err(args: std::fmt::Arguments) {
    let mut e = io::stderr().lock();
    let _ = e.write_fmt(args);
    let _ = e.flush();
}

/// `println!` through [`out`]: never panics.
macro_rules! outln {
    () => { $crate::ui::out(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::ui::out(format_args!("{}\n", format_args!($($arg)*))) };
}
pub(crate) use outln;

/// `eprintln!` through [`err`]: never panics.
macro_rules! errln {
    () => { $crate::ui::err(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::ui::err(format_args!("{}\n", format_args!($($arg)*))) };
}
pub(crate) use errln;

/// An `error:` line on stderr outside a run's [`Ui`] (`status`, `recover`,
/// `reap`, a bad flag), its label coloured as the run's and clap's are.
pub fn error_line(line: impl std::fmt::Display) {
    err(format_args!(
        "{}\n",
        labelled(anstyle::AnsiColor::Red, "error:", line)
    ));
}

/// The same for a `warning:` line.
pub fn warning_line(line: impl std::fmt::Display) {
    err(format_args!(
        "{}\n",
        labelled(anstyle::AnsiColor::Yellow, "warning:", line)
    ));
}

/// `label line`, the label bold in `colour` when stderr takes colour
/// (a terminal without NO_COLOR, or CLICOLOR_FORCE): plain on a pipe.
fn labelled(colour: anstyle::AnsiColor, label: &str, line: impl std::fmt::Display) -> String {
    let on = crate::progress::colour_on_stderr();
    let label = crate::progress::paint(on, colour.on_default().bold(), label);
    format!("{label} {line}")
}

/// The whole output of a command whose only job is that output (`man`,
/// `completions`). A reader that went away (EPIPE, as in `| head -1`) is
/// success; any other failure (ENOSPC, EIO) is returned for the caller to
/// report.
pub fn document(bytes: &[u8]) -> io::Result<()> {
    let mut o = io::stdout().lock();
    match o.write_all(bytes).and_then(|()| o.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

pub struct Ui {
    pub json: bool,
    events: Option<Box<dyn Write>>,
    epoch: std::time::Instant,
    /// The steps as they run, on a terminal only (src/progress.rs).
    steps: crate::progress::Steps,
}

impl Ui {
    pub fn new(json: bool, events: Option<&Path>) -> io::Result<Ui> {
        let events: Option<Box<dyn Write>> = match events {
            None => None,
            Some(p) if p == Path::new("-") => Some(Box::new(io::stderr())),
            Some(p) => Some(Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map(|f: File| f)?,
            )),
        };
        let epoch = std::time::Instant::now();
        Ok(Ui {
            json,
            events,
            epoch,
            steps: crate::progress::Steps::new(json, epoch),
        })
    }

    /// A line of human output (suppressed under `--json`).
    pub fn say(&mut self, line: impl AsRef<str>) {
        if !self.json {
            let line = line.as_ref();
            let _ = self
                .steps
                .suspend(|| writeln!(io::stdout().lock(), "{line}"));
        }
    }

    /// A warning: always on stderr, so `--json` stdout stays one document.
    pub fn warn(&mut self, line: impl AsRef<str>) {
        self.labelled(anstyle::AnsiColor::Yellow, "warning:", line.as_ref());
    }

    /// The error that ends the run, on stderr.
    pub fn error(&mut self, line: &str) {
        self.labelled(anstyle::AnsiColor::Red, "error:", line);
    }

    /// `label line` on stderr, the label coloured as clap colours its own.
    fn labelled(&mut self, colour: anstyle::AnsiColor, label: &str, line: &str) {
        let text = labelled(colour, label, line);
        let _ = self
            .steps
            .suspend(|| writeln!(io::stderr().lock(), "{text}"));
    }

    /// A slow step of the run begins (a spinner on a terminal; nothing else).
    pub fn begin(&mut self, what: &str) {
        self.steps.begin(what);
    }

    /// The run failed: a step under way is marked failed before the error.
    pub fn abandon(&mut self) {
        self.steps.abandon();
    }

    /// The run is over and `doc` is its report: the closing line on a
    /// terminal (elapsed time, how long the servers were down).
    pub fn finished(&mut self, doc: &Map<String, Value>) {
        self.steps.finish(doc);
    }

    /// One JSON-lines progress event.
    pub fn event(&mut self, kind: &str, fields: Value) {
        if let Value::Object(m) = &fields {
            self.steps.event(kind, m);
        }
        let Some(w) = self.events.as_mut() else {
            return;
        };
        let mut obj = Map::new();
        obj.insert("event".into(), json!(kind));
        obj.insert(
            "t_ms".into(),
            json!((self.epoch.elapsed().as_secs_f64() * 1e6).round() / 1e3),
        );
        // CLOCK_MONOTONIC, so events merge exactly with other processes' logs.
        obj.insert("mono_ns".into(), json!(crate::sys::monotonic_ns()));
        if let Value::Object(m) = fields {
            obj.extend(m);
        }
        let _ = writeln!(w, "{}", Value::Object(obj));
        let _ = w.flush();
    }

    /// The final JSON document (only with `--json`).
    pub fn finish_json(&mut self, doc: &Map<String, Value>) {
        if self.json {
            let _ = writeln!(
                io::stdout().lock(),
                "{}",
                python_json(&Value::Object(doc.clone()))
            );
        }
    }

    /// Ask on the terminal; the prompt goes to stderr so stdout stays clean.
    pub fn confirm(&mut self, question: &str) -> Confirm {
        if !io::stdin().is_terminal() {
            return Confirm::NotATerminal;
        }
        let _ = write!(io::stderr().lock(), "\n{question} [Y/n] ");
        let _ = io::stderr().flush();
        // A raw read, so Ctrl-C (EINTR with our handler installed) cancels
        // instead of being retried the way std's line reader retries.
        let mut answer = Vec::new();
        loop {
            let read = crate::sys::read_byte();
            let n: isize = match &read {
                Ok(Some(b)) if *b != b'\n' => {
                    answer.push(*b);
                    continue;
                }
                Ok(Some(_)) => 1,
                Ok(None) => 0,
                Err(_) => -1,
            };
            if read
                .as_ref()
                .is_err_and(|e| e.kind() == io::ErrorKind::Interrupted)
                && crate::interrupt::requested().is_none()
            {
                continue;
            }
            // EOF before an answer, an error, or Ctrl-C: no.
            if crate::interrupt::requested().is_some() {
                let _ = writeln!(io::stderr());
                return Confirm::Interrupted;
            }
            if n < 0 || (n == 0 && answer.is_empty()) {
                let _ = writeln!(io::stderr());
                return Confirm::No;
            }
            break;
        }
        let answer = String::from_utf8_lossy(&answer).into_owned();
        match answer.trim().to_ascii_lowercase().as_str() {
            "" | "y" | "yes" => Confirm::Yes,
            _ => Confirm::No,
        }
    }
}

/// One line of JSON spaced like Python's `json.dumps` (`", "`, `": "`), as
/// memtomem's `mm upgrade --json` prints it, so scripts written against its
/// output (even ones that match text) keep working.
/// Pids as the reports list them: `12, 34`.
pub fn pid_list(pids: &[crate::sys::Pid]) -> String {
    pids.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn python_json(v: &Value) -> String {
    struct Spaced;
    fn comma<W: ?Sized + io::Write>(w: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    impl serde_json::ser::Formatter for Spaced {
        fn begin_array_value<W: ?Sized + io::Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> io::Result<()> {
            comma(w, first)
        }
        fn begin_object_key<W: ?Sized + io::Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> io::Result<()> {
            comma(w, first)
        }
        fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
            w.write_all(b": ")
        }
    }
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, Spaced);
    serde::Serialize::serialize(v, &mut ser).expect("serialising a JSON value cannot fail");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

pub enum Confirm {
    Yes,
    No,
    Interrupted,
    NotATerminal,
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_is_spaced_like_python() {
        let v = serde_json::json!({"ok": true, "killed": [1, 2], "removed": [], "nested": {"a": "x, y"}});
        assert_eq!(
            super::python_json(&v),
            r#"{"ok": true, "killed": [1, 2], "removed": [], "nested": {"a": "x, y"}}"#
        );
    }
}
