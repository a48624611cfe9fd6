//! A server's life, in the [0.6.12] order: register (see `registration`), say it is
//! ready, serve (signals, MCP on stdin), and end: SIGTERM, stdin EOF, or a crash, each
//! with the cleanup the real server does (or, by fault, does not).

use std::path::Path;

use serde_json::json;

use crate::cli::Legacy;
use crate::signals::{
    catch, describe_status, drain, make_sig_pipe, poll_ready, set_handler, sigmask,
};
use crate::{hard_exit, locks, pid, util, Server};

impl Server {
    /// The server proper: register, then serve until something ends it.
    pub(crate) fn run(mut self) {
        self.prepare_runtime();
        sigmask(libc::SIG_BLOCK, &[libc::SIGTERM]);
        self.io.sig_rd = make_sig_pipe();
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGCHLD] {
            catch(s);
        }
        let want_presence = !self.cli.web
            && self.cli.legacy != Some(Legacy::Pre0125)
            && self.plan.register.presence();
        if want_presence {
            let digest = if self.cli.bare {
                None
            } else {
                self.place.digest.clone()
            };
            let rt = self.runtime();
            match locks::register_presence(&rt, digest.as_deref(), &self.id.procid) {
                Ok(p) => {
                    self.ev
                        .emit("lock", json!({"kind": "presence", "path": p.path}));
                    self.held.presence = Some(p);
                }
                Err(e) => self.warn(&format!(
                    "Could not record this server in the instance registry ({e})."
                )),
            }
        }
        if self.plan.register.crash_on_start {
            eprintln!("fake-server: crash-on-start");
            self.ev
                .emit("exit", json!({"code": 1, "how": "crash-on-start"}));
            hard_exit(1);
        }
        if self.cli.web {
            self.take_web_pid();
        } else {
            match self.cli.legacy {
                Some(Legacy::Pre0125) => self.take_legacy_exclusive(),
                Some(Legacy::Alias) => self.take_alias(),
                None => self.take_server_pid(),
            }
        }
        if self.plan.register.db_writer {
            self.open_db_writer();
        }
        if let Some(root) = self.plan.register.wiki.clone() {
            self.take_wiki_lock(root);
        }
        self.map_files();
        for _ in 0..self.plan.after.fork_children {
            self.fork_child();
        }
        sigmask(libc::SIG_UNBLOCK, &[libc::SIGTERM]);
        if self.plan.after.child_holds_flock {
            self.hand_lock_to_child();
        }
        if let Some((fd, parent)) = self.family.orphan_parent.take() {
            self.become_orphan(fd, parent);
        }
        self.write_ready();
        if self.plan.after.stopped {
            self.ev.emit("stop-self", json!({}));
            // SAFETY: raise on ourselves.
            unsafe { libc::raise(libc::SIGSTOP) };
            self.ev.emit("continued", json!({}));
        }
        self.main_loop();
    }

    /// A process that becomes the server after a fork gets its own identity and stamp.
    pub(crate) fn become_worker(&mut self) {
        self.id.stamp = util::iso_now();
        self.id.procid = util::hex8();
        self.id.owner_pid = pid();
    }

    pub(crate) fn runtime(&self) -> std::path::PathBuf {
        self.place.runtime.clone().expect("runtime dir")
    }

    /// A startup error: one stderr line, logged, exit `code`.
    pub(crate) fn fail(&self, code: i32, msg: &str) -> ! {
        eprintln!("{msg}");
        self.ev.emit(
            "exit",
            json!({"code": code, "how": "startup-error", "error": msg}),
        );
        hard_exit(code)
    }

    pub(crate) fn warn(&self, msg: &str) {
        eprintln!("WARNING: {msg}");
        self.ev.emit("warning", json!({"message": msg}));
    }

    fn write_ready(&mut self) {
        if self.plan.after.ignore_disposition {
            // The real disposition, as `signal(SIGTERM, SIG_IGN)` in a broken
            // server would set it: the kernel drops SIGTERM, /proc shows SigIgn.
            set_handler(libc::SIGTERM, libc::SIG_IGN);
        }
        if let Some(fd) = self.family.ready_pipe.take() {
            self.report_ready_to_launcher(fd);
            return;
        }
        let Some(path) = &self.cli.ready_file else {
            self.ev.emit("ready", json!({}));
            return;
        };
        if let Err(e) = util::write_json_atomic(path, &self.ready_record()) {
            eprintln!(
                "fake-server: cannot write ready file {}: {e}",
                path.display()
            );
        }
        self.ev.emit("ready", json!({"ready_file": path}));
    }

    /// What the ready file says: this server, the processes of this invocation that are
    /// meant to keep running before it (launcher, supervisor) and what it forked after.
    pub(crate) fn ready_record(&self) -> serde_json::Value {
        let mut pids = self.family.elders.clone();
        pids.push(pid());
        pids.extend(&self.family.children);
        let pid_file = self
            .held
            .pid_path
            .clone()
            .or_else(|| self.held.legacy_path.clone());
        let p = |x: Option<&Path>| x.map(|p| p.to_string_lossy().into_owned());
        json!({
            "pid": pid(),
            "pids": pids,
            "pid_file": p(pid_file.as_deref()),
            "presence": p(self.held.presence.as_ref().map(|p| p.path.as_path())),
            "mode": self.faults.raw,
            "runtime_dir": p(self.place.runtime.as_deref()),
            "started": self.id.stamp,
            "procid": self.id.procid,
            "wiki_locks": self.held.wiki.iter().map(|(p, _)| p).collect::<Vec<_>>(),
        })
    }

    /// Unlink our own files: presence marker first, then web.json, then the pid file
    /// (while still holding its lock), matching the real handler's target order.
    pub(crate) fn cleanup(&mut self) {
        if pid() != self.id.owner_pid {
            return;
        }
        let h = &self.held;
        let files = h.presence.as_ref().map(|p| &p.path).into_iter();
        let files = files
            .chain(&h.web_json)
            .chain(&h.pid_path)
            .chain(&h.extra_unlink);
        for f in files {
            let _ = std::fs::remove_file(f);
        }
    }

    pub(crate) fn exit(&mut self, code: i32, how: &str, clean: bool) -> ! {
        let guarded = pid() != self.id.owner_pid;
        if clean {
            self.cleanup();
        }
        self.ev.emit(
            "exit",
            json!({"code": code, "how": how, "cleaned": clean && !guarded}),
        );
        hard_exit(code)
    }

    /// SIGTERM, as the faults' plan says: ignored, or a replacement first, a delay, then
    /// the cleanup (unless leaked) and the exit code.
    fn on_sigterm(&mut self) {
        let t = self.plan.sigterm.clone();
        if t.ignored {
            self.ev
                .emit("signal", json!({"signal": "SIGTERM", "action": "ignored"}));
            return;
        }
        if self.cli.legacy == Some(Legacy::Pre0125) {
            self.ev
                .emit("signal", json!({"signal": "SIGTERM", "action": "exit"}));
            self.exit(0, "sigterm-legacy-no-unlink", false);
        }
        if t.respawn {
            self.spawn_replacement();
        }
        if let Some(d) = t.delay {
            self.ev.emit(
                "signal",
                json!({"signal": "SIGTERM", "action": "slow-shutdown", "ms": d.as_millis() as u64}),
            );
            std::thread::sleep(d);
        } else if !t.respawn {
            self.ev.emit(
                "signal",
                json!({"signal": "SIGTERM", "action": "cleanup-exit"}),
            );
        }
        if !t.cleanup {
            self.exit(t.code, "sigterm-leak", false);
        }
        let how = if pid() != self.id.owner_pid {
            "sigterm-pid-guarded"
        } else {
            "sigterm-cleanup"
        };
        self.exit(t.code, how, true)
    }

    /// `respawn-on-term`: a replacement with our own arguments, one generation on.
    fn spawn_replacement(&mut self) {
        let next = self.id.generation + 1;
        let mut cmd = std::process::Command::new("/proc/self/exe");
        cmd.args(self.args.iter().skip(1))
            .env("FAKE_SERVER_GENERATION", next.to_string());
        match cmd.spawn() {
            Ok(child) => {
                self.ev
                    .emit("signal", json!({"signal": "SIGTERM", "action": "respawn"}));
                self.ev
                    .emit("respawn", json!({"child": child.id(), "generation": next}));
            }
            Err(e) => eprintln!("fake-server: respawn-on-term failed: {e}"),
        }
    }

    fn main_loop(&mut self) -> ! {
        let watch_stdin = self.io.watch_stdin;
        loop {
            let fds = poll_ready(self.io.sig_rd, watch_stdin, &[], -1);
            for sig in drain(self.io.sig_rd) {
                match sig {
                    libc::SIGTERM => self.on_sigterm(),
                    libc::SIGINT if self.cli.web => {
                        self.ev.emit(
                            "signal",
                            json!({"signal": "SIGINT", "action": "cleanup-exit"}),
                        );
                        self.exit(0, "sigint-cleanup", true);
                    }
                    libc::SIGINT => {
                        // Upstream's asyncio runner cancels, but the blocked stdin reader
                        // thread keeps the process alive until stdin closes.
                        self.io.sigint_seen = true;
                        self.ev.emit(
                            "signal",
                            json!({"signal": "SIGINT", "action": "deferred-until-stdin-eof"}),
                        );
                    }
                    libc::SIGCHLD => self.reap_children(),
                    _ => {}
                }
            }
            if watch_stdin && fds.len() > 1 && fds[1].revents != 0 {
                self.on_stdin(); // MCP requests, or EOF: on_stdin_eof
            }
        }
    }

    fn reap_children(&mut self) {
        loop {
            let mut st = 0;
            // SAFETY: reaping our own children.
            let p = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
            if p <= 0 {
                return;
            }
            self.family.children.retain(|c| *c != p as u32);
            self.ev.emit(
                "child-exit",
                json!({"child": p, "status": describe_status(st)}),
            );
        }
    }

    pub(crate) fn on_stdin_eof(&mut self) -> ! {
        self.ev.emit("stdin-eof", json!({}));
        if self.io.sigint_seen {
            self.cleanup();
            self.ev.emit(
                "exit",
                json!({"signal": "SIGINT", "how": "sigint-after-stdin-eof", "cleaned": true}),
            );
            eprintln!("KeyboardInterrupt");
            set_handler(libc::SIGINT, libc::SIG_DFL);
            sigmask(libc::SIG_UNBLOCK, &[libc::SIGINT]);
            // SAFETY: die by the signal itself, as Python does after KeyboardInterrupt.
            unsafe { libc::raise(libc::SIGINT) };
            hard_exit(130);
        }
        self.exit(0, "stdin-eof", true)
    }
}
