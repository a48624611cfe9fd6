//! The upgrader run: its environment (the sandbox, the fake uv's behaviour, the
//! differential-mode overrides), its argv, files its own process writes before it execs,
//! and the launch itself, watched (see `watch`) until it exits or times out.

use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::evidence::Ev;
use super::watch::SwitchWatch;
use super::{Runner, Upgrader};
use crate::model::{UvBehavior, When};
use crate::sys;

impl Runner {
    fn upgrader_env(&self, managed: &Path) -> Result<Vec<(String, String)>, String> {
        let d = |k: &str| self.dirs[k].to_string_lossy().into_owned();
        let uv = &self.sc.uv;
        let mut env = self.base_env();
        env.extend([
            ("MM_UPGRADE_RUNTIME_DIR".into(), d("runtime")),
            ("MM_UPGRADE_HOME".into(), d("home")),
            ("UV_TOOL_DIR".into(), d("tools")),
            ("UV_TOOL_BIN_DIR".into(), d("toolbin")),
            ("FAKE_UV_TOOL_DIR".into(), d("tools")),
            (
                "FAKE_UV_LOG".into(),
                self.sandbox.join("uv.jsonl").to_string_lossy().into_owned(),
            ),
            (
                "FAKE_UV_MANAGED_PIDS".into(),
                managed.to_string_lossy().into_owned(),
            ),
            ("FAKE_UV_CACHE".into(), d("cache")),
            ("FAKE_UV_LATEST".into(), uv.latest.clone()),
            (
                "FAKE_UV_SERVER_BIN".into(),
                self.fake("fake-server").to_string_lossy().into_owned(),
            ),
            ("RUST_BACKTRACE".into(), "1".into()),
        ]);
        let behavior = match uv.behavior {
            UvBehavior::Succeed | UvBehavior::Absent => "succeed".to_string(),
            UvBehavior::Fail => format!(
                "fail:{}:{}",
                uv.code.unwrap_or(2),
                uv.stderr
                    .clone()
                    .unwrap_or_else(|| "fake uv stderr line".into())
            ),
            UvBehavior::Sleep => format!("sleep:{}", uv.ms.unwrap_or(1000)),
            // The model checked that version is there.
            UvBehavior::WrongVersion => {
                format!(
                    "wrong-version:{}",
                    uv.version.as_deref().unwrap_or_default()
                )
            }
            b => b.as_str().to_string(),
        };
        env.push(("FAKE_UV_BEHAVIOR".into(), behavior));
        if !uv.server_args.is_empty() {
            let args = self.expand_all(&uv.server_args)?;
            if args
                .iter()
                .any(|a| a.is_empty() || a.contains(char::is_whitespace))
            {
                return Err(format!(
                    "[uv] server_args {args:?}: no empty arguments or whitespace (FAKE_UV_SERVER_ARGS is split on it)"
                ));
            }
            env.push(("FAKE_UV_SERVER_ARGS".into(), args.join(" ")));
        }
        if uv.dir_fails {
            env.push(("FAKE_UV_DIR".into(), "fail".into()));
        } else if let Some(text) = &uv.dir_prints {
            env.push((
                "FAKE_UV_DIR".into(),
                format!("print:{}", self.expand(text)?),
            ));
        }
        if self.differential() {
            env.push(("_MEMTOMEM_TEST_RUNTIME_DIR".into(), d("runtime")));
            env.push((
                "PYTEST_CURRENT_TEST".into(),
                format!("scenarios/{} (call)", self.cfg.name),
            ));
        }
        for (k, v) in &self.sc.upgrade.env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), self.expand(v)?));
        }
        env.retain(|(k, _)| !self.sc.upgrade.env_remove.contains(k));
        Ok(env)
    }

    /// The upgrader's argv: `[upgrade] args` (`crash_args` for a `[crash]` run).
    fn upgrader_argv(&self, crash_args: Option<&Vec<String>>) -> Result<Vec<String>, String> {
        let args = match (&self.cfg.other, &self.sc.differential.args, crash_args) {
            (_, _, Some(a)) => a.clone(),
            (Some(_), Some(a), _) => a.clone(),
            _ => self.sc.upgrade.args.clone(),
        };
        let mut args = self.expand_all(&args)?;
        if self.cfg.other.is_none() {
            let ev = self.dir("events").join("upgrader.jsonl");
            args.extend(["--events".to_string(), ev.to_string_lossy().into_owned()]);
        }
        let mut argv = match &self.cfg.other {
            Some(cmd) => vec![
                "/bin/sh".into(),
                "-c".into(),
                format!("exec {cmd} \"$@\""),
                "upgrader".into(),
            ],
            None => vec![self
                .cfg
                .mm_upgrade
                .as_ref()
                .ok_or(
                    "no mm-upgrade binary (build the root package, or set MM_SCENARIO_MM_UPGRADE)",
                )?
                .to_string_lossy()
                .into_owned()],
        };
        argv.extend(args);
        Ok(argv)
    }

    /// `[crash]`: the upgrader with `MM_UPGRADE_FAULT=<at>`, which must kill itself there
    /// (SIGKILL). Anything else fails the scenario here: an upgrader built without the
    /// `fault-points` feature runs on and must not make a crash scenario pass.
    pub(super) fn run_crash(&mut self, managed: &Path) -> Result<(), String> {
        let Some(crash) = &self.sc.crash else {
            return Ok(());
        };
        let at = crash.at.as_str();
        let args = crash
            .args
            .clone()
            .unwrap_or_else(|| self.sc.upgrade.args.clone());
        let mut env = self.upgrader_env(managed)?;
        env.push(("MM_UPGRADE_FAULT".into(), at.into()));
        let argv = self.upgrader_argv(Some(&args))?;
        self.live_at_start = self.managed_alive_now();
        self.env_before = Some(self.installation_tree());
        let run = self.launch(argv, env, vec![])?;
        self.note(
            "runner",
            "crashed",
            json!({"at": at, "status": run.status_text}),
        );
        let killed = run.exit.is_none() && run.status_text.contains("SIGKILL");
        if !killed {
            return Err(format!(
                "[crash] at = \"{at}\": the upgrader was to kill itself there (MM_UPGRADE_FAULT) but it ended {} after {:.0} ms; build mm-upgrade with the `fault-points` feature (cargo test --all-features)\n--- its stderr:\n{}",
                run.status_text,
                run.duration.as_secs_f64() * 1e3,
                run.stderr
            ));
        }
        self.notes.push(format!(
            "[crash]: mm-upgrade killed itself at `{at}` after {:.0} ms; the run below recovers",
            run.duration.as_secs_f64() * 1e3
        ));
        Ok(())
    }

    pub(super) fn run_upgrader(&mut self, managed: &Path) -> Result<(), String> {
        let env = self.upgrader_env(managed)?;
        self.env_for_upgrader = env.clone();
        let argv = self.upgrader_argv(None)?;
        self.write_env_script(&argv)?;
        if self.cfg.pause {
            self.pause_for_human(&argv);
        }
        // Files the upgrader's own process writes just before exec ({upgrader} = its pid).
        let marker = "\u{1}UPGRADER\u{1}";
        let mut early: Vec<(CString, Vec<Vec<u8>>)> = vec![];
        for f in self
            .sc
            .files
            .iter()
            .filter(|f| f.when == When::UpgraderStart)
        {
            let path = CString::new(self.expand(&f.path)?).map_err(|e| e.to_string())?;
            let text = self.expand_with(f.content.as_deref().unwrap_or(""), Some(marker))?;
            let parts = text.split(marker).map(|s| s.as_bytes().to_vec()).collect();
            early.push((path, parts));
        }
        // What the upgrade starts from: the old generation alive now, the installation
        // (before a `[crash]` run, if there was one: a recovery is judged against it).
        self.live_at_start = self.managed_alive_now();
        if self.sc.crash.is_none() {
            self.env_before = Some(self.installation_tree());
        }
        let run = self.launch(argv, env, early)?;
        self.upgrader = Some(run);
        Ok(())
    }

    /// Spawns the upgrader (its own process group; `early` files written by its own
    /// process before exec), watches it until it exits or times out, and collects it.
    fn launch(
        &mut self,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        early: Vec<(CString, Vec<Vec<u8>>)>,
    ) -> Result<Upgrader, String> {
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).env_clear().envs(env).process_group(0);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: only async-signal-safe calls (prctl, getpid, open, write, close) on
        // buffers prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                let mut buf = [0u8; 24];
                let pid = sys::fmt_pid(libc::getpid(), &mut buf);
                for (path, parts) in &early {
                    let fd = libc::open(
                        path.as_ptr(),
                        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
                        0o644,
                    );
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    for (i, part) in parts.iter().enumerate() {
                        if i > 0 {
                            libc::write(fd, pid.as_ptr().cast(), pid.len());
                        }
                        libc::write(fd, part.as_ptr().cast(), part.len());
                    }
                    libc::close(fd);
                }
                Ok(())
            });
        }
        let start = Instant::now();
        self.note("upgrader", "start", json!({"argv": argv}));
        let watch = SwitchWatch::start(
            self.dir("events").join("upgrader.jsonl"),
            self.live_at_start.clone(),
        );
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("spawning the upgrader {argv:?}: {e}"))?;
        let pid = child.id() as i32;
        let mut so = child.stdout.take().unwrap();
        let mut se = child.stderr.take().unwrap();
        let t_out = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = so.read_to_end(&mut s);
            s
        });
        let t_err = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = se.read_to_end(&mut s);
            s
        });
        let limit = sys::scaled(self.sc.upgrade.timeout.unwrap_or(self.sc.timeout));
        let reaped = self.reaper.wait(pid, start + limit);
        let timed_out = reaped.is_none();
        let reaped = match reaped {
            Some(r) => r,
            None => {
                testkit::kill_group(pid, libc::SIGKILL);
                self.reaper
                    .wait(pid, Instant::now() + Duration::from_secs(5))
                    .ok_or("upgrader unkillable")?
            }
        };
        let duration = start.elapsed();
        self.watched = watch.finish();
        self.timeline.push(Ev {
            mono: reaped.mono_ns,
            source: "upgrader".into(),
            event: "exit".into(),
            fields: json!({"status": sys::describe_status(reaped.status)}),
        });
        // The upgrader's own stragglers (its process group) must not hold the pipes open.
        let out = join_with_timeout(t_out, Duration::from_secs(3), pid);
        let err = join_with_timeout(t_err, Duration::from_secs(3), pid);
        let exit = if libc::WIFEXITED(reaped.status) {
            Some(libc::WEXITSTATUS(reaped.status))
        } else {
            None
        };
        Ok(Upgrader {
            cmdline: argv,
            exit,
            status_text: sys::describe_status(reaped.status),
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: String::from_utf8_lossy(&err).into_owned(),
            duration,
            timed_out,
        })
    }

    fn write_env_script(&self, argv: &[String]) -> Result<(), String> {
        let mut s =
            String::from("# source this to poke at the sandbox with the upgrader's environment\n");
        for (k, v) in &self.env_for_upgrader {
            s.push_str(&format!("export {k}={}\n", shell_quote(v)));
        }
        s.push_str(&format!(
            "# the upgrader run of this scenario:\n# {}\n",
            argv.iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        fs::write(self.sandbox.join("env.sh"), s).map_err(|e| e.to_string())
    }

    fn pause_for_human(&self, argv: &[String]) {
        let sb = self.sandbox.display();
        let mut msg = format!(
            "\n=== paused before the upgrader: {} ===\nsandbox: {sb}\n  . {sb}/env.sh          # the upgrader's environment\n  {}\n  ls -la {sb}/runtime; cat {sb}/events/*.jsonl; cat {sb}/ready/*.json\n",
            self.cfg.name,
            argv.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ")
        );
        for p in &self.procs {
            msg.push_str(&format!(
                "  {} pid {} (spawned {})\n",
                p.name,
                p.pid(),
                p.spawned
            ));
        }
        msg.push_str(&format!(
            "touch {sb}/continue (or press Enter) to run the upgrader\n"
        ));
        eprintln!("{msg}");
        let flag = self.sandbox.join("continue");
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            let _ = tx.send(());
        });
        while !flag.exists() && rx.try_recv().is_err() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn join_with_timeout(h: std::thread::JoinHandle<Vec<u8>>, limit: Duration, pgid: i32) -> Vec<u8> {
    let deadline = Instant::now() + limit;
    while !h.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if !h.is_finished() {
        // Something in the upgrader's group still holds the pipe: kill the group.
        testkit::kill_group(pgid, libc::SIGKILL);
    }
    h.join().unwrap_or_default()
}

/// Quote for a POSIX shell (only when needed).
pub(super) fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}
