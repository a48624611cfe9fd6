//! Calling uv: locating it, bounded runs of it (and of other programs), and
//! what it installed. The install itself is staged and switched by [`crate::txn`].

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The package name on PyPI and in uv's tool dir.
pub const PACKAGE: &str = "memtomem";

/// Why a uv call failed. Each has its own message and exit class.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UvError {
    #[error("uv not found ({0}). Install uv (https://docs.astral.sh/uv/) and retry.")]
    Missing(String),
    #[error("cannot run {program}: {error}")]
    Spawn { program: String, error: String },
    #[error("{what} timed out after {secs}s")]
    Timeout { what: String, secs: u64 },
    #[error("{what} was interrupted by {signal}")]
    Interrupted { what: String, signal: &'static str },
    #[error("{what} failed (rc={code})")]
    Failed {
        what: String,
        code: i32,
        stderr: String,
    },
}

impl UvError {
    pub fn stderr(&self) -> Option<&str> {
        match self {
            UvError::Failed { stderr, .. } => Some(stderr),
            _ => None,
        }
    }
}

/// How to call uv.
#[derive(Debug, Clone)]
pub struct Uv {
    pub program: PathBuf,
    pub timeout: Duration,
    /// Stop waiting (and stop uv) when an interrupt arrives; off for the
    /// install itself, which always runs to its end.
    pub interruptible: bool,
}

/// Output of a finished uv call.
#[derive(Debug, Clone)]
pub struct UvOutput {
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Uv {
    /// Find uv: an explicit path, else `uv` on `PATH`.
    pub fn locate(
        explicit: Option<&Path>,
        path_var: Option<&std::ffi::OsStr>,
        timeout: Duration,
    ) -> Result<Uv, UvError> {
        let found = match explicit {
            Some(p) => crate::sys::which(&p.to_string_lossy(), path_var).ok_or_else(|| {
                UvError::Missing(format!("{} is not an executable file", p.display()))
            })?,
            None => crate::sys::which("uv", path_var)
                .ok_or_else(|| UvError::Missing("`uv` is not on PATH".into()))?,
        };
        Ok(Uv {
            program: found,
            timeout,
            interruptible: true,
        })
    }

    /// Run uv with `args` (and extra environment), bounded by the timeout.
    pub fn run(
        &self,
        what: &str,
        args: &[String],
        envs: &[(OsString, OsString)],
        timeout: Duration,
    ) -> Result<UvOutput, UvError> {
        run_bounded(&self.program, self.interruptible, what, args, envs, timeout)
    }

    /// `uv tool dir` and `uv tool dir --bin`.
    pub fn tool_dirs(&self) -> Result<(PathBuf, Option<PathBuf>), UvError> {
        let t = Duration::from_secs(10);
        // Both questions at once: each uv start costs milliseconds.
        let me = self.clone();
        let bin_q = std::thread::spawn(move || {
            me.run(
                "uv tool dir --bin",
                &["tool".into(), "dir".into(), "--bin".into()],
                &[],
                t,
            )
        });
        let dir = self.run("uv tool dir", &["tool".into(), "dir".into()], &[], t)?;
        let bin = bin_q
            .join()
            .ok()
            .and_then(Result::ok)
            .map(|o| PathBuf::from(o.stdout.trim()))
            .filter(|p| !p.as_os_str().is_empty());
        Ok((PathBuf::from(dir.stdout.trim()), bin))
    }
}

/// Run `program` with `args` (and extra environment), stdin closed, its
/// output drained on threads, bounded by `timeout`. It runs in its own
/// process group, so a timeout (or, when `interruptible`, an interrupt)
/// stops all of it. The output is collected with deadlines, never by joining
/// the readers: a grandchild holding the pipes open (even one that left the
/// group) cannot make the call outlast its bound by more than a second.
/// Output that is not UTF-8 is decoded lossily.
pub fn run_bounded(
    program: &Path,
    interruptible: bool,
    what: &str,
    args: &[String],
    envs: &[(OsString, OsString)],
    timeout: Duration,
) -> Result<UvOutput, UvError> {
    let started = Instant::now();
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    crate::sys::die_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            UvError::Missing(format!("{} does not exist", program.display()))
        } else {
            UvError::Spawn {
                program: program.display().to_string(),
                error: e.to_string(),
            }
        }
    })?;
    let mut pipes = Pipes::drain(child.stdout.take(), child.stderr.take());
    let pid = child.id() as i32;
    let abort = move || interruptible && crate::interrupt::requested().is_some();
    // Waited for without reaping, in slices (see sys::Bounded).
    let exited =
        crate::sys::Bounded::wait_exit(&crate::sys::ChildWaiter::new(pid), timeout, &abort);
    if !exited {
        // The child leads its own group (process_group(0) above).
        crate::sys::kill_group(pid);
        let _ = child.wait();
        // The output is not reported; a grandchild that left the group may
        // hold the pipes open, so the readers are abandoned, never joined.
        if let Some(sig) = crate::interrupt::requested().filter(|_| interruptible) {
            return Err(UvError::Interrupted {
                what: what.to_string(),
                signal: crate::interrupt::name(sig),
            });
        }
        return Err(UvError::Timeout {
            what: what.to_string(),
            secs: timeout.as_secs(),
        });
    }
    // What the child wrote is in the pipes; only a process it left behind can
    // keep them open. Such a process in its group is killed (the unreaped
    // child keeps the group id ours); one that left the group (setsid) is
    // not waited for: its readers are abandoned.
    if !pipes.collect_for(PIPE_DRAIN) {
        // The child, a zombie not yet reaped, still leads its group.
        crate::sys::kill_group(pid);
        pipes.collect_for(PIPE_DRAIN_AFTER_KILL);
    }
    let status = child.wait().map_err(|e| UvError::Spawn {
        program: program.display().to_string(),
        error: e.to_string(),
    })?;
    let [stdout, stderr] = pipes.text();
    if !status.success() {
        use std::os::unix::process::ExitStatusExt;
        let code = status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        return Err(UvError::Failed {
            what: what.to_string(),
            code,
            stderr,
        });
    }
    Ok(UvOutput {
        stdout,
        stderr,
        elapsed: started.elapsed(),
    })
}

/// How long the pipes may stay open after the child exited.
const PIPE_DRAIN: Duration = Duration::from_secs(1);
/// ... and after its group was killed.
const PIPE_DRAIN_AFTER_KILL: Duration = Duration::from_millis(200);

/// A child's stdout and stderr, read on threads that send what they read,
/// so the caller collects with a deadline and never blocks on a pipe that a
/// grandchild keeps open.
struct Pipes {
    rx: mpsc::Receiver<(usize, Option<Vec<u8>>)>,
    bytes: [Vec<u8>; 2],
    open: usize,
}

impl Pipes {
    fn drain(out: Option<ChildStdout>, err: Option<ChildStderr>) -> Pipes {
        let (tx, rx) = mpsc::channel();
        let mut open = 0;
        let readers: [Option<Box<dyn Read + Send>>; 2] = [
            out.map(|p| Box::new(p) as Box<dyn Read + Send>),
            err.map(|p| Box::new(p) as Box<dyn Read + Send>),
        ];
        for (i, pipe) in readers.into_iter().enumerate() {
            let Some(mut pipe) = pipe else { continue };
            open += 1;
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match pipe.read(&mut buf) {
                        Ok(0) => break,
                        // A dropped receiver: abandoned; stop reading.
                        Ok(n) => {
                            if tx.send((i, Some(buf[..n].to_vec()))).is_err() {
                                return;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                let _ = tx.send((i, None));
            });
        }
        Pipes {
            rx,
            bytes: [Vec::new(), Vec::new()],
            open,
        }
    }

    /// Collect output until both pipes are at their end (true) or `limit`
    /// has passed (false).
    fn collect_for(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.open > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((i, Some(chunk))) => self.bytes[i].extend_from_slice(&chunk),
                Ok((_, None)) => self.open -= 1,
                Err(mpsc::RecvTimeoutError::Timeout) => return false,
                Err(mpsc::RecvTimeoutError::Disconnected) => self.open = 0,
            }
        }
        true
    }

    /// stdout and stderr as text; bytes that are not UTF-8 become U+FFFD
    /// instead of losing the whole stream.
    fn text(&self) -> [String; 2] {
        self.bytes
            .each_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }
}

/// `--extras`: `none` or empty means a bare install; otherwise a comma list
/// (case preserved, blanks dropped).
pub fn parse_extras_flag(s: &str) -> Vec<String> {
    if s.trim().eq_ignore_ascii_case("none") || s.trim().is_empty() {
        return vec![];
    }
    s.split(',')
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect()
}

/// The installed version, from `<tool dir>/memtomem/lib/python*/site-packages/memtomem-<V>.dist-info`.
pub fn installed_version(tool_dir: &Path) -> Option<String> {
    env_version(&tool_dir.join(PACKAGE))
}

/// The memtomem version of a Python environment (a venv root), from its
/// `lib/python*/site-packages/memtomem-<V>.dist-info`; nothing is run.
pub fn env_version(env: &Path) -> Option<String> {
    let lib = env.join("lib");
    for py in fs::read_dir(&lib).ok()?.flatten() {
        let site = py.path().join("site-packages");
        let Ok(entries) = fs::read_dir(&site) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(v) = name
                .strip_prefix("memtomem-")
                .and_then(|r| r.strip_suffix(".dist-info"))
            {
                return Some(v.to_string());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extras_flag() {
        assert!(parse_extras_flag("none").is_empty());
        assert!(parse_extras_flag(" NONE ").is_empty());
        assert_eq!(parse_extras_flag("onnx, Web,,"), vec!["onnx", "Web"]);
    }

    #[test]
    fn version_from_dist_info() {
        let tmp = tempfile::tempdir().unwrap();
        let site = tmp
            .path()
            .join("memtomem/lib/python3.12/site-packages/memtomem-0.6.12.dist-info");
        fs::create_dir_all(&site).unwrap();
        assert_eq!(installed_version(tmp.path()).as_deref(), Some("0.6.12"));
    }

    #[test]
    fn uv_errors_are_distinct() {
        let missing = Uv::locate(
            Some(Path::new("/nonexistent/uv")),
            None,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(missing, UvError::Missing(_)));
        let sh = Uv {
            program: "/bin/sh".into(),
            timeout: Duration::from_secs(5),
            interruptible: true,
        };
        let err = sh
            .run(
                "x",
                &["-c".into(), "echo boom >&2; exit 3".into()],
                &[],
                Duration::from_secs(5),
            )
            .unwrap_err();
        assert_eq!(
            err,
            UvError::Failed {
                what: "x".into(),
                code: 3,
                stderr: "boom\n".into()
            }
        );
        let err = sh
            .run(
                "x",
                &["-c".into(), "sleep 30".into()],
                &[],
                Duration::from_millis(200),
            )
            .unwrap_err();
        assert!(matches!(err, UvError::Timeout { .. }));
        let ok = sh
            .run(
                "x",
                &["-c".into(), "echo hi".into()],
                &[],
                Duration::from_secs(5),
            )
            .unwrap();
        assert_eq!(ok.stdout, "hi\n");
    }

    fn sh() -> Uv {
        Uv {
            program: "/bin/sh".into(),
            timeout: Duration::from_secs(5),
            interruptible: true,
        }
    }

    /// A grandchild that keeps the child's stdout and stderr open: the pid it
    /// writes to a file is SIGKILLed when the test ends, panic included.
    struct Grandchild {
        _dir: tempfile::TempDir,
        pid_file: PathBuf,
    }

    impl Grandchild {
        fn new() -> Grandchild {
            let dir = tempfile::tempdir().unwrap();
            let pid_file = dir.path().join("grandchild.pid");
            Grandchild {
                _dir: dir,
                pid_file,
            }
        }

        /// A shell script that starts `sleep 30` in the background (in a
        /// session of its own with `setsid`), waits for its pid, then `then`.
        fn script(&self, setsid: bool, then: &str) -> String {
            let f = self.pid_file.display();
            format!(
                "{} sh -c 'echo $$ > {f}.tmp && mv {f}.tmp {f} && exec sleep 30' & \
                 while [ ! -s {f} ]; do sleep 0.01; done; {then}",
                if setsid { "setsid" } else { "" }
            )
        }

        fn pid(&self) -> Option<i32> {
            fs::read_to_string(&self.pid_file).ok()?.trim().parse().ok()
        }

        /// Running (not gone, not a zombie) and still the `sleep` we started.
        fn alive(&self) -> bool {
            let Some(pid) = self.pid() else { return false };
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.contains("(sleep)") && !stat.contains(") Z")
        }
    }

    impl Drop for Grandchild {
        fn drop(&mut self) {
            if let Some(pid) = self.pid().filter(|p| *p > 1 && self.alive()) {
                // A plain kill of the sleep this test started.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    #[test]
    fn a_grandchild_that_left_the_group_with_the_pipes_open_does_not_hold_up_the_call() {
        let g = Grandchild::new();
        let t0 = Instant::now();
        let ok = sh()
            .run(
                "x",
                &["-c".into(), g.script(true, "echo hi")],
                &[],
                Duration::from_secs(20),
            )
            .unwrap();
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        assert_eq!(ok.stdout, "hi\n");
        assert!(g.alive(), "out of our group: not ours to kill");
    }

    #[test]
    fn a_grandchild_in_the_group_holding_the_pipes_is_killed_with_the_group() {
        let g = Grandchild::new();
        let t0 = Instant::now();
        let err = sh()
            .run(
                "x",
                &["-c".into(), g.script(false, "echo boom >&2; exit 4")],
                &[],
                Duration::from_secs(20),
            )
            .unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        assert_eq!(
            err,
            UvError::Failed {
                what: "x".into(),
                code: 4,
                stderr: "boom\n".into()
            }
        );
        let gone = Instant::now() + Duration::from_secs(5);
        while g.alive() && Instant::now() < gone {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!g.alive());
    }

    #[test]
    fn a_timeout_returns_even_when_a_grandchild_outside_the_group_holds_the_pipes() {
        let g = Grandchild::new();
        let t0 = Instant::now();
        let err = sh()
            .run(
                "x",
                &["-c".into(), g.script(true, "sleep 30")],
                &[],
                Duration::from_millis(300),
            )
            .unwrap_err();
        assert!(matches!(err, UvError::Timeout { .. }), "{err:?}");
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    }

    #[test]
    fn output_that_is_not_utf8_is_kept_lossily() {
        // uv's "offline" in stderr decides the online retry: one bad byte
        // must not lose it.
        let err = sh()
            .run(
                "x",
                &[
                    "-c".into(),
                    "printf 'caf\\351: not in the cache (--offline)\\n' >&2; exit 2".into(),
                ],
                &[],
                Duration::from_secs(5),
            )
            .unwrap_err();
        assert_eq!(
            err.stderr(),
            Some("caf\u{FFFD}: not in the cache (--offline)\n")
        );
        let ok = sh()
            .run(
                "x",
                &["-c".into(), "printf 'a\\377b'".into()],
                &[],
                Duration::from_secs(5),
            )
            .unwrap();
        assert_eq!(ok.stdout, "a\u{FFFD}b");
    }

    #[test]
    fn a_timeout_beyond_what_instant_can_hold_is_no_deadline_not_a_panic() {
        let ok = sh()
            .run("x", &["-c".into(), "echo hi".into()], &[], Duration::MAX)
            .unwrap();
        assert_eq!(ok.stdout, "hi\n");
    }
}
