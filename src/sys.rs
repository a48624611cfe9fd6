//! The operating-system seam: everything that reads `/proc`, opens pidfds or
//! sends signals lives here, so the stages above it can be tested with fakes.
//!
//! Everything read from `/proc` is treated as untrusted data: it is parsed,
//! never executed, and a process's environment is never read.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A process id as the kernel reports it.
pub type Pid = i32;

/// The scheduler state letter from `/proc/<pid>/stat`, reduced to what matters
/// for stopping a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Running, sleeping, disk sleep, idle…
    Live,
    /// `T`/`t`: stopped by a signal or a tracer; SIGTERM stays pending until SIGCONT.
    Stopped,
    /// `Z`/`X`: exited; only its parent's `wait` is missing. Dead for our purposes.
    Zombie,
}

/// What `/proc/<pid>/stat` and `/proc/<pid>/status` say about a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: Pid,
    pub ppid: Pid,
    pub pgrp: Pid,
    pub session: Pid,
    pub state: RunState,
    /// Start time in clock ticks since boot (field 22); with the pid it names
    /// one process for the lifetime of the boot.
    pub start_ticks: u64,
    pub comm: String,
}

/// Parse `/proc/<pid>/stat`. The command name may contain spaces and
/// parentheses, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let comm = text[open + 1..close].to_string();
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // rest[0] is field 3 (state); field N is rest[N - 3].
    let state = match rest.first()?.chars().next()? {
        'Z' | 'X' | 'x' => RunState::Zombie,
        'T' | 't' => RunState::Stopped,
        _ => RunState::Live,
    };
    Some(ProcStat {
        pid,
        ppid: rest.get(1)?.parse().ok()?,
        pgrp: rest.get(2)?.parse().ok()?,
        session: rest.get(3)?.parse().ok()?,
        state,
        start_ticks: rest.get(19)?.parse().ok()?,
        comm,
    })
}

pub fn proc_stat(pid: Pid) -> Option<ProcStat> {
    let bytes = read_proc(&format!("/proc/{pid}/stat"))?;
    parse_stat(&String::from_utf8_lossy(&bytes))
}

/// Signal masks and owner from `/proc/<pid>/status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcStatus {
    pub uid: Option<u32>,
    pub sig_ign: u64,
    pub sig_blk: u64,
    pub sig_cgt: u64,
}

pub fn parse_status(text: &str) -> ProcStatus {
    let mut st = ProcStatus::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "Uid" => st.uid = value.split_whitespace().nth(1).and_then(|v| v.parse().ok()),
            "SigIgn" => st.sig_ign = u64::from_str_radix(value, 16).unwrap_or(0),
            "SigBlk" => st.sig_blk = u64::from_str_radix(value, 16).unwrap_or(0),
            "SigCgt" => st.sig_cgt = u64::from_str_radix(value, 16).unwrap_or(0),
            _ => {}
        }
    }
    st
}

pub fn proc_status(pid: Pid) -> Option<ProcStatus> {
    read_proc(&format!("/proc/{pid}/status")).map(|b| parse_status(&String::from_utf8_lossy(&b)))
}

/// Bit for `sig` in a `/proc/<pid>/status` signal mask.
pub fn sig_bit(sig: i32) -> u64 {
    1u64 << (sig - 1)
}

/// `/proc/<pid>/cmdline` split into arguments (lossy UTF-8).
pub fn cmdline(pid: Pid) -> Vec<String> {
    match read_proc(&format!("/proc/{pid}/cmdline")) {
        Some(bytes) => bytes
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
        None => Vec::new(),
    }
}

/// Read a small `/proc` file in as few syscalls as possible: procfs serves
/// these from one page per read, so a short read is the end. (std's
/// `read_to_end` starts with a tiny probe read, which costs several syscalls
/// per file on a scan of a thousand processes.)
pub fn read_proc(path: &str) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut f = fs::File::open(path).ok()?;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        let n = f.read(&mut buf[len..]).ok()?;
        len += n;
        if n == 0 || len < buf.len() {
            break;
        }
        buf.resize(buf.len() * 2, 0);
    }
    buf.truncate(len);
    Some(buf)
}

/// Every numeric entry of `/proc`.
pub fn all_pids() -> Vec<Pid> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// A mapped file of a process, from `/proc/<pid>/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub path: String,
    pub deleted: bool,
    pub inode: u64,
}

/// Parse `/proc/<pid>/maps`, keeping one entry per file. The kernel appends
/// ` (deleted)` to unlinked files; a file really named that way is told apart
/// by the caller comparing inodes, never by the suffix alone.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        // address perms offset dev inode path
        let mut parts = line.splitn(6, ' ');
        let (_, _, _, _) = (parts.next(), parts.next(), parts.next(), parts.next());
        let inode: u64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let Some(path) = parts.next().map(str::trim_start) else {
            continue;
        };
        if inode == 0 || !path.starts_with('/') {
            continue;
        }
        let (path, deleted) = match path.strip_suffix(" (deleted)") {
            Some(p) => (p.to_string(), true),
            None => (path.to_string(), false),
        };
        if !out.iter().any(|m| m.path == path && m.inode == inode) {
            out.push(Mapping {
                path,
                deleted,
                inode,
            });
        }
    }
    out
}

pub fn maps(pid: Pid) -> Vec<Mapping> {
    fs::read_to_string(format!("/proc/{pid}/maps"))
        .map(|t| parse_maps(&t))
        .unwrap_or_default()
}

/// A process that has a given file open, and whether that open file holds a
/// BSD flock on it (from the `lock:` lines of `/proc/<pid>/fdinfo/<fd>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenFile {
    pub pid: Pid,
    pub fd: i32,
    pub flock: Option<LockKind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    Write,
    Read,
}

/// The FLOCK kind from an fdinfo body, if any. Lines look like
/// `lock:\t1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF`.
pub fn parse_fdinfo_flock(text: &str) -> Option<LockKind> {
    text.lines()
        .filter(|l| l.starts_with("lock:"))
        .filter(|l| l.contains("FLOCK"))
        .find_map(|l| {
            if l.contains(" WRITE ") {
                Some(LockKind::Write)
            } else if l.contains(" READ ") {
                Some(LockKind::Read)
            } else {
                None
            }
        })
}

/// The open files of `pid` that name the inode `(dev, ino)`, with their locks.
pub fn open_files_of(pid: Pid, dev: u64, ino: u64) -> Vec<OpenFile> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        // stat() follows the magic link to the open file itself.
        let Ok(meta) = fs::metadata(entry.path()) else {
            continue;
        };
        if meta.dev() != dev || meta.ino() != ino {
            continue;
        }
        let flock = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
            .ok()
            .and_then(|t| parse_fdinfo_flock(&t));
        out.push(OpenFile { pid, fd, flock });
    }
    out
}

/// Every process (among `pids`) whose open file description holds a flock on
/// `(dev, ino)`. This is the proof we require before signalling: `/proc/locks`
/// alone keeps naming the process that *took* a lock even after it exited and
/// a forked child inherited it.
pub fn flock_holders(pids: &[Pid], dev: u64, ino: u64) -> Vec<OpenFile> {
    pids.iter()
        .flat_map(|&pid| open_files_of(pid, dev, ino))
        .filter(|o| o.flock.is_some())
        .collect()
}

/// Our own pid and every ancestor up to init: processes we must never signal.
pub fn self_and_ancestors() -> Vec<Pid> {
    let mut out = vec![std::process::id() as Pid];
    let mut cur = std::process::id() as Pid;
    for _ in 0..4096 {
        match proc_stat(cur) {
            Some(st) if st.ppid > 0 && !out.contains(&st.ppid) => {
                out.push(st.ppid);
                cur = st.ppid;
            }
            _ => break,
        }
    }
    out
}

/// Children map for descendant walks, built from one `/proc` pass.
pub fn process_table() -> Vec<ProcStat> {
    all_pids().into_iter().filter_map(proc_stat).collect()
}

/// All descendants of `root` in `table`, parents before children.
pub fn descendants(table: &[ProcStat], root: Pid) -> Vec<ProcStat> {
    let mut out: Vec<ProcStat> = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for st in table.iter().filter(|s| s.ppid == p) {
            if st.pid != root && !out.iter().any(|o| o.pid == st.pid) {
                out.push(st.clone());
                frontier.push(st.pid);
            }
        }
    }
    out
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Now, in clock ticks since boot: the same clock as a process's start time,
/// so "started after the install" is compared without wall-clock skew.
pub fn boot_ticks_now() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    let hz = clock_ticks();
    ts.tv_sec as u64 * hz + (ts.tv_nsec as u64 * hz) / 1_000_000_000
}

/// A handle on one process that cannot be confused with a later process
/// reusing its pid: a pidfd where the kernel has them, otherwise the pid plus
/// its start time, re-checked before every signal.
#[derive(Debug)]
pub struct ProcHandle {
    pub pid: Pid,
    pub start_ticks: u64,
    pidfd: Option<OwnedFd>,
}

/// How a signal was delivered, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    Pidfd,
    Kill,
}

impl ProcHandle {
    /// Open a handle on `pid`, insisting that it is still the process that
    /// started at `start_ticks`. `Ok(None)` means it is already gone.
    pub fn open(pid: Pid, start_ticks: u64) -> io::Result<Option<ProcHandle>> {
        // SAFETY: plain syscall with integer arguments.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        let pidfd = if fd >= 0 {
            // SAFETY: the kernel just gave us this descriptor.
            Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
        } else {
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::ESRCH) => return Ok(None),
                Some(libc::ENOSYS) | Some(libc::EPERM) | Some(libc::EINVAL) => None,
                _ => return Err(io::Error::last_os_error()),
            }
        };
        // Checked after the pidfd exists: from here on the pid cannot be reused
        // under us, so a matching start time proves the identity for good.
        match proc_stat(pid) {
            Some(st) if st.start_ticks == start_ticks => Ok(Some(ProcHandle {
                pid,
                start_ticks,
                pidfd,
            })),
            _ => Ok(None),
        }
    }

    pub fn via(&self) -> Via {
        if self.pidfd.is_some() {
            Via::Pidfd
        } else {
            Via::Kill
        }
    }

    /// Send `sig`. `Ok(false)` means the process was already gone.
    pub fn signal(&self, sig: i32) -> io::Result<bool> {
        let rc = match &self.pidfd {
            // SAFETY: valid pidfd; null siginfo is allowed.
            Some(fd) => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    sig,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                ) as i32
            },
            None => {
                if !self.same_process() {
                    return Ok(false);
                }
                // SAFETY: plain kill; pid > 1 is guaranteed by callers.
                unsafe { libc::kill(self.pid, sig) }
            }
        };
        if rc == 0 {
            Ok(true)
        } else {
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::ESRCH) => Ok(false),
                _ => Err(io::Error::last_os_error()),
            }
        }
    }

    fn same_process(&self) -> bool {
        matches!(proc_stat(self.pid), Some(st) if st.start_ticks == self.start_ticks && st.state != RunState::Zombie)
    }

    /// Has the process exited (zombies included)? A pidfd becomes readable at
    /// exit, before the parent reaps, so an unreaped zombie is never waited on.
    pub fn exited(&self) -> bool {
        match &self.pidfd {
            Some(fd) => {
                let mut pfd = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, zero timeout.
                let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
                rc > 0
            }
            None => !self.same_process(),
        }
    }

    pub fn raw_pidfd(&self) -> Option<i32> {
        self.pidfd.as_ref().map(|f| f.as_raw_fd())
    }
}

/// Block until one of `handles` exits or `timeout` passes. With pidfds this is
/// one `poll(2)`; without, a short sleep-and-check loop.
pub fn wait_any(handles: &[&ProcHandle], timeout: Duration) {
    if handles.is_empty() {
        return;
    }
    if handles.iter().all(|h| h.raw_pidfd().is_some()) {
        let mut fds: Vec<libc::pollfd> = handles
            .iter()
            .map(|h| libc::pollfd {
                fd: h.raw_pidfd().unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: fds is a valid array of pollfd.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    } else {
        std::thread::sleep(timeout.min(Duration::from_millis(5)));
    }
}

/// Identity of a file for before/after comparisons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of(meta: &fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// Exchange two directory entries atomically (`renameat2(RENAME_EXCHANGE)`;
/// `renamex_np(RENAME_SWAP)` on macOS). Both must exist, on one filesystem.
pub fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    let flags = libc::RENAME_EXCHANGE;
    #[cfg(target_os = "macos")]
    let flags = 0x2; // RENAME_SWAP
    rename_with(a, b, flags as libc::c_uint)
}

/// Rename that never replaces an existing entry (`RENAME_NOREPLACE`; on
/// macOS `RENAME_EXCL`).
pub fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    let flags = libc::RENAME_NOREPLACE;
    #[cfg(target_os = "macos")]
    let flags = 0x4; // RENAME_EXCL
    rename_with(from, to, flags as libc::c_uint)
}

/// `renameat2` (Linux) or `renamex_np` (macOS) with `flags`.
fn rename_with(from: &Path, to: &Path, flags: libc::c_uint) -> std::io::Result<()> {
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
        Err(std::io::Error::last_os_error())
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
        // SAFETY: plain syscall on ourselves.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    let _ = name;
}

/// Effective uid of this process.
pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Resolve a program on `PATH` the way a shell would.
pub fn which(program: &str, path_var: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return is_executable(&p).then_some(p);
    }
    std::env::split_paths(path_var?)
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Poll one descriptor for readability for at most `timeout`.
pub fn wait_any_fd(fd: &OwnedFd, timeout: Duration, abort: &dyn Fn() -> bool) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc > 0 {
            return true;
        }
        if rc == 0 || left.is_zero() || abort() {
            return false;
        }
        // EINTR: poll again with the remaining time.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parses_comm_with_spaces_and_parens() {
        let line =
            "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 98765 0 0";
        let st = parse_stat(line).unwrap();
        assert_eq!(st.pid, 4242);
        assert_eq!(st.comm, "a (weird) name");
        assert_eq!(st.ppid, 1);
        assert_eq!(st.state, RunState::Live);
        assert_eq!(st.start_ticks, 98765);
    }

    #[test]
    fn stat_states_map_to_zombie_and_stopped() {
        let z = "7 (x) Z 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0";
        let t = "7 (x) T 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0";
        assert_eq!(parse_stat(z).unwrap().state, RunState::Zombie);
        assert_eq!(parse_stat(t).unwrap().state, RunState::Stopped);
    }

    #[test]
    fn status_reads_sigign_mask() {
        let st = parse_status("Name:\tx\nUid:\t1000\t1000\t1000\t1000\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000004000\nSigCgt:\t0000000000000002\n");
        assert_eq!(st.uid, Some(1000));
        assert_ne!(st.sig_ign & sig_bit(libc::SIGTERM), 0);
        assert_eq!(st.sig_ign & sig_bit(libc::SIGINT), 0);
    }

    #[test]
    fn fdinfo_lock_lines_are_recognised() {
        let w = "pos:\t0\nflags:\t02\nmnt_id:\t1\nino:\t5\nlock:\t1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF\n";
        let r = "lock:\t1: FLOCK  ADVISORY  READ 1234 fd:01:5678 0 EOF\n";
        let posix = "lock:\t1: POSIX  ADVISORY  WRITE 1234 fd:01:5678 0 EOF\n";
        assert_eq!(parse_fdinfo_flock(w), Some(LockKind::Write));
        assert_eq!(parse_fdinfo_flock(r), Some(LockKind::Read));
        assert_eq!(parse_fdinfo_flock(posix), None);
        assert_eq!(parse_fdinfo_flock("pos:\t0\n"), None);
    }

    #[test]
    fn maps_marks_deleted_files_and_dedups() {
        let text = "7f00-7f01 r--p 00000000 fd:01 123 /t/memtomem/lib/a.so (deleted)\n\
                    7f01-7f02 r-xp 00001000 fd:01 123 /t/memtomem/lib/a.so (deleted)\n\
                    7f02-7f03 rw-p 00000000 00:00 0 \n\
                    7f03-7f04 r--p 00000000 fd:01 456 /usr/lib/libc.so.6\n";
        let m = parse_maps(text);
        assert_eq!(m.len(), 2);
        assert!(m[0].deleted && m[0].path == "/t/memtomem/lib/a.so");
        assert!(!m[1].deleted);
    }

    #[test]
    fn our_own_process_and_parent_are_protected() {
        let protected = self_and_ancestors();
        assert_eq!(protected[0], std::process::id() as Pid);
        assert!(protected.contains(&(nix::unistd::getppid().as_raw())));
    }
}
