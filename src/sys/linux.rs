//! Linux: `/proc`, fdinfo lock lines, pidfds.

use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod procfs;
pub use procfs::{parse_fdinfo_flock, parse_maps, parse_sig_ign, parse_stat, parse_tty_nr};

use super::{
    posix, Bounded, Clock, FileId, Files, LockSeen, Mapping, OpenFile, Pid, ProcStat, Processes,
    RunState, Signals, Via,
};

/// The Linux kernel, through `/proc` and pidfds.
#[derive(Debug)]
pub struct Linux {
    epoch: Instant,
    /// The executables table being read ahead, if any.
    exes_ahead: Slot<Vec<(Pid, FileId)>>,
    /// The processes whose argv mentions a needle, being read ahead.
    argv_ahead: Slot<(&'static str, Vec<Pid>)>,
}

/// Where a table read ahead waits to be taken.
type Slot<T> = Mutex<Option<Ahead<T>>>;

/// A read of a table on a thread, and when it began.
#[derive(Debug)]
struct Ahead<T> {
    began: Instant,
    table: JoinHandle<T>,
}

impl<T: Send + 'static> Ahead<T> {
    fn start(slot: &Slot<T>, read: impl FnOnce() -> T + Send + 'static) {
        let a = Ahead {
            began: Instant::now(),
            table: std::thread::spawn(read),
        };
        *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(a);
    }

    /// The read in `slot`, if any, leaving it empty.
    fn taken(slot: &Slot<T>) -> Option<Ahead<T>> {
        slot.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    /// The table, once, if it is young enough.
    fn take(slot: &Slot<T>) -> Option<T> {
        let a = Ahead::taken(slot)?;
        (a.began.elapsed() <= AHEAD_MAX_AGE)
            .then(|| a.table.join().ok())
            .flatten()
    }
}

impl Default for Linux {
    fn default() -> Self {
        Linux {
            epoch: Instant::now(),
            exes_ahead: Mutex::new(None),
            argv_ahead: Mutex::new(None),
        }
    }
}

/// The oldest read-ahead table a scan takes; an older one is read again.
const AHEAD_MAX_AGE: Duration = Duration::from_millis(500);

impl Linux {
    /// Read the executables table, and when `needle` is given the
    /// processes whose argv mentions it, on threads, for the next
    /// [`Processes::executables`] and [`Processes::mentioning`] to take
    /// (once, and only while younger than [`AHEAD_MAX_AGE`]). What they
    /// decide is unchanged: the tables only prefilter, and every candidate's
    /// executable, argv, owner and state are read afresh when it is judged.
    /// A process that starts in between is missed as one that starts just
    /// after the scan would be.
    pub fn read_ahead(&self, needle: Option<&'static str>) {
        Ahead::start(&self.exes_ahead, read_executables);
        if let Some(n) = needle {
            Ahead::start(&self.argv_ahead, move || (n, read_mentioning(n)));
        }
    }

    /// Drop what was read ahead and not taken: a later pass reads afresh.
    pub fn discard_read_ahead(&self) {
        drop(Ahead::taken(&self.exes_ahead));
        drop(Ahead::taken(&self.argv_ahead));
    }
}

/// The pids `/proc` lists, and `/proc` itself open to walk from.
fn list_proc() -> Option<(fs::File, Vec<Pid>)> {
    let proc = fs::File::open("/proc").ok()?;
    let pids = fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    Some((proc, pids))
}

/// `<pid>/<name>` in `buf`, NUL-terminated, without allocating.
fn proc_path<'b>(buf: &'b mut [u8; 64], pid: Pid, name: &str) -> Option<&'b std::ffi::CStr> {
    use std::io::Write;
    let mut w = &mut buf[..];
    write!(w, "{pid}/{name}\0").ok()?;
    std::ffi::CStr::from_bytes_until_nul(&buf[..]).ok()
}

/// Every process's executable, `stat`ed through `/proc/<pid>/exe` (the
/// magic link leads to the file itself): one syscall per process, relative
/// to one open `/proc`, nothing allocated per process.
fn read_executables() -> Vec<(Pid, FileId)> {
    use nix::fcntl::AtFlags;
    use nix::sys::stat::fstatat;
    let Some((proc, pids)) = list_proc() else {
        return Vec::new();
    };
    let fd = Some(proc.as_raw_fd());
    let mut out = Vec::with_capacity(pids.len());
    let mut buf = [0u8; 64];
    for pid in pids {
        let Some(path) = proc_path(&mut buf, pid, "exe") else {
            continue;
        };
        if let Ok(st) = fstatat(fd, path, AtFlags::empty()) {
            out.push((
                pid,
                FileId {
                    dev: st.st_dev,
                    ino: st.st_ino,
                },
            ));
        }
    }
    out
}

/// The processes whose argv mentions `needle` (one argument contains it),
/// their argv read into one reused buffer.
fn read_mentioning(needle: &str) -> Vec<Pid> {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::Mode;
    let Some((proc, pids)) = list_proc() else {
        return Vec::new();
    };
    let needle = needle.as_bytes();
    let mut path = [0u8; 64];
    let mut argv = vec![0u8; 4096];
    let mut out = Vec::new();
    for pid in pids {
        let Some(p) = proc_path(&mut path, pid, "cmdline") else {
            continue;
        };
        let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC;
        let Ok(fd) = openat(Some(proc.as_raw_fd()), p, flags, Mode::empty()) else {
            continue;
        };
        // SAFETY: openat just returned this descriptor, owned by nobody else.
        let mut f = unsafe { fs::File::from_raw_fd(fd) };
        let Some(len) = read_all(&mut f, &mut argv) else {
            continue;
        };
        let argv = &argv[..len];
        // An empty needle is in every argument, as `str::contains` has it.
        let mentions = match needle.len() {
            0 => argv.iter().any(|b| *b != 0),
            n => argv.windows(n).any(|w| w == needle),
        };
        if mentions {
            out.push(pid);
        }
    }
    out
}

/// Read `f` to its end into `buf` (grown as needed); the length read.
/// procfs serves a file from one page per read, so a short read is the end.
fn read_all(f: &mut fs::File, buf: &mut Vec<u8>) -> Option<usize> {
    let mut len = 0;
    loop {
        let n = f.read(&mut buf[len..]).ok()?;
        len += n;
        if n == 0 || len < buf.len() {
            return Some(len);
        }
        buf.resize(buf.len() * 2, 0);
    }
}

/// Read a small `/proc` file in as few syscalls as possible: procfs serves
/// these from one page per read, so a short read is the end. (std's
/// `read_to_end` starts with a tiny probe read, which costs several syscalls
/// per file on a scan of a thousand processes.)
fn read_proc_file(path: &str) -> Option<(Vec<u8>, fs::File)> {
    let mut f = fs::File::open(path).ok()?;
    let mut buf = vec![0u8; 4096];
    let len = read_all(&mut f, &mut buf)?;
    buf.truncate(len);
    Some((buf, f))
}

/// [`read_proc_file`] with the file's owner (one more syscall).
fn read_proc(path: &str) -> Option<(Vec<u8>, u32)> {
    let (buf, f) = read_proc_file(path)?;
    let uid = f.metadata().map(|m| m.uid()).unwrap_or(u32::MAX);
    Some((buf, uid))
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
pub fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .map_or(100, |t| t as u64)
}

fn boottime() -> Duration {
    posix::clock(libc::CLOCK_BOOTTIME)
}

impl Processes for Linux {
    fn pids(&self) -> Vec<Pid> {
        let Ok(dir) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    }

    fn executables(&self) -> Vec<(Pid, FileId)> {
        Ahead::take(&self.exes_ahead).unwrap_or_else(read_executables)
    }

    fn mentioning(&self, needle: &str) -> Vec<Pid> {
        match Ahead::take(&self.argv_ahead) {
            Some((n, pids)) if n == needle => pids,
            _ => read_mentioning(needle),
        }
    }

    fn stat(&self, pid: Pid) -> Option<ProcStat> {
        let (bytes, uid) = read_proc(&format!("/proc/{pid}/stat"))?;
        let mut st = parse_stat(&String::from_utf8_lossy(&bytes))?;
        // /proc/<pid> files belong to the process's effective uid (root
        // for a non-dumpable one, which is then not ours either).
        st.uid = Some(uid);
        Some(st)
    }

    fn cmdline(&self, pid: Pid) -> Vec<String> {
        // No owner asked: the scan reads every process's argv, and the
        // fstat was a quarter of its syscalls.
        match read_proc_file(&format!("/proc/{pid}/cmdline")) {
            Some((bytes, _)) => bytes
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect(),
            None => Vec::new(),
        }
    }

    fn exe(&self, pid: Pid) -> Option<FileId> {
        // stat() follows the magic link to the executable itself.
        fs::metadata(format!("/proc/{pid}/exe"))
            .ok()
            .map(|m| FileId::of(&m))
    }

    fn cwd(&self, pid: Pid) -> Option<PathBuf> {
        fs::read_link(format!("/proc/{pid}/cwd")).ok()
    }

    fn ignored(&self, pid: Pid) -> Option<u64> {
        let (bytes, _) = read_proc_file(&format!("/proc/{pid}/status"))?;
        parse_sig_ign(&String::from_utf8_lossy(&bytes))
    }

    fn maps(&self, pid: Pid) -> Vec<Mapping> {
        fs::read_to_string(format!("/proc/{pid}/maps"))
            .map(|t| parse_maps(&t))
            .unwrap_or_default()
    }

    fn has_tty(&self, pid: Pid) -> Option<bool> {
        let (bytes, _) = read_proc_file(&format!("/proc/{pid}/stat"))?;
        parse_tty_nr(&String::from_utf8_lossy(&bytes)).map(|t| t != 0)
    }
}

impl Files for Linux {
    fn open_files(&self, pid: Pid, id: FileId) -> Vec<OpenFile> {
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
            if FileId::of(&meta) != id {
                continue;
            }
            let lock = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
                .ok()
                .and_then(|t| parse_fdinfo_flock(&t))
                .map_or(LockSeen::None, LockSeen::Flock);
            out.push(OpenFile { pid, fd, lock });
        }
        out
    }
}

impl Clock for Linux {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d)
    }
    /// Clock ticks since boot (`CLOCK_BOOTTIME`, the clock of a process's
    /// start time), so "started after the install" has no wall-clock skew.
    fn start_now(&self) -> u64 {
        let hz = clock_ticks();
        let t = boottime();
        t.as_secs() * hz + (t.subsec_nanos() as u64 * hz) / 1_000_000_000
    }
    fn start_unit_secs(&self) -> f64 {
        1.0 / clock_ticks() as f64
    }
    fn start_origin_wall_secs(&self) -> f64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        now.as_secs_f64() - boottime().as_secs_f64()
    }
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

fn pidfd_open(pid: Pid) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd >= 0 {
        // SAFETY: the kernel just gave us this descriptor.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    } else {
        Err(io::Error::last_os_error())
    }
}

impl ProcHandle {
    /// Open a handle on `pid`, insisting that it is still the process that
    /// started at `start_ticks`. `Ok(None)` means it is already gone.
    pub fn open(pid: Pid, start_ticks: u64) -> io::Result<Option<ProcHandle>> {
        let pidfd = match pidfd_open(pid) {
            Ok(fd) => Some(fd),
            Err(e) => match e.raw_os_error() {
                Some(libc::ESRCH) => return Ok(None),
                Some(libc::ENOSYS) | Some(libc::EPERM) | Some(libc::EINVAL) => None,
                _ => return Err(e),
            },
        };
        // Checked after the pidfd exists: from here on the pid cannot be reused
        // under us, so a matching start time proves the identity for good.
        match super::real().stat(pid) {
            Some(st) if st.start_ticks == start_ticks => Ok(Some(ProcHandle {
                pid,
                start_ticks,
                pidfd,
            })),
            _ => Ok(None),
        }
    }

    fn same_process(&self) -> bool {
        matches!(super::real().stat(self.pid), Some(st) if st.start_ticks == self.start_ticks && st.state != RunState::Zombie)
    }
}

impl Signals for Linux {
    type Handle = ProcHandle;

    fn open(&self, pid: Pid, start: u64) -> io::Result<Option<ProcHandle>> {
        ProcHandle::open(pid, start)
    }

    fn state(&self, h: &ProcHandle) -> Option<RunState> {
        self.stat(h.pid)
            .filter(|s| s.start_ticks == h.start_ticks)
            .map(|s| s.state)
    }

    fn ignores(&self, h: &ProcHandle, sig: i32) -> bool {
        self.ignored(h.pid)
            .is_some_and(|m| m & super::sig_bit(sig) != 0)
    }

    fn signal(&self, h: &ProcHandle, sig: i32) -> io::Result<bool> {
        let rc = match &h.pidfd {
            // SAFETY: valid pidfd; a null siginfo is allowed.
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
                if h.pid <= 1 || !h.same_process() {
                    return Ok(false);
                }
                // SAFETY: plain kill of one pid > 1.
                unsafe { libc::kill(h.pid, sig) }
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

    /// A pidfd becomes readable at exit, before the parent reaps, so an
    /// unreaped zombie is never waited on.
    fn exited(&self, h: &ProcHandle) -> bool {
        match &h.pidfd {
            Some(fd) => posix::poll_readable(&[fd.as_raw_fd()], Duration::ZERO, &|| true),
            None => !h.same_process(),
        }
    }

    fn via(&self, h: &ProcHandle) -> Via {
        if h.pidfd.is_some() {
            Via::Pidfd
        } else {
            Via::Kill
        }
    }

    /// With pidfds one `poll(2)`; without, a short sleep-and-check loop.
    fn wait_any(&self, hs: &[&ProcHandle], timeout: Duration) {
        let fds = hs.iter().map(|h| h.pidfd.as_ref().map(|f| f.as_raw_fd()));
        posix::wait_any_exit(fds.collect(), timeout);
    }
}

/// Our child, waited for without being reaped: a pidfd, or `waitid` with
/// `WNOWAIT` where there is none.
pub struct ChildWaiter {
    pid: Pid,
    pidfd: Option<OwnedFd>,
}

impl ChildWaiter {
    pub fn new(pid: Pid) -> ChildWaiter {
        ChildWaiter {
            pid,
            pidfd: pidfd_open(pid).ok(),
        }
    }
}

impl Bounded for ChildWaiter {
    /// Checked in short slices: a signal delivered to another thread does
    /// not interrupt this thread's poll, and a timeout too large for
    /// `Instant` means no deadline rather than a panic.
    fn wait_exit(&self, timeout: Duration, abort: &dyn Fn() -> bool) -> bool {
        const SLICE: Duration = Duration::from_millis(50);
        let deadline = Instant::now().checked_add(timeout);
        loop {
            let left = deadline.map_or(SLICE, |d| d.saturating_duration_since(Instant::now()));
            let slice = left.min(SLICE);
            let exited = match &self.pidfd {
                Some(fd) => posix::poll_readable(&[fd.as_raw_fd()], slice, abort),
                None => {
                    // SAFETY: an all-zero siginfo is a valid out-buffer;
                    // WNOWAIT leaves the child for Child::wait to reap.
                    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
                    let rc = unsafe {
                        libc::waitid(
                            libc::P_PID,
                            self.pid as libc::id_t,
                            &mut info,
                            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
                        )
                    };
                    // SAFETY: si_pid is valid after a successful waitid.
                    let done = rc == 0 && unsafe { info.si_pid() } == self.pid;
                    if !done {
                        std::thread::sleep(slice.min(Duration::from_millis(5)));
                    }
                    done
                }
            };
            if exited {
                return true;
            }
            if left.is_zero() || abort() {
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tables read ahead are the first scans': every process's
    /// executable, every process whose argv mentions the needle. The next
    /// scans read the table afresh and so see a process started in between
    /// (a stale table is never served twice).
    #[test]
    fn tables_read_ahead_serve_one_scan_then_the_table_is_read_afresh() {
        use crate::testutil::Proc;
        let os = Linux::default();
        let me = std::process::id() as Pid;
        // Ours alone, should another test process run this test meanwhile.
        let needle: &'static str = format!("mm-upgrade-read-ahead-{me}").leak();
        os.read_ahead(Some(needle));
        let own = FileId::of(&fs::metadata("/proc/self/exe").unwrap());
        let exes = os.executables();
        assert!(exes.contains(&(me, own)), "{exes:?}");
        let mentioning = os.mentioning(needle);
        let argv = ["sh", "-c", "sleep 30; :", needle];
        let sh = Proc::spawn(std::process::Command::new("sh").args(&argv[1..])).exec_done(&argv);
        let exe = os.exe(sh.pid()).unwrap();
        assert!(!exes.iter().any(|e| e.0 == sh.pid()));
        assert!(!mentioning.contains(&sh.pid()));
        assert!(os.executables().contains(&(sh.pid(), exe)));
        // (sh's child shows sh's argv until it has exec'd sleep.)
        assert!(os.mentioning(needle).contains(&sh.pid()));
        assert!(os.mentioning(&format!("{needle}-unmentioned")).is_empty());
        assert!(os.mentioning("").contains(&sh.pid()));
        // What is read ahead and discarded is never served.
        os.read_ahead(Some(needle));
        os.discard_read_ahead();
        assert!(Ahead::taken(&os.exes_ahead).is_none());
        assert!(Ahead::taken(&os.argv_ahead).is_none());
    }

    #[test]
    fn our_own_entry_shows_owner_and_start() {
        let os = Linux::default();
        let st = os.stat(std::process::id() as Pid).unwrap();
        assert_eq!(st.uid, Some(super::super::euid()));
        assert!(st.start_ticks <= os.start_now());
    }
}
