//! POSIX calls shared by Linux and macOS. Every `unsafe` of the crate is in
//! `sys/`; here are the ones both OSes share.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use super::Pid;

/// Non-blocking BSD flock (`op` is `LOCK_EX` or `LOCK_SH`). `Ok(false)`
/// means contended.
pub fn try_flock(file: &File, op: i32) -> io::Result<bool> {
    // SAFETY: valid descriptor, plain flock.
    let rc = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// Is `FD_CLOEXEC` set on `fd` (a descriptor a child must not inherit)?
pub fn cloexec(fd: &impl AsRawFd) -> bool {
    // SAFETY: F_GETFD on a descriptor the caller owns.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
    flags >= 0 && flags & libc::FD_CLOEXEC != 0
}

/// Release our flock on `file` (for every process sharing its description).
pub fn unlock(file: &File) {
    // SAFETY: valid descriptor.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
}

/// `F_GETLK` for a write lock on `len` bytes at `start`: the pid of a
/// conflicting POSIX record lock (`-1` for an OFD lock, which carries none).
pub fn write_lock_pid(file: &File, start: i64, len: i64) -> Option<Pid> {
    // SAFETY: an all-zero flock is a valid initial value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    // SAFETY: valid fd and flock pointer.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut fl) };
    (rc == 0 && fl.l_type != libc::F_UNLCK as i16).then_some(fl.l_pid)
}

/// Route `sigs` to `handler` (which must be async-signal-safe), without
/// SA_RESTART: a blocking wait returns EINTR, so it notices at once.
pub fn catch_signals(sigs: &[i32], handler: extern "C" fn(libc::c_int)) {
    for &sig in sigs {
        // SAFETY: installing a handler the caller vouches for; a zeroed
        // sigaction with an emptied mask is valid.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// SIGKILL the process group `pgid` leads (a child we started with
/// `process_group(0)`).
pub fn kill_group(pgid: Pid) {
    if pgid > 1 {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pgid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Make a child die with us (Linux: `PR_SET_PDEATHSIG`), so a uv or a proof
/// server we started never outlives a killed mm-upgrade and writes on into
/// a staging dir the next run removes. (It follows the spawning thread, so
/// spawn from a thread that outlives the child.) No-op elsewhere.
pub fn die_with_parent(cmd: &mut std::process::Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe; nothing else runs between
        // fork and exec here.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
    }
    let _ = cmd;
}

/// A crash-test hook: with the `fault-points` feature (test builds only),
/// `MM_UPGRADE_FAULT=<name>` kills this process with SIGKILL at that point.
pub fn fault_point(name: &str) {
    #[cfg(feature = "fault-points")]
    if std::env::var_os("MM_UPGRADE_FAULT").is_some_and(|v| v == name) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
    let _ = name;
}

/// Effective uid of this process.
pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock other processes' event logs
/// use, so they merge exactly.
pub fn monotonic_ns() -> u64 {
    let t = clock(libc::CLOCK_MONOTONIC);
    t.as_secs() * 1_000_000_000 + t.subsec_nanos() as u64
}

/// `clock_gettime(clock)`; zero if the clock is not there.
pub fn clock(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// One raw `read(2)` of a byte from stdin: `Ok(None)` at EOF, EINTR as an
/// `Interrupted` error (std's readers retry it; a prompt must not).
pub fn read_byte() -> io::Result<Option<u8>> {
    let mut b = [0u8; 1];
    // SAFETY: fd 0 is only read into a valid one-byte buffer.
    let n = unsafe { libc::read(0, b.as_mut_ptr().cast(), 1) };
    match n {
        1 => Ok(Some(b[0])),
        0 => Ok(None),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Wait for any of several exit descriptors (pidfds, kqueues) to become
/// readable; when one process has none (`None`), a short nap instead, and
/// the caller checks again.
pub fn wait_any_exit(fds: Option<Vec<i32>>, timeout: Duration) {
    match fds {
        Some(fds) if !fds.is_empty() => {
            poll_readable(&fds, timeout, &|| true);
        }
        Some(_) => {}
        None => std::thread::sleep(timeout.min(Duration::from_millis(5))),
    }
}

/// Poll descriptors for readability for at most `timeout` (EINTR polls
/// again with the time left, unless `abort` says stop). True when one is.
pub fn poll_readable(fds: &[i32], timeout: Duration, abort: &dyn Fn() -> bool) -> bool {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let deadline = Instant::now().checked_add(timeout);
    loop {
        let left = deadline.map_or(Duration::from_secs(3600), |d| {
            d.saturating_duration_since(Instant::now())
        });
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: pfds is a valid array of pollfd of the given length.
        let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        if rc > 0 {
            // Only data or a hang-up is an answer: POLLNVAL/POLLERR alone (a
            // descriptor closed by mistake) must never read as an exit.
            return pfds
                .iter()
                .any(|p| p.revents & (libc::POLLIN | libc::POLLHUP) != 0);
        }
        if rc == 0 || left.is_zero() || abort() {
            return false;
        }
    }
}

/// Poll one descriptor for readability for at most `timeout`.
pub fn wait_any_fd(fd: &OwnedFd, timeout: Duration, abort: &dyn Fn() -> bool) -> bool {
    poll_readable(&[fd.as_raw_fd()], timeout, abort)
}

/// `renameat2` (Linux) or `renamex_np` (macOS) with `flags`.
pub(super) fn rename_with(from: &Path, to: &Path, flags: libc::c_uint) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let cf = std::ffi::CString::new(from.as_os_str().as_bytes())?;
    let ct = std::ffi::CString::new(to.as_os_str().as_bytes())?;
    #[cfg(target_os = "linux")]
    // SAFETY: two NUL-terminated paths, relative to the current directory.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cf.as_ptr(),
            libc::AT_FDCWD,
            ct.as_ptr(),
            flags,
        )
    };
    #[cfg(target_os = "macos")]
    let rc = {
        extern "C" {
            fn renamex_np(
                from: *const libc::c_char,
                to: *const libc::c_char,
                flags: libc::c_uint,
            ) -> libc::c_int;
        }
        // SAFETY: two NUL-terminated paths.
        unsafe { renamex_np(cf.as_ptr(), ct.as_ptr(), flags) }
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_descriptor_is_not_readable() {
        // No process has this descriptor open: poll answers POLLNVAL at once.
        assert!(!poll_readable(
            &[i32::MAX - 1],
            Duration::from_millis(20),
            &|| false
        ));
    }

    #[test]
    fn data_and_hang_up_are_readable() {
        use std::io::Write;
        use std::os::unix::net::UnixStream;
        // std makes both ends close-on-exec: a sibling test's child never
        // holds the end this test drops.
        let (r, mut w) = UnixStream::pair().unwrap();
        assert!(!poll_readable(&[r.as_raw_fd()], Duration::ZERO, &|| false));
        w.write_all(b"x").unwrap();
        assert!(poll_readable(&[r.as_raw_fd()], Duration::ZERO, &|| false));
        let (r2, w2) = UnixStream::pair().unwrap();
        drop(w2);
        assert!(poll_readable(&[r2.as_raw_fd()], Duration::ZERO, &|| false));
    }

    use rusty_fork::rusty_fork_test;
    rusty_fork_test! {
        /// `has_tty` on real processes, both OSes (Linux: `tty_nr`; macOS:
        /// `e_tdev`), in a process of its own (the pty's descriptors are
        /// inheritable): a new session has no terminal until it makes a pty
        /// its controlling terminal.
        #[test]
        fn has_tty_sees_a_controlling_terminal() {
            use crate::sys::{real, Processes};
            use crate::testutil::Proc;
            use std::os::unix::process::CommandExt;
            use std::process::{Command, Stdio};
            let pty = nix::pty::openpty(None, None).unwrap();
            let slave = pty.slave.as_raw_fd();
            let session = |ctty: bool| {
                let mut cmd = Command::new("sleep");
                cmd.arg("30").stdin(Stdio::null()).stdout(Stdio::null());
                // SAFETY: async-signal-safe calls only, between fork and exec.
                unsafe {
                    cmd.pre_exec(move || {
                        nix::unistd::setsid()?;
                        if ctty && libc::ioctl(slave, libc::TIOCSCTTY as _, 0) != 0 {
                            return Err(io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                Proc(cmd.spawn().unwrap()).exec_done(&["sleep", "30"])
            };
            let (none, tty) = (session(false), session(true));
            assert_eq!(real().has_tty(none.pid()), Some(false));
            assert_eq!(real().has_tty(tty.pid()), Some(true));
        }
    }
}
