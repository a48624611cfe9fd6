//! Starting what the scenario declares, in order (bystanders, servers, hosts), each in
//! its process group with `PR_SET_PDEATHSIG`, and waiting for each to be ready through
//! its ready file or event log, with a deadline (never a sleep); then the list of the
//! old generation the upgrade must stop.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::evidence::{read_jsonl, Ev};
use super::matching::ev_matches;
use super::{Managed, Proc, Runner};
use crate::model::{Group, Pattern, Readiness, Server, Stdin};
use crate::sys;

impl Runner {
    /// The process group a `group` key asks for: 0 (a new one) or an earlier process's.
    fn group_of(&self, g: &Group) -> Result<i32, String> {
        match g {
            Group::Own => Ok(0),
            Group::SharedWith(name) => self
                .proc_named(name)
                .map(|p| p.pgid)
                .ok_or_else(|| format!("group shared-with:{name}: {name} is not started yet")),
        }
    }

    pub(super) fn start_bystanders(&mut self) -> Result<(), String> {
        for b in self.sc.bystanders.clone() {
            let argv: Vec<String> = if b.command.is_empty() {
                vec!["sleep".into(), "300".into()]
            } else {
                self.expand_all(&b.command)?
            };
            let pg = self.group_of(&b.group)?;
            let mut cmd = Command::new(&argv[0]);
            cmd.args(&argv[1..])
                .env_clear()
                .envs(self.base_env())
                .process_group(pg);
            let out = self.dir("logs").join(format!("{}.out", b.name));
            let err = self.dir("logs").join(format!("{}.err", b.name));
            cmd.stdin(Stdio::null())
                .stdout(create(&out)?)
                .stderr(create(&err)?);
            let lock = self.inherit_lock(&mut cmd, b.lock.as_deref(), "bystander")?;
            let child = cmd
                .spawn()
                .map_err(|e| format!("bystander {}: {argv:?}: {e}", b.name))?;
            drop(lock); // the bystander is now the only holder
            let pid = child.id() as i32;
            self.note(&b.name, "spawned", json!({"pid": pid, "argv": argv}));
            self.procs.push(Proc {
                name: b.name.clone(),
                is_server: false,
                spawned: pid,
                ready: None,
                pgid: if pg == 0 { pid } else { pg },
                events: PathBuf::new(),
                stderr: err,
                spec: None,
                host_log: None,
            });
        }
        Ok(())
    }

    /// Take the flock a `lock = "<path>"` spec names, and make the child inherit it (as
    /// fd 200) and die with the runner. The caller drops the returned file after the
    /// spawn, so the child is the only holder.
    fn inherit_lock(
        &self,
        cmd: &mut Command,
        spec: Option<&str>,
        what: &str,
    ) -> Result<Option<fs::File>, String> {
        let lock = match spec {
            Some(p) => {
                let path = PathBuf::from(self.expand(p)?);
                Some(
                    testkit::flock::lock_exclusive(&path)
                        .map_err(|e| format!("{what} lock {}: {e}", path.display()))?,
                )
            }
            None => None,
        };
        let lock_fd = lock.as_ref().map(|f| f.as_raw_fd());
        // SAFETY: prctl and dup2 are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if let Some(fd) = lock_fd {
                    // dup2 clears close-on-exec: the child inherits the lock.
                    if libc::dup2(fd, 200) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Ok(lock)
    }

    /// fake-server's arguments for `[[server]]` `s`.
    fn server_argv(&self, s: &Server, ready: &Path, events: &Path) -> Result<Vec<String>, String> {
        let text = |p: &Path| p.to_string_lossy().into_owned();
        let mut argv: Vec<String> = vec![
            "--runtime-dir".into(),
            text(self.dir("runtime")),
            "--store".into(),
            self.store_of(s)?,
            "--ready-file".into(),
            text(ready),
            "--events".into(),
            text(events),
        ];
        if s.web {
            argv.push("--web".into());
            if let Some(p) = s.port {
                argv.extend(["--port".into(), p.to_string()]);
            }
        }
        if let Some(l) = s.legacy {
            argv.extend(["--legacy".into(), l.as_str().into()]);
        }
        if s.bare {
            argv.push("--bare".into());
        }
        for m in &s.modes {
            argv.extend(["--mode".into(), self.expand(m)?]);
        }
        argv.extend(self.expand_all(&s.args)?);
        Ok(argv)
    }

    pub(super) fn start_servers(&mut self) -> Result<(), String> {
        for s in self.sc.servers.clone() {
            let ready = self.dir("ready").join(format!("{}.json", s.name));
            let events = self.dir("events").join(format!("{}.jsonl", s.name));
            let out = self.dir("logs").join(format!("{}.out", s.name));
            let err = self.dir("logs").join(format!("{}.err", s.name));
            let pg = self.group_of(&s.group)?;
            let mut cmd = if s.command.is_empty() {
                let mut c = Command::new(self.fake("fake-server"));
                c.args(self.server_argv(&s, &ready, &events)?);
                c
            } else {
                let a = self.expand_all(&s.command)?;
                let mut c = Command::new(&a[0]);
                c.args(&a[1..]);
                c
            };
            cmd.env_clear().envs(self.base_env()).process_group(pg);
            let lock = self.inherit_lock(&mut cmd, s.lock.as_deref(), "server")?;
            for (k, v) in &s.env {
                cmd.env(k, self.expand(v)?);
            }
            cmd.stdout(create(&out)?).stderr(create(&err)?);
            cmd.stdin(match s.stdin {
                Stdin::Pipe => Stdio::piped(),
                Stdin::Null => Stdio::null(),
            });
            let mut child = cmd.spawn().map_err(|e| format!("server {}: {e}", s.name))?;
            drop(lock);
            if let Some(stdin) = child.stdin.take() {
                self.stdins.push(stdin);
            }
            let pid = child.id() as i32;
            self.note(&s.name, "spawned", json!({"pid": pid}));
            let mut p = Proc {
                name: s.name.clone(),
                is_server: true,
                spawned: pid,
                ready: None,
                pgid: if pg == 0 { pid } else { pg },
                events,
                stderr: err,
                spec: Some(s.clone()),
                host_log: None,
            };
            let waited = self.await_server(&mut p, &s.ready, &ready);
            if let Err(e) = waited {
                self.procs.push(p);
                return Err(e);
            }
            self.note(
                &s.name,
                "runner-ready",
                p.ready.clone().unwrap_or(Value::Null),
            );
            self.procs.push(p);
        }
        Ok(())
    }

    /// Readiness as `ready` says, within 10 s (scaled).
    fn await_server(&self, p: &mut Proc, how: &Readiness, ready: &Path) -> Result<(), String> {
        let limit = sys::scaled(10.0);
        let deadline = Instant::now() + limit;
        let name = p.name.clone();
        match how {
            Readiness::File => loop {
                if p.ready_from_file(ready, Instant::now()) {
                    return Ok(());
                }
                if let Some(r) = self.reaper.get(p.spawned) {
                    // A launcher may exit after its daemon is ready; give the file a moment.
                    if p.ready_from_file(ready, Instant::now() + sys::scaled(2.0)) {
                        return Ok(());
                    }
                    return Err(format!(
                        "server {name} exited before it was ready: {}\n{}",
                        sys::describe_status(r.status),
                        fs::read_to_string(&p.stderr).unwrap_or_default()
                    ));
                }
                if Instant::now() >= deadline {
                    return Err(format!("server {name} not ready within {limit:?}"));
                }
                std::thread::sleep(Duration::from_millis(3));
            },
            Readiness::Exit => {
                if self.reaper.wait(p.spawned, deadline).is_none() {
                    return Err(format!("server {name} did not exit (ready = \"exit\")"));
                }
                p.ready_from_file(ready, Instant::now());
                Ok(())
            }
            Readiness::None => Ok(()),
            Readiness::Event { event, detail } => {
                let pat = Pattern {
                    source: name.clone(),
                    event: event.clone(),
                    detail: detail.clone(),
                };
                let seen = || {
                    read_jsonl(&p.events).into_iter().any(|v| {
                        let ev = Ev {
                            mono: 0,
                            source: name.clone(),
                            event: v["event"].as_str().unwrap_or("").to_string(),
                            fields: v,
                        };
                        ev_matches(&ev, &pat, pat.detail.as_deref())
                    })
                };
                if testkit::wait_until(limit, seen) {
                    Ok(())
                } else {
                    Err(format!("server {name}: no event {pat} within {limit:?}"))
                }
            }
        }
    }

    /// `[[host]]`: fake-host running the sandbox's installed `memtomem-server` (its
    /// servers find the runtime dir and their event log through the environment). Counted
    /// as a server: the session running now is one of the old generation.
    pub(super) fn start_hosts(&mut self) -> Result<(), String> {
        for h in self.sc.hosts.clone() {
            let ready = self.dir("ready").join(format!("{}.json", h.name));
            let events = self.dir("events").join(format!("{}.jsonl", h.name));
            let log = self.dir("events").join(format!("{}.host.jsonl", h.name));
            let out = self.dir("logs").join(format!("{}.out", h.name));
            let err = self.dir("logs").join(format!("{}.err", h.name));
            let command: Vec<String> = if h.command.is_empty() {
                vec![self
                    .dir("toolbin")
                    .join("memtomem-server")
                    .to_string_lossy()
                    .into_owned()]
            } else {
                self.expand_all(&h.command)?
            };
            let mut cmd = Command::new(self.fake("fake-host"));
            cmd.arg("--log")
                .arg(&log)
                .arg("--ready-file")
                .arg(&ready)
                .args(["--ping-ms", &h.ping_ms.to_string()])
                .args(["--respawn-ms", &h.respawn_ms.to_string()])
                .args(["--max-spawns", &h.max_spawns.to_string()])
                .arg("--")
                .args(&command)
                .env_clear()
                .envs(self.base_env())
                .env("FAKE_SERVER_RUNTIME_DIR", self.dir("runtime"))
                .env("FAKE_SERVER_EVENTS", &events)
                .process_group(0)
                .stdin(Stdio::piped())
                .stdout(create(&out)?)
                .stderr(create(&err)?);
            self.inherit_lock(&mut cmd, None, "host")?;
            let mut child = cmd.spawn().map_err(|e| format!("host {}: {e}", h.name))?;
            if let Some(stdin) = child.stdin.take() {
                self.stdins.push(stdin);
            }
            let pid = child.id() as i32;
            self.note(&h.name, "spawned", json!({"pid": pid, "argv": command}));
            let spec: Server =
                toml::from_str(&format!("name = {}", toml::Value::from(h.name.as_str())))
                    .map_err(|e| e.to_string())?;
            let mut p = Proc {
                name: h.name.clone(),
                is_server: true,
                spawned: pid,
                ready: None,
                pgid: pid,
                events,
                stderr: err,
                spec: Some(spec),
                host_log: Some(log),
            };
            let limit = sys::scaled(10.0);
            if !p.ready_from_file(&ready, Instant::now() + limit) {
                let msg = format!(
                    "host {}: no session within {limit:?} ({}): {}",
                    h.name,
                    self.reaper
                        .get(pid)
                        .map_or("running".into(), |r| sys::describe_status(r.status)),
                    fs::read_to_string(&p.stderr).unwrap_or_default()
                );
                self.procs.push(p);
                return Err(msg);
            }
            self.note(
                &h.name,
                "runner-ready",
                p.ready.clone().unwrap_or(Value::Null),
            );
            self.procs.push(p);
        }
        Ok(())
    }

    /// The managed pids, one a line, for the fake uv (an in-place install while any of
    /// them lives fails with 97).
    pub(super) fn write_managed_pids(&self) -> Result<PathBuf, String> {
        let pids: Vec<i32> = self
            .procs
            .iter()
            .filter(|p| p.managed())
            .flat_map(Proc::own_pids)
            .collect();
        let path = self.sandbox.join("managed-pids");
        fs::write(
            &path,
            pids.iter().map(|p| format!("{p}\n")).collect::<String>(),
        )
        .map_err(|e| e.to_string())?;
        Ok(path)
    }

    /// The managed processes (servers and what they forked) alive right now.
    pub(super) fn managed_alive_now(&self) -> Vec<Managed> {
        let mut out = vec![];
        for p in self.procs.iter().filter(|p| p.managed()) {
            for pid in p.own_pids() {
                if let Some(start) = testkit::proc::live_start(pid) {
                    out.push(Managed {
                        pid,
                        start,
                        server: p.name.clone(),
                        main: pid == p.pid(),
                    });
                }
            }
        }
        out
    }
}

fn create(path: &Path) -> Result<fs::File, String> {
    fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))
}
