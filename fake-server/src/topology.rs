//! Process trees a server can be part of, beyond the lone server, each built before
//! the server registers (in `faults::Topology` order): `many=N` (one launcher, N
//! servers), `orphan` (its parent is gone), `daemonize`, `zombie` (a launcher that never
//! reaps), `respawn` (an MCP-client-like supervisor); and after it registered:
//! `fork-children`, `child-holds-flock` (a lock heir).

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::signals::{
    catch, describe_status, drain, make_sig_pipe, poll_ready, set_handler, sig_name, sigmask,
};
use crate::{fork, hard_exit, mcp, pid, Server};

fn pipe() -> (RawFd, RawFd) {
    match crate::signals::pipe_cloexec(false) {
        Ok([r, w]) => (r, w),
        Err(e) => crate::die_early(&format!("pipe2: {e}")),
    }
}

fn close(fd: RawFd) {
    // SAFETY: closing a descriptor this process owns.
    unsafe { libc::close(fd) };
}

/// Every child that has exited: (pid, wait status).
fn reap_all() -> Vec<(i32, i32)> {
    let mut out = vec![];
    loop {
        let mut st = 0;
        // SAFETY: reaping our own children without blocking.
        let p = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
        if p <= 0 {
            return out;
        }
        out.push((p, st));
    }
}

impl Server {
    pub(crate) fn daemonize(&mut self) {
        let c1 = fork();
        if c1 > 0 {
            self.ev.emit(
                "fork",
                json!({"child": c1, "role": "daemonize-intermediate"}),
            );
            let mut st = 0;
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(c1, &mut st, 0) };
            self.ev
                .emit("exit", json!({"code": 0, "how": "daemonize-parent"}));
            hard_exit(0);
        }
        // SAFETY: setsid in a fresh child that is not a group leader.
        unsafe { libc::setsid() };
        let g = fork();
        if g > 0 {
            self.ev.emit("fork", json!({"child": g, "role": "daemon"}));
            hard_exit(0);
        }
        // A daemon does not keep its launcher's stdin.
        if let Ok(null) = File::open("/dev/null") {
            // SAFETY: dup2 onto fd 0.
            unsafe { libc::dup2(null.as_raw_fd(), 0) };
        }
        self.io.watch_stdin = false;
        self.become_worker();
    }

    pub(crate) fn zombie_launcher(&mut self) {
        let launcher = pid();
        let child = fork();
        if child > 0 {
            self.ev.emit(
                "fork",
                json!({"child": child, "role": "server", "reaps": false}),
            );
            // Never wait(): SIGCHLD keeps its default disposition, so the exited server
            // stays a zombie for as long as this launcher lives.
            loop {
                // SAFETY: pause just sleeps until a signal.
                unsafe { libc::pause() };
            }
        }
        self.family.elders.push(launcher);
        self.become_worker();
    }

    /// An MCP-client-like supervisor: feeds its worker a stdin pipe, restarts it whenever
    /// it dies (after `delay`), and stops (closing the pipe) on its own SIGTERM/SIGINT or
    /// stdin EOF. Returns only in a worker, which then starts up as the server.
    pub(crate) fn supervise(&mut self, delay: Duration) {
        let sup = pid() as i32;
        let rd = make_sig_pipe();
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGCHLD] {
            catch(s);
        }
        let mut stopping = false;
        let mut generation = 0u32;
        let mut respawn_at: Option<Instant> = None;
        let Some((mut worker, mut to_worker)) = self.spawn_worker(rd, sup, generation) else {
            return;
        };
        self.ev.emit(
            "fork",
            json!({"child": worker, "role": "worker", "generation": 0}),
        );
        let supervisor_stopped = |ev: &crate::util::Events| -> ! {
            ev.emit("exit", json!({"code": 0, "how": "supervisor-stopped"}));
            hard_exit(0)
        };
        let mut watch_stdin = self.io.watch_stdin;
        loop {
            let timeout = respawn_at.map_or(-1, |t| {
                t.saturating_duration_since(Instant::now()).as_millis() as i32
            });
            let fds = poll_ready(rd, watch_stdin, &[], timeout);
            let mut stop_now = false;
            for sig in drain(rd) {
                if sig != libc::SIGCHLD {
                    self.ev.emit(
                        "signal",
                        json!({"signal": sig_name(sig), "action": "stop-worker"}),
                    );
                    stop_now = true;
                    continue;
                }
                for (p, st) in reap_all() {
                    self.ev.emit(
                        "child-exit",
                        json!({"child": p, "status": describe_status(st)}),
                    );
                    if p == worker {
                        worker = -1;
                        close(to_worker);
                        to_worker = -1;
                        if stopping {
                            supervisor_stopped(&self.ev);
                        }
                        respawn_at = Some(Instant::now() + delay);
                    }
                }
            }
            if watch_stdin && fds.len() > 1 && fds[1].revents != 0 && mcp::stdin_eof() {
                watch_stdin = false;
                self.ev.emit("stdin-eof", json!({}));
                stop_now = true;
            }
            if stop_now && !stopping {
                stopping = true;
                respawn_at = None;
                if worker < 0 {
                    supervisor_stopped(&self.ev);
                }
                // Closing the worker's stdin is how an MCP client says goodbye.
                close(to_worker);
                to_worker = -1;
            }
            if respawn_at.is_some_and(|t| Instant::now() >= t) && !stopping {
                respawn_at = None;
                generation += 1;
                let Some((w, fd)) = self.spawn_worker(rd, sup, generation) else {
                    return;
                };
                (worker, to_worker) = (w, fd);
                self.ev.emit(
                    "respawn",
                    json!({"child": worker, "generation": generation}),
                );
            }
        }
    }

    /// Forks a worker whose stdin is a fresh pipe. In the supervisor: the worker's pid
    /// and the pipe's write end. In the worker: None (it goes on to be the server).
    fn spawn_worker(&mut self, sig_rd: RawFd, sup: i32, generation: u32) -> Option<(i32, RawFd)> {
        let (p_rd, p_wr) = pipe();
        let w = fork();
        if w > 0 {
            // The supervisor keeps only the write end.
            close(p_rd);
            return Some((w, p_wr));
        }
        // SAFETY: the read end becomes stdin.
        unsafe { libc::dup2(p_rd, 0) };
        for fd in [p_rd, p_wr, sig_rd] {
            close(fd);
        }
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGCHLD] {
            set_handler(s, libc::SIG_DFL);
        }
        self.family.elders.push(sup as u32);
        // The worker's stdin is our pipe, whatever --no-stdin says: closing it is how the
        // supervisor stops the worker.
        self.io.watch_stdin = true;
        self.id.generation = generation;
        self.become_worker();
        None
    }

    pub(crate) fn fork_child(&mut self) {
        let c = fork();
        if c == 0 {
            // SAFETY: child side: drop the self-pipe so signals take default action.
            unsafe { libc::close(self.io.sig_rd) };
            for s in [libc::SIGTERM, libc::SIGINT, libc::SIGCHLD] {
                set_handler(s, libc::SIG_DFL);
            }
            sigmask(libc::SIG_UNBLOCK, &[libc::SIGTERM]);
            if self.plan.after.children_close_lock {
                // Closing our reference does not unlock (the parent still holds the open
                // file description); it just means this child no longer keeps it alive.
                drop(self.held.pid_fd.take());
                drop(self.held.presence.take());
                drop(self.held.legacy_fd.take());
            }
            loop {
                // SAFETY: idle until a signal kills us.
                unsafe { libc::pause() };
            }
        }
        self.ev.emit(
            "fork",
            json!({"child": c, "role": "child", "holds_lock": !self.plan.after.children_close_lock}),
        );
        self.family.children.push(c as u32);
    }

    /// Fork an heir that inherits the locked descriptors; the original exits without
    /// unlinking anything, so the pid file names a dead pid whose lock is still held.
    pub(crate) fn hand_lock_to_child(&mut self) {
        let parent = pid();
        let c = fork();
        if c > 0 {
            self.ev
                .emit("fork", json!({"child": c, "role": "lock-heir"}));
            self.ev.emit(
                "exit",
                json!({"code": 0, "how": "parent-exit-child-holds-flock"}),
            );
            hard_exit(0);
        }
        // A fresh self-pipe: a signal aimed at the exiting parent must not reach the heir.
        let inherited = self.io.sig_rd;
        self.io.sig_rd = make_sig_pipe();
        // SAFETY: closing the inherited read end, which this process owns a copy of.
        unsafe { libc::close(inherited) };
        // Ready only once the parent is really gone (re-parented), so harnesses can rely on it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while nix::unistd::getppid().as_raw() as u32 == parent && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// `many=N`: this process becomes a launcher (an MCP host with N registrations, as
    /// upstream saw 88 on one host) that forks N servers. They share its stdin and its
    /// store, so one wins the pid lock and the others run as secondaries (warning,
    /// presence marker only). Each worker returns from here and starts up as a server;
    /// the launcher collects their ready records and writes one ready file: the
    /// primary's record, with `pids` [launcher, every server (the primary first) and what
    /// it forked] and `servers` every record. It exits 0 once every server is gone, or on SIGTERM/SIGINT (leaving them).
    pub(crate) fn many_launcher(&mut self, n: u32) {
        let launcher = pid();
        let (rd, wr) = pipe();
        let mut kids = Vec::new();
        for i in 0..n {
            let c = fork();
            if c == 0 {
                close(rd);
                self.family.ready_pipe = Some(wr);
                self.family.elders.push(launcher);
                self.become_worker();
                return;
            }
            self.ev
                .emit("fork", json!({"child": c, "role": "server", "index": i}));
            kids.push(c);
        }
        close(wr);
        // The launcher's stdin belongs to its servers: it never reads it.
        self.io.watch_stdin = false;
        let sig_rd = make_sig_pipe();
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGCHLD] {
            catch(s);
        }
        let records = collect_ready(rd, n as usize, Instant::now() + Duration::from_secs(60));
        close(rd);
        if records.len() < n as usize {
            self.warn(&format!(
                "many: {} of {n} servers reported ready",
                records.len()
            ));
        }
        // The primary (the one holding the pid file) first: `pid` names it, and every
        // pid after the launcher is a server or something a server forked.
        let mut records = records;
        if let Some(i) = records.iter().position(|r| !r["pid_file"].is_null()) {
            let primary = records.remove(i);
            records.insert(0, primary);
        }
        let mut pids = vec![launcher as i64];
        for r in &records {
            for p in r["pids"].as_array().into_iter().flatten() {
                if let Some(p) = p.as_i64().filter(|p| *p != launcher as i64) {
                    pids.push(p);
                }
            }
        }
        let mut ready = records.first().cloned().unwrap_or_else(|| json!({}));
        ready["pid"] = json!(records.first().map_or(kids[0] as i64, |r| r["pid"]
            .as_i64()
            .unwrap_or(kids[0] as i64)));
        ready["pids"] = json!(pids);
        ready["servers"] = json!(records);
        ready["mode"] = json!(self.faults.raw);
        match &self.cli.ready_file {
            Some(path) => {
                if let Err(e) = crate::util::write_json_atomic(path, &ready) {
                    eprintln!(
                        "fake-server: cannot write ready file {}: {e}",
                        path.display()
                    );
                }
                self.ev
                    .emit("ready", json!({"ready_file": path, "servers": n}));
            }
            None => self.ev.emit("ready", json!({"servers": n})),
        }
        let mut live = kids.len();
        loop {
            let mut fds = [libc::pollfd {
                fd: sig_rd,
                events: libc::POLLIN,
                revents: 0,
            }];
            // SAFETY: poll on our own array. A timeout catches a SIGCHLD that came
            // before the handler was installed.
            unsafe { libc::poll(fds.as_mut_ptr(), 1, 1000) };
            for sig in drain(sig_rd) {
                if sig != libc::SIGCHLD {
                    self.ev.emit(
                        "signal",
                        json!({"signal": sig_name(sig), "action": "launcher-exit"}),
                    );
                    self.ev
                        .emit("exit", json!({"code": 0, "how": "many-launcher-signalled"}));
                    hard_exit(0);
                }
            }
            loop {
                let mut st = 0;
                // SAFETY: reaping our own children.
                let p = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
                if p <= 0 {
                    break;
                }
                self.ev.emit(
                    "child-exit",
                    json!({"child": p, "status": describe_status(st)}),
                );
                if kids.contains(&p) {
                    live -= 1;
                }
            }
            if live == 0 {
                self.ev
                    .emit("exit", json!({"code": 0, "how": "many-launcher-done"}));
                hard_exit(0);
            }
        }
    }

    /// `many`: the worker's ready record goes to the launcher, one JSON line.
    pub(crate) fn report_ready_to_launcher(&self, fd: RawFd) {
        let mut line = self.ready_record().to_string();
        line.push('\n');
        // SAFETY: one write of our own buffer (under PIPE_BUF for any sane record, so
        // lines of several workers never interleave), then our end is closed.
        unsafe {
            libc::write(fd, line.as_ptr().cast(), line.len());
            libc::close(fd);
        }
        self.ev.emit("ready", json!({"to": "launcher"}));
    }

    /// `orphan`: the spawned process A forks B (standing for the MCP client), which forks
    /// C, the server. C registers (its presence marker records B as its parent); then B
    /// exits, A reaps it and exits 0, and C is re-parented (to the nearest subreaper, or
    /// init) with its stdin still open, as after a client that died without closing it
    /// (#440). Returns in C.
    pub(crate) fn orphan_fork(&mut self) {
        let b = fork();
        if b > 0 {
            self.ev
                .emit("fork", json!({"child": b, "role": "orphan-client"}));
            let mut st = 0;
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(b, &mut st, 0) };
            self.ev.emit(
                "child-exit",
                json!({"child": b, "status": describe_status(st)}),
            );
            self.ev
                .emit("exit", json!({"code": 0, "how": "orphan-launcher"}));
            hard_exit(0);
        }
        let client = pid() as i32;
        let (rd, wr) = pipe();
        let c = fork();
        if c > 0 {
            close(wr);
            self.ev.emit("fork", json!({"child": c, "role": "server"}));
            // Wait until the server registered (a byte), or died (EOF).
            let mut b = [0u8; 1];
            // SAFETY: a blocking read of our pipe.
            unsafe { libc::read(rd, b.as_mut_ptr().cast(), 1) };
            self.ev
                .emit("exit", json!({"code": 0, "how": "orphan-parent-gone"}));
            hard_exit(0);
        }
        close(rd);
        self.family.orphan_parent = Some((wr, client));
        self.become_worker();
    }

    /// `orphan`, in the server once it registered: let the parent go and wait until it
    /// is gone, so the ready file is written by an orphan.
    pub(crate) fn become_orphan(&mut self, fd: RawFd, parent: i32) {
        // SAFETY: one byte to our parent, then our end is closed.
        unsafe {
            libc::write(fd, b"r".as_ptr().cast(), 1);
            libc::close(fd);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while nix::unistd::getppid().as_raw() == parent && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.ev.emit(
            "orphaned",
            json!({"parent_was": parent, "ppid": nix::unistd::getppid().as_raw()}),
        );
    }
}

/// Reads `n` JSON lines from `fd` (or until every writer is gone, or the deadline).
fn collect_ready(fd: RawFd, n: usize, deadline: Instant) -> Vec<Value> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut fds = [libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: poll on our own array.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 1, left.as_millis().min(1000) as i32) };
        if r <= 0 {
            continue;
        }
        let mut chunk = [0u8; 4096];
        // SAFETY: reading into our buffer.
        let got = unsafe { libc::read(fd, chunk.as_mut_ptr().cast(), chunk.len()) };
        if got == 0 {
            break;
        }
        if got < 0 {
            continue;
        }
        buf.extend_from_slice(&chunk[..got as usize]);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            if let Ok(v) = serde_json::from_slice(&line) {
                out.push(v);
            }
        }
    }
    out
}
