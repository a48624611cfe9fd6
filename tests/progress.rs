//! What a person sees on a terminal: the steps as they run (spinners while
//! uv stages, a line per step), colour as the terminal and NO_COLOR say, and
//! the closing line with the elapsed time and the servers' downtime. Run for
//! real in tmux (a private server, killed on drop); and nothing of it on a
//! pipe. Fake servers and the stand-in uv, each test in its own sandbox.

mod common;
#[path = "common/hosts.rs"]
mod hosts;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::Sandbox;

/// A tmux server of this test alone (its socket in the sandbox), killed on
/// drop, panic included; its panes inherit the sandbox's environment.
struct Tmux {
    sock: PathBuf,
}

/// The spinner's frames (src/progress.rs).
const TICKS: &str = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏";

impl Tmux {
    fn start(sb: &Sandbox, session: &str) -> Tmux {
        let tmux = Tmux {
            sock: sb.path("tmux.sock"),
        };
        // The server's environment becomes its panes': the sandbox's only
        // (no NO_COLOR or CLICOLOR_FORCE of whoever runs the tests).
        let mut cmd = tmux.cmd();
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("TERM", "xterm-256color")
            .env("LANG", "C.UTF-8");
        for (k, v) in sb.upgrader_std().get_envs() {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        let out = cmd
            .args(Self::new_session_args(session))
            .output()
            .expect("run tmux");
        assert!(out.status.success(), "tmux new-session: {out:?}");
        tmux
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.sock).args(["-f", "/dev/null"]);
        c.stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = self.cmd().args(args).output().expect("run tmux");
        assert!(out.status.success(), "tmux {args:?}: {out:?}");
        out
    }

    /// A detached session running `sh`, 200×60 (long lines stay whole).
    fn new_session_args(session: &str) -> [&str; 9] {
        [
            "new-session",
            "-d",
            "-s",
            session,
            "-x",
            "200",
            "-y",
            "60",
            "sh",
        ]
    }

    fn new_session(&self, session: &str) {
        self.run(&Self::new_session_args(session));
    }

    /// Type `text` into `session`'s shell, then Enter (as a person would).
    fn type_line(&self, session: &str, text: &str) {
        self.run(&["send-keys", "-t", session, "-l", text]);
        self.run(&["send-keys", "-t", session, "Enter"]);
    }

    fn keys(&self, session: &str, key: &str) {
        self.run(&["send-keys", "-t", session, key]);
    }

    /// The pane's text (wrapped lines joined); with `escapes`, its SGR codes.
    fn screen(&self, session: &str, escapes: bool) -> String {
        let mut args = vec!["capture-pane", "-p", "-J", "-t", session];
        if escapes {
            args.push("-e");
        }
        String::from_utf8_lossy(&self.run(&args).stdout).into_owned()
    }

    /// Poll the screen until `ready` holds (a deadline, no sleeping on it).
    fn wait(&self, session: &str, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let ok = testkit::wait_until(Duration::from_secs(30), || {
            last = self.screen(session, false);
            ready(&last)
        });
        assert!(ok, "timed out waiting for {what}; the screen:\n{last}");
        last
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").stderr(Stdio::null()).output();
    }
}

/// The lines of `screen` from the last one containing `from` on.
fn since<'a>(screen: &'a str, from: &str) -> Vec<&'a str> {
    let lines: Vec<&str> = screen.lines().collect();
    let at = lines.iter().rposition(|l| l.contains(from)).unwrap_or(0);
    lines[at..].to_vec()
}

fn position(lines: &[&str], what: &str) -> usize {
    lines
        .iter()
        .position(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no line with {what:?} in:\n{}", lines.join("\n")))
}

fn spinner_frame(screen: &str, what: &str) -> Option<char> {
    screen
        .lines()
        .find(|l| l.contains(what))
        .and_then(|l| l.chars().next())
        .filter(|c| TICKS.contains(*c))
}

#[test]
fn a_terminal_sees_each_step_a_spinner_colour_and_the_closing_line() {
    let sb = Sandbox::new();
    let server = sb.server("s", &[]);
    let mm = assert_cmd::cargo::cargo_bin("mm-upgrade")
        .display()
        .to_string();
    let tmux = Tmux::start(&sb, "t");

    // 1. uv hangs: the staging spinner turns while the servers keep serving;
    //    Ctrl-C marks that step failed and ends the run (exit 130).
    tmux.type_line("t", &format!("FAKE_UV_BEHAVIOR=hang {mm} -y; echo exit=$?"));
    let staging = "Staging memtomem[all] with uv";
    let first = tmux.wait("t", "the staging spinner", |s| {
        spinner_frame(s, staging).is_some()
    });
    let frame = spinner_frame(&first, staging).unwrap();
    tmux.wait("t", "the spinner to turn", |s| {
        spinner_frame(s, staging).is_some_and(|f| f != frame)
    });
    assert!(server.alive(), "staging stops nothing");
    tmux.keys("t", "C-c");
    let screen = tmux.wait("t", "the interrupted run to end", |s| {
        s.contains("exit=130")
    });
    let run = since(&screen, "-y; echo exit=$?");
    let failed = position(&run, &format!("✗ {staging}"));
    let closing = position(&run, "✗ Failed after ");
    assert!(failed < closing, "{}", run.join("\n"));
    assert!(run[closing].contains("(exit 130)"), "{}", run[closing]);
    assert!(server.alive(), "an interrupt before the stop stops nothing");

    // uv fails: the step is marked failed first, then uv's own words.
    tmux.type_line(
        "t",
        &format!("FAKE_UV_BEHAVIOR=fail:2:boom {mm} -y; echo exit=$?"),
    );
    let screen = tmux.wait("t", "the failed staging to end", |s| {
        since(s, "FAKE_UV_BEHAVIOR=fail")
            .iter()
            .any(|l| l.contains("exit=5"))
    });
    let run = since(&screen, "FAKE_UV_BEHAVIOR=fail");
    let failed = position(&run, &format!("✗ {staging}"));
    assert!(
        failed < position(&run, "warning: uv said:"),
        "{}",
        run.join("\n")
    );
    // The labels are coloured as clap colours its own.
    let painted = tmux.screen("t", true);
    let error = painted
        .lines()
        .rfind(|l| l.contains("cannot install"))
        .expect("the error line, with escapes");
    assert!(
        error.starts_with('\x1b') && error.contains("error:"),
        "{error:?}"
    );
    assert!(
        failed < position(&run, "✗ Failed after "),
        "{}",
        run.join("\n")
    );

    // 2. The upgrade, confirmed at the prompt: each step once, in order,
    //    and the closing line with the downtime; no spinner left behind.
    tmux.type_line("t", &format!("{mm}; echo exit=$?"));
    tmux.wait("t", "the prompt", |s| {
        s.contains("Proceed with upgrade? [Y/n]")
    });
    tmux.type_line("t", "y");
    let screen = tmux.wait("t", "the upgrade to end", |s| {
        since(s, &format!("{mm}; echo"))
            .iter()
            .any(|l| l.contains("exit=0"))
    });
    let run = since(&screen, &format!("{mm}; echo"));
    let text = run.join("\n");
    let steps = [
        "✓ Staged memtomem 0.6.12 (".to_string(),
        "✓ Proven: the staged server answers MCP initialize as 0.6.12 (".to_string(),
        format!("✓ Stopped pid {} (server, SIGTERM) (", server.pid()),
        "✓ Switched to memtomem 0.6.12 in one rename (".to_string(),
        "✓ Done in ".to_string(),
    ];
    let at: Vec<usize> = steps.iter().map(|s| position(&run, s)).collect();
    assert!(
        at.windows(2).all(|w| w[0] < w[1]),
        "steps out of order:\n{text}"
    );
    let done = run[at[4]];
    assert!(
        done.contains(" s; 0.6.12 was in place ")
            && done.ends_with(
                " ms after the first stop; a stopped server is down until its host starts it again"
            ),
        "{done}"
    );
    assert!(
        !run.iter().any(|l| l.starts_with(|c| TICKS.contains(c))),
        "a spinner was left on the screen:\n{text}"
    );
    assert!(!server.alive());
    assert_eq!(sb.installed_versions(), ["0.6.12"]);
    // Colour: the marks are painted (tmux reports SGR codes with -e).
    let painted = tmux.screen("t", true);
    let done_line = painted
        .lines()
        .rfind(|l| l.contains("Done in "))
        .expect("the closing line, with escapes");
    let mark = done_line.find('✓').unwrap();
    assert!(done_line[..mark].contains("\x1b["), "{done_line:?}");

    // 3. NO_COLOR on the same terminal: the same steps, no escape codes; and
    //    --json on a terminal: the document alone, no step lines.
    tmux.new_session("nc");
    tmux.type_line(
        "nc",
        &format!("NO_COLOR=1 {mm} -y --reinstall; echo exit=$?"),
    );
    let screen = tmux.wait("nc", "the NO_COLOR run to end", |s| s.contains("exit=0"));
    assert!(screen.contains("✓ Done in "), "{screen}");
    let painted = tmux.screen("nc", true);
    assert!(
        !painted.contains('\x1b'),
        "escapes despite NO_COLOR:\n{painted:?}"
    );
    tmux.type_line("nc", "clear");
    tmux.wait("nc", "a cleared screen", |s| !s.contains("Done in"));
    tmux.type_line("nc", &format!("{mm} --dry-run --json; echo exit=$?"));
    let screen = tmux.wait("nc", "the --json run to end", |s| s.contains("exit=0"));
    assert!(
        !screen.contains('✓') && !screen.contains("Dry run done"),
        "{screen}"
    );
    assert!(
        screen.contains("{\"ok\": true, \"dry_run\": true"),
        "{screen}"
    );
}

/// Output to pipes (a script, CI) has no escape codes and no step lines,
/// with neither NO_COLOR nor CLICOLOR_FORCE set.
#[test]
fn piped_output_has_no_escape_codes_and_no_progress() {
    let sb = Sandbox::new();
    let _s = sb.server("s", &["--mode", "ignore-sigterm"]);
    let out = sb
        .upgrader()
        .args(["-y", "--grace", "0.1"])
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE")
        .assert()
        .code(0)
        .get_output()
        .clone();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        stdout.contains("Installed memtomem 0.6.11 → 0.6.12"),
        "{stdout}"
    );
    for (name, text) in [("stdout", &stdout), ("stderr", &stderr)] {
        assert!(!text.contains('\x1b'), "{name} has escapes: {text:?}");
        assert!(
            !text.contains('✓') && !text.contains("Done in"),
            "{name} has step lines: {text}"
        );
    }
}

/// The `error:` and `warning:` labels of `status`, `recover`, `reap` and a
/// bad `--events` are coloured as the upgrade's (CLICOLOR_FORCE paints them
/// even on a pipe) and plain on a pipe otherwise.
#[test]
fn labels_outside_an_upgrade_are_coloured_like_the_upgrades() {
    let sb = Sandbox::new();
    let no_events = sb.path("no/such/dir/events");
    let _uv_lock = common::FlockHolder::hold(&sb.path("tools/.lock"));
    let cases: [(Vec<&std::ffi::OsStr>, i32, &str); 4] = [
        (
            vec!["status".as_ref(), "--uv".as_ref(), "/nonexistent".as_ref()],
            0,
            "warning:",
        ),
        (
            vec!["recover".as_ref(), "--uv".as_ref(), "/nonexistent".as_ref()],
            5,
            "error:",
        ),
        (vec!["reap".as_ref(), "-y".as_ref()], 3, "error:"),
        (
            vec![
                "--dry-run".as_ref(),
                "--events".as_ref(),
                no_events.as_os_str(),
            ],
            2,
            "error:",
        ),
    ];
    for (args, code, label) in cases {
        for force in [true, false] {
            let mut cmd = sb.upgrader();
            cmd.args(&args)
                .env_remove("NO_COLOR")
                .env_remove("CLICOLOR_FORCE");
            if force {
                cmd.env("CLICOLOR_FORCE", "1");
            }
            let out = cmd.assert().code(code).get_output().clone();
            let stderr = String::from_utf8_lossy(&out.stderr);
            let line = stderr
                .lines()
                .find(|l| l.contains(label))
                .unwrap_or_else(|| panic!("{args:?}: no {label} line in {stderr:?}"));
            match force {
                true => assert!(
                    line.starts_with("\x1b[") && line.contains(&format!("{label}\x1b[0m ")),
                    "{args:?}: {label} not painted: {line:?}"
                ),
                false => assert!(line.starts_with(label), "{args:?}: {line:?}"),
            }
        }
    }
}

/// `reap` on a terminal: its stop as a step line (the upgrade's) and a
/// closing line saying how many orphans were stopped.
#[test]
fn a_terminal_sees_reaps_stop_and_its_closing_line() {
    let sb = Sandbox::new();
    let orphan = hosts::Orphan::start(&sb, "orphan");
    let mm = assert_cmd::cargo::cargo_bin("mm-upgrade")
        .display()
        .to_string();
    let tmux = Tmux::start(&sb, "r");
    tmux.type_line("r", &format!("{mm} reap -y; echo exit=$?"));
    let screen = tmux.wait("r", "reap to end", |s| s.contains("exit=0"));
    let run = since(&screen, "reap -y; echo exit=$?");
    let stopped = position(
        &run,
        &format!("✓ Stopped pid {} (server, SIGTERM) (", orphan.pid()),
    );
    let done = position(&run, "✓ Done in ");
    assert!(stopped < done, "{}", run.join("\n"));
    assert!(
        run[done].ends_with(" s; 1 orphan(s) stopped"),
        "{}",
        run[done]
    );
    assert!(
        !run.iter().any(|l| l.starts_with(|c| TICKS.contains(c))),
        "a spinner was left on the screen:\n{}",
        run.join("\n")
    );
    assert!(!orphan.alive());
}

/// Ctrl-C at reap's prompt ends it with nothing stopped, saying so, exit
/// 130 as the upgrade (it was killed by the signal, silently).
#[test]
fn ctrl_c_at_reaps_prompt_stops_nothing_and_says_so() {
    let sb = Sandbox::new();
    let orphan = hosts::Orphan::start(&sb, "orphan");
    let mm = assert_cmd::cargo::cargo_bin("mm-upgrade")
        .display()
        .to_string();
    let tmux = Tmux::start(&sb, "c");
    tmux.type_line("c", &format!("{mm} reap; echo exit=$?"));
    tmux.wait("c", "the prompt", |s| s.contains("Stop them? [Y/n]"));
    tmux.keys("c", "C-c");
    let screen = tmux.wait("c", "reap to end", |s| {
        s.lines().any(|l| l.starts_with("exit="))
    });
    assert!(screen.contains("exit=130"), "{screen}");
    assert!(
        screen.contains("error: interrupted by SIGINT before anything was stopped"),
        "{screen}"
    );
    assert!(orphan.alive());
}
