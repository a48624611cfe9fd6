//! Signals: the handler only writes the signal number into a self-pipe; everything else
//! (unlink, logging, _exit) happens in the main loop, which wakes within microseconds.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};

use serde_json::json;

static SIG_WR: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    // write(2) is async-signal-safe; errno is saved and restored around it.
    let e = nix::errno::Errno::last_raw();
    let b = sig as u8;
    // SAFETY: writing one byte from our stack to the self-pipe.
    unsafe { libc::write(SIG_WR.load(Ordering::Relaxed), (&b as *const u8).cast(), 1) };
    nix::errno::Errno::set_raw(e);
}

/// A pipe whose ends are close-on-exec (and non-blocking if asked): `pipe2` on
/// Linux; macOS has no `pipe2`, so there the flags follow `pipe` (a child forked
/// in between could inherit the ends, which a test double can live with).
pub fn pipe_cloexec(nonblock: bool) -> std::io::Result<[RawFd; 2]> {
    let mut fds = [0; 2];
    #[cfg(target_os = "linux")]
    {
        let flags = libc::O_CLOEXEC | if nonblock { libc::O_NONBLOCK } else { 0 };
        // SAFETY: pipe2 fills our array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), flags) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        // SAFETY: pipe fills our array; fcntl sets flags on the descriptors it made.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        for fd in fds {
            unsafe {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                if nonblock {
                    libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK);
                }
            }
        }
    }
    Ok(fds)
}

pub fn make_sig_pipe() -> RawFd {
    let fds = match pipe_cloexec(true) {
        Ok(fds) => fds,
        Err(e) => crate::die_early(&format!("pipe2 failed: {e}")),
    };
    let old = SIG_WR.swap(fds[1], Ordering::Relaxed);
    if old >= 0 {
        // A forked worker drops its parent's pipe (both ends) and starts its own.
        // SAFETY: closing a descriptor this process owns.
        unsafe { libc::close(old) };
    }
    fds[0]
}

pub fn set_handler(sig: libc::c_int, handler: libc::sighandler_t) {
    // SAFETY: installing a handler that only calls write(2), or a default disposition.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, std::ptr::null_mut());
    }
}

pub fn catch(sig: libc::c_int) {
    set_handler(sig, on_signal as *const () as libc::sighandler_t);
}

pub fn sigmask(how: libc::c_int, sigs: &[libc::c_int]) {
    // SAFETY: plain sigprocmask on a set we build.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in sigs {
            libc::sigaddset(&mut set, *s);
        }
        libc::sigprocmask(how, &set, std::ptr::null_mut());
    }
}

pub fn sig_name(sig: i32) -> String {
    match sig {
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGCHLD => "SIGCHLD".into(),
        libc::SIGHUP => "SIGHUP".into(),
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGPIPE => "SIGPIPE".into(),
        n => format!("SIG{n}"),
    }
}

/// Waits (at most `timeout_ms`, -1: no limit) until the self-pipe `sig_rd`, stdin (when
/// `watch_stdin`) or one of `more` is readable. Returns the polled array: `[0]` is the
/// self-pipe, `[1]` stdin when watched, then `more` in order.
pub fn poll_ready(
    sig_rd: RawFd,
    watch_stdin: bool,
    more: &[RawFd],
    timeout_ms: i32,
) -> Vec<libc::pollfd> {
    let watched = std::iter::once(sig_rd)
        .chain(watch_stdin.then_some(0))
        .chain(more.iter().copied());
    let mut fds: Vec<libc::pollfd> = watched
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: poll on our own array.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as _, timeout_ms) };
    fds
}

pub fn drain(fd: RawFd) -> Vec<i32> {
    let mut out = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: non-blocking read of our self-pipe.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return out;
        }
        out.extend(buf[..n as usize].iter().map(|b| *b as i32));
    }
}

pub fn describe_status(st: libc::c_int) -> serde_json::Value {
    if libc::WIFEXITED(st) {
        json!({"code": libc::WEXITSTATUS(st)})
    } else if libc::WIFSIGNALED(st) {
        json!({"signal": sig_name(libc::WTERMSIG(st))})
    } else {
        json!({"raw": st})
    }
}
