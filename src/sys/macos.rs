//! macOS: OS calls only; every decision is in shared code that the Linux
//! tests exercise (through [`super::fake`]).
//! - the process table through `sysinfo` (pids, argv, working directory);
//! - run state, start time (µs), ignored signals and whether there is a
//!   controlling terminal from `kinfo_proc` (`sysctl(KERN_PROC_PID)`:
//!   `p_stat`, `p_starttime`, `p_sigignore`, `e_tdev`);
//!   parent, group and owner from `proc_pidinfo(PROC_PIDTBSDINFO)`;
//! - the executable through `proc_pidpath`;
//! - which processes have a file open through `proc_pidinfo(PROC_PIDLISTFDS)`
//!   and `proc_pidfdinfo(PROC_PIDFDVNODEPATHINFO)` (the lock itself is not
//!   visible: [`LockSeen::Unknown`], and rule (a) then asks for more);
//! - exit waiting through kqueue `EVFILT_PROC`/`NOTE_EXIT`, the macOS
//!   counterpart of a pidfd.

use std::cell::Cell;
use std::ffi::{c_void, CStr};
use std::fs;
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System, UpdateKind};

use super::{
    posix, Bounded, Clock, FileId, Files, LockSeen, Mapping, OpenFile, Pid, ProcStat, Processes,
    RunState, Signals, Via,
};

/// `struct extern_proc` of `<sys/proc.h>` (LP64), the first member of
/// `kinfo_proc`.
#[repr(C)]
struct ExternProc {
    p_starttime: libc::timeval, // the p_un union: 16 bytes
    p_vmspace: *mut c_void,
    p_sigacts: *mut c_void,
    p_flag: libc::c_int,
    p_stat: libc::c_char,
    p_pid: libc::pid_t,
    p_oppid: libc::pid_t,
    p_dupfd: libc::c_int,
    user_stack: *mut c_void,
    exit_thread: *mut c_void,
    p_debugger: libc::c_int,
    sigwait: libc::c_int,
    p_estcpu: libc::c_uint,
    p_cpticks: libc::c_int,
    p_pctcpu: u32,
    p_wchan: *mut c_void,
    p_wmesg: *mut c_void,
    p_swtime: libc::c_uint,
    p_slptime: libc::c_uint,
    p_realtimer: [libc::timeval; 2],
    p_rtime: libc::timeval,
    p_uticks: u64,
    p_sticks: u64,
    p_iticks: u64,
    p_traceflag: libc::c_int,
    p_tracep: *mut c_void,
    p_siglist: libc::c_int,
    p_textvp: *mut c_void,
    p_holdcnt: libc::c_int,
    p_sigmask: u32,
    p_sigignore: u32,
    p_sigcatch: u32,
    p_priority: u8,
    p_usrpri: u8,
    p_nice: libc::c_char,
    p_comm: [libc::c_char; 17],
    p_pgrp: *mut c_void,
    p_addr: *mut c_void,
    p_xstat: u16,
    p_acflag: u16,
    p_ru: *mut c_void,
}

/// `struct eproc` of `<sys/sysctl.h>` (LP64), the second member of
/// `kinfo_proc`; only `e_tdev` is read, the credentials and address space
/// before it are opaque here.
#[repr(C)]
struct Eproc {
    e_paddr: *mut c_void,
    e_sess: *mut c_void,
    e_pcred: [u64; 13], // struct _pcred: 104 bytes
    e_ucred: [u32; 19], // struct _ucred: 76 bytes
    e_vm: [u64; 8],     // struct vmspace: 64 bytes
    e_ppid: libc::pid_t,
    e_pgid: libc::pid_t,
    e_jobc: libc::c_short,
    /// The controlling terminal's device, [`NODEV`] when there is none.
    e_tdev: libc::dev_t,
    e_tpgid: libc::pid_t,
    e_tsess: *mut c_void,
    e_wmesg: [libc::c_char; 8],
    e_xsize: i32,
    e_xrssize: libc::c_short,
    e_xccount: libc::c_short,
    e_xswrss: libc::c_short,
    e_flag: i32,
    e_login: [libc::c_char; 12],
    e_spare: [i32; 4],
}

/// `struct kinfo_proc` of `<sys/sysctl.h>`.
#[repr(C)]
struct KinfoProc {
    kp_proc: ExternProc,
    kp_eproc: Eproc,
}

// The layout the kernel fills: checked wherever this compiles.
const _: () = assert!(size_of::<ExternProc>() == 296);
const _: () = assert!(std::mem::offset_of!(Eproc, e_tdev) == 276);
const _: () = assert!(size_of::<Eproc>() == 352);
const _: () = assert!(size_of::<KinfoProc>() == 648);

/// `struct proc_fileinfo` of `<sys/proc_info.h>`.
#[repr(C)]
struct ProcFileInfo {
    fi_openflags: u32,
    fi_status: u32,
    fi_offset: libc::off_t,
    fi_type: i32,
    fi_guardflags: u32,
}

/// `struct vnode_fdinfowithpath`.
#[repr(C)]
struct VnodeFdInfoWithPath {
    pfi: ProcFileInfo,
    pvip: libc::vnode_info_path,
}

const PROC_PIDFDVNODEPATHINFO: libc::c_int = 2;
const SSTOP: libc::c_char = 4;
/// `NODEV` of `<sys/param.h>`: `(dev_t)-1`, `e_tdev` without a terminal.
const NODEV: libc::dev_t = -1;
const SZOMB: libc::c_char = 5;

/// `kinfo_proc` of one process, if it exists.
fn kinfo(pid: Pid) -> Option<KinfoProc> {
    let mut mib = [libc::CTL_KERN, libc::KERN_PROC, libc::KERN_PROC_PID, pid];
    // SAFETY: all-zero bytes are a valid KinfoProc (integers and null
    // pointers only).
    let mut kp: KinfoProc = unsafe { zeroed() };
    let mut len = size_of::<KinfoProc>();
    // SAFETY: mib has 4 entries; kp is a buffer of `len` bytes.
    let rc = unsafe {
        libc::sysctl(
            mib.as_mut_ptr(),
            4,
            (&mut kp as *mut KinfoProc).cast(),
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    (rc == 0 && len == size_of::<KinfoProc>()).then_some(kp)
}

/// `proc_bsdinfo` of one process (parent, group, owner).
fn bsdinfo(pid: Pid) -> Option<libc::proc_bsdinfo> {
    // SAFETY: proc_bsdinfo is plain data; all-zero is valid.
    let mut info: libc::proc_bsdinfo = unsafe { zeroed() };
    let size = size_of::<libc::proc_bsdinfo>() as libc::c_int;
    // SAFETY: info is a buffer of `size` bytes.
    let n = unsafe {
        libc::proc_pidinfo(
            pid,
            libc::PROC_PIDTBSDINFO,
            0,
            (&mut info as *mut libc::proc_bsdinfo).cast(),
            size,
        )
    };
    (n == size).then_some(info)
}

fn pidpath(pid: Pid) -> Option<PathBuf> {
    let mut buf = vec![0u8; 4 * 1024];
    // SAFETY: buf is a buffer of its length (PROC_PIDPATHINFO_MAXSIZE).
    let n = unsafe { libc::proc_pidpath(pid, buf.as_mut_ptr().cast(), buf.len() as u32) };
    if n <= 0 {
        return None;
    }
    buf.truncate(n as usize);
    use std::os::unix::ffi::OsStringExt;
    Some(PathBuf::from(std::ffi::OsString::from_vec(buf)))
}

/// The descriptors of one process (`PROC_PIDLISTFDS`).
fn list_fds(pid: Pid) -> Vec<libc::proc_fdinfo> {
    // SAFETY: a null buffer asks for the size needed.
    let need =
        unsafe { libc::proc_pidinfo(pid, libc::PROC_PIDLISTFDS, 0, std::ptr::null_mut(), 0) };
    if need <= 0 {
        return Vec::new();
    }
    let count = need as usize / size_of::<libc::proc_fdinfo>() + 16;
    // SAFETY: proc_fdinfo is plain data.
    let mut fds: Vec<libc::proc_fdinfo> = vec![unsafe { zeroed() }; count];
    let size = (count * size_of::<libc::proc_fdinfo>()) as libc::c_int;
    // SAFETY: fds is a buffer of `size` bytes.
    let n =
        unsafe { libc::proc_pidinfo(pid, libc::PROC_PIDLISTFDS, 0, fds.as_mut_ptr().cast(), size) };
    if n <= 0 {
        return Vec::new();
    }
    fds.truncate(n as usize / size_of::<libc::proc_fdinfo>());
    fds
}

/// The identity of the vnode behind one descriptor of `pid`.
fn fd_vnode(pid: Pid, fd: i32) -> Option<FileId> {
    // SAFETY: plain data; all-zero is valid.
    let mut info: VnodeFdInfoWithPath = unsafe { zeroed() };
    let size = size_of::<VnodeFdInfoWithPath>() as libc::c_int;
    // SAFETY: info is a buffer of `size` bytes.
    let n = unsafe {
        libc::proc_pidfdinfo(
            pid,
            fd,
            PROC_PIDFDVNODEPATHINFO,
            (&mut info as *mut VnodeFdInfoWithPath).cast(),
            size,
        )
    };
    if n != size {
        return None;
    }
    let st = &info.pvip.vip_vi.vi_stat;
    // As std's MetadataExt::dev() widens the signed st_dev.
    Some(FileId {
        dev: st.vst_dev as i32 as u64,
        ino: st.vst_ino,
    })
}

/// A kqueue watching `pid`'s exit; `Err(ESRCH)` when it is gone.
fn watch_exit(pid: Pid) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall.
    let kq = unsafe { libc::kqueue() };
    if kq < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor.
    let kq = unsafe { OwnedFd::from_raw_fd(kq) };
    // SAFETY: plain data; all-zero is valid.
    let mut ev: libc::kevent = unsafe { zeroed() };
    ev.ident = pid as libc::uintptr_t;
    ev.filter = libc::EVFILT_PROC;
    ev.flags = libc::EV_ADD | libc::EV_ENABLE | libc::EV_ONESHOT;
    ev.fflags = libc::NOTE_EXIT;
    // SAFETY: one change, no events out.
    let rc = unsafe {
        libc::kevent(
            kq.as_raw_fd(),
            &ev,
            1,
            std::ptr::null_mut(),
            0,
            std::ptr::null(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(kq)
}

/// Has the exit registered on `kq` fired? (It fires once.)
fn exit_fired(kq: &OwnedFd) -> bool {
    // SAFETY: plain data; all-zero is valid.
    let mut ev: libc::kevent = unsafe { zeroed() };
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: no changes, room for one event, a zero timeout.
    let n = unsafe { libc::kevent(kq.as_raw_fd(), std::ptr::null(), 0, &mut ev, 1, &zero) };
    n > 0
}

/// The macOS kernel.
pub struct Macos {
    epoch: Instant,
    system: Mutex<System>,
}

impl Default for Macos {
    fn default() -> Self {
        Macos {
            epoch: Instant::now(),
            system: Mutex::new(System::new()),
        }
    }
}

impl std::fmt::Debug for Macos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Macos")
    }
}

impl Macos {
    /// Refresh `pid` in sysinfo's table with `kind`, then read it.
    fn with_process<T>(
        &self,
        pid: Pid,
        kind: ProcessRefreshKind,
        f: impl FnOnce(&sysinfo::Process) -> T,
    ) -> Option<T> {
        let spid = sysinfo::Pid::from_u32(u32::try_from(pid).ok()?);
        let mut sys = self.system.lock().ok()?;
        sys.refresh_processes_specifics(ProcessesToUpdate::Some(&[spid]), true, kind);
        sys.process(spid).map(f)
    }
}

impl Processes for Macos {
    fn pids(&self) -> Vec<Pid> {
        let Ok(mut sys) = self.system.lock() else {
            return Vec::new();
        };
        sys.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing(),
        );
        sys.processes()
            .keys()
            .filter_map(|p| Pid::try_from(p.as_u32()).ok())
            .collect()
    }

    fn stat(&self, pid: Pid) -> Option<ProcStat> {
        let kp = kinfo(pid)?;
        let bsd = bsdinfo(pid);
        let p = &kp.kp_proc;
        let state = match p.p_stat {
            SZOMB => RunState::Zombie,
            SSTOP => RunState::Stopped,
            _ => RunState::Live,
        };
        let start = p.p_starttime.tv_sec as u64 * 1_000_000 + p.p_starttime.tv_usec as u64;
        // SAFETY: p_comm is NUL-terminated within its 17 bytes.
        let comm = unsafe { CStr::from_ptr(p.p_comm.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        Some(ProcStat {
            pid,
            ppid: bsd.as_ref().map_or(0, |b| b.pbi_ppid as Pid),
            pgrp: bsd.as_ref().map_or(0, |b| b.pbi_pgid as Pid),
            session: 0,
            state,
            start_ticks: start,
            comm,
            uid: bsd.map(|b| b.pbi_uid),
        })
    }

    fn cmdline(&self, pid: Pid) -> Vec<String> {
        let kind = ProcessRefreshKind::nothing().with_cmd(UpdateKind::Always);
        self.with_process(pid, kind, |p| {
            p.cmd()
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
    }

    fn exe(&self, pid: Pid) -> Option<FileId> {
        fs::metadata(pidpath(pid)?).ok().map(|m| FileId::of(&m))
    }

    fn cwd(&self, pid: Pid) -> Option<PathBuf> {
        let kind = ProcessRefreshKind::nothing().with_cwd(UpdateKind::Always);
        self.with_process(pid, kind, |p| p.cwd().map(PathBuf::from))
            .flatten()
    }

    fn ignored(&self, pid: Pid) -> Option<u64> {
        kinfo(pid).map(|kp| kp.kp_proc.p_sigignore as u64)
    }

    fn maps(&self, _pid: Pid) -> Vec<Mapping> {
        Vec::new()
    }

    /// The kernel sets `e_tdev` only for a process whose session has a
    /// controlling terminal (`P_CONTROLT`), `NODEV` otherwise.
    fn has_tty(&self, pid: Pid) -> Option<bool> {
        kinfo(pid).map(|kp| kp.kp_eproc.e_tdev != NODEV)
    }
}

impl Files for Macos {
    fn open_files(&self, pid: Pid, id: FileId) -> Vec<OpenFile> {
        list_fds(pid)
            .into_iter()
            .filter(|f| f.proc_fdtype == libc::PROX_FDTYPE_VNODE as u32)
            .filter(|f| fd_vnode(pid, f.proc_fd) == Some(id))
            .map(|f| OpenFile {
                pid,
                fd: f.proc_fd,
                lock: LockSeen::Unknown,
            })
            .collect()
    }
}

impl Clock for Macos {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d)
    }
    /// Microseconds since the epoch: `p_starttime`'s clock.
    fn start_now(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64)
    }
    fn start_unit_secs(&self) -> f64 {
        1e-6
    }
    fn start_origin_wall_secs(&self) -> f64 {
        0.0
    }
}

/// A handle on one process: its pid and start time, re-checked before
/// every signal, and a kqueue that reports its exit.
#[derive(Debug)]
pub struct ProcHandle {
    pub pid: Pid,
    pub start_ticks: u64,
    kq: Option<OwnedFd>,
    gone: Cell<bool>,
}

impl ProcHandle {
    fn same_process(&self) -> bool {
        matches!(super::real().stat(self.pid), Some(st) if st.start_ticks == self.start_ticks && st.state != RunState::Zombie)
    }
}

impl Signals for Macos {
    type Handle = ProcHandle;

    fn open(&self, pid: Pid, start: u64) -> io::Result<Option<ProcHandle>> {
        let kq = match watch_exit(pid) {
            Ok(kq) => Some(kq),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
            Err(_) => None,
        };
        match self.stat(pid) {
            Some(st) if st.start_ticks == start => Ok(Some(ProcHandle {
                pid,
                start_ticks: start,
                kq,
                gone: Cell::new(false),
            })),
            _ => Ok(None),
        }
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
        if h.pid <= 1 || !h.same_process() {
            return Ok(false);
        }
        match nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(h.pid),
            nix::sys::signal::Signal::try_from(sig).map_err(io::Error::from)?,
        ) {
            Ok(()) => Ok(true),
            Err(nix::errno::Errno::ESRCH) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn exited(&self, h: &ProcHandle) -> bool {
        if h.gone.get() {
            return true;
        }
        let gone = match &h.kq {
            Some(kq) => exit_fired(kq),
            None => !h.same_process(),
        };
        h.gone.set(gone);
        gone
    }

    fn via(&self, _h: &ProcHandle) -> Via {
        Via::Kill
    }

    fn wait_any(&self, hs: &[&ProcHandle], timeout: Duration) {
        let fds = hs.iter().map(|h| h.kq.as_ref().map(|f| f.as_raw_fd()));
        posix::wait_any_exit(fds.collect(), timeout);
    }
}

/// Our child, waited for without being reaped: kqueue `NOTE_EXIT`, or
/// `waitid(WNOWAIT)` if no kqueue could be had.
pub struct ChildWaiter {
    pid: Pid,
    kq: Option<OwnedFd>,
    /// Already exited when we looked (`ESRCH`): its status is there to reap.
    exited: bool,
}

impl ChildWaiter {
    pub fn new(pid: Pid) -> ChildWaiter {
        match watch_exit(pid) {
            Ok(kq) => ChildWaiter {
                pid,
                kq: Some(kq),
                exited: false,
            },
            Err(e) => ChildWaiter {
                pid,
                kq: None,
                exited: e.raw_os_error() == Some(libc::ESRCH),
            },
        }
    }

    fn reapable(&self) -> bool {
        // SAFETY: an all-zero siginfo is a valid out-buffer; WNOWAIT leaves
        // the child for Child::wait to reap.
        let mut info: libc::siginfo_t = unsafe { zeroed() };
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                self.pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        rc == 0 && info.si_pid == self.pid
    }
}

impl Bounded for ChildWaiter {
    fn wait_exit(&self, timeout: Duration, abort: &dyn Fn() -> bool) -> bool {
        const SLICE: Duration = Duration::from_millis(50);
        if self.exited {
            return true;
        }
        let deadline = Instant::now().checked_add(timeout);
        loop {
            let left = deadline.map_or(SLICE, |d| d.saturating_duration_since(Instant::now()));
            let slice = left.min(SLICE);
            let done = match &self.kq {
                Some(kq) => posix::poll_readable(&[kq.as_raw_fd()], slice, abort),
                None => {
                    let done = self.reapable();
                    if !done {
                        std::thread::sleep(slice.min(Duration::from_millis(5)));
                    }
                    done
                }
            };
            if done {
                return true;
            }
            if left.is_zero() || abort() {
                return false;
            }
        }
    }
}
