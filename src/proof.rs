//! Whom we may signal: every rule that lets mm-upgrade send a signal to a
//! process, in one place. Discovery ([`crate::discover`]) gathers the facts,
//! this module decides; [`crate::plan`], [`crate::stop`] and
//! [`crate::verify`] only ever act on what it proved.
//!
//! | rule | a process may be signalled when | Linux evidence | macOS evidence | never enough |
//! |---|---|---|---|---|
//! | **(a) lock** | it holds the lock of a memtomem pid file (or presence marker) | the `lock:` line of `/proc/<pid>/fdinfo/<fd>` shows a FLOCK on that very open file (device and inode) | it has that very file (device and inode) open while the lock is contended, and the payload names it | the payload's pid alone; `/proc/locks` (names the process that took the lock, not who holds it now); a file with a second hard link |
//! | **(b) installation** | it runs this installation's own interpreter on one of this installation's entry points | argv\[0\] is `<env>/bin/python*`, `/proc/<pid>/exe` is the file that path leads to, and Python runs `-m memtomem…` or a script that resolves to an entry point of uv's receipt in `<env>/bin` | the same, with the executable from `proc_pidpath` | an argument or a mapping that merely names a file inside the env; an installation path that is not absolute or not verified (a real directory holding uv's receipt) |
//!
//! Whatever the proof:
//! - never pid ≤ 1, never mm-upgrade itself or one of its ancestors
//!   ([`never_signalled`]), never a process group, never a process by name;
//! - a pid file or marker that is a link, a FIFO, not a regular file or has
//!   a second hard link is unverifiable: refused, never signalled, never
//!   removed;
//! - transient states (a pid file that vanished between `lstat` and `open`
//!   or was replaced during the probe, a payload naming a live process that
//!   no longer holds the lock, a holder in mid-exit, a marker changing hands)
//!   get a bounded settle-and-retry ([`SETTLE`], 1.55 s in all); only what
//!   stays unverifiable is refused, and the run names it;
//! - every process found says which installation it runs ([`origin`]):
//!   this one (rule (b)), another (memtomem under another environment's
//!   Python: a `uvx --from memtomem[…]==V` cache env, a project's `.venv`
//!   under `uv run --directory`), or unknown. Another installation's lock
//!   holder is stopped by rule (a) — it holds the store — and named in a
//!   warning (its client, if it pins a version, starts that version again);
//!   without a lock it is never stopped as ours.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::sys::{FileId, LockSeen, OpenFile, Os, Pid};

/// The settle-and-retry schedule for transient states: 50, 100, 200 ms as
/// upstream (contract §4.5), then 400 and 800 ms, because a server with a
/// marker may wait up to 0.5 s for a pid lock its predecessor still holds.
pub const SETTLE: [Duration; 5] = [
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(200),
    Duration::from_millis(400),
    Duration::from_millis(800),
];

/// Never a target, whatever a file or the process table says: pid ≤ 1
/// (0 and negatives address process groups, 1 is init), mm-upgrade itself
/// and its ancestors (`protected`).
pub fn never_signalled(pid: Pid, protected: &[Pid]) -> bool {
    pid <= 1 || pid == std::process::id() as Pid || protected.contains(&pid)
}

/// An instance discovery may hand to the stop stage: a verified process,
/// no problem attached, and the proof recorded (rule (a) or (b)).
pub fn proven(i: &crate::discover::Instance) -> bool {
    i.pid.is_some_and(|p| p > 1) && i.problem.is_none() && !i.evidence.is_empty()
}

/// Rule (a): does a process hold the lock of a pid file (or marker), given
/// its open files naming the file's inode? Where the OS shows the lock
/// (Linux: the fdinfo lock line) that decides. Where it does not (macOS),
/// the process must have that very file open while the lock is contended
/// (`contended`), and the payload (or marker name) must name it
/// (`named`). The file's single link was checked by the probe.
pub fn holds_lock(open: &[OpenFile], contended: bool, named: bool) -> bool {
    open.iter().any(|o| match o.lock {
        LockSeen::Flock(_) => true,
        LockSeen::None => false,
        LockSeen::Unknown => contended && named,
    })
}

/// Where this tool's installation lives, to prove a process belongs to it.
#[derive(Debug, Clone, Default)]
pub struct Installation {
    /// uv's tool dir exactly as uv named it (the transaction's layout checks
    /// it is absolute); `None` when uv printed nothing.
    pub tool_dir: Option<PathBuf>,
    /// uv's bin dir, for entry-point links.
    pub bin_dir: Option<PathBuf>,
    /// `<uv tool dir>/memtomem`, only when it is verified: an absolute path
    /// naming a real directory that holds a uv receipt. Without it nothing
    /// is proven by installation (a relative or empty path would make any
    /// process whose argv[0] is `memtomem` "ours").
    pub env_dir: Option<PathBuf>,
    /// The console scripts the receipt lists (`memtomem`, `mm`,
    /// `memtomem-server`…): the entry points a process may run.
    pub entry_points: Vec<String>,
}

impl Installation {
    /// Ask uv where its tools and entry points live.
    pub fn from_uv(uv: &crate::install::Uv) -> Result<Installation, crate::install::UvError> {
        let (tool_dir, bin_dir) = uv.tool_dirs()?;
        Ok(Installation::at(tool_dir, bin_dir))
    }

    /// The installation under `tool_dir`, verified as [`Installation::env_dir`] says.
    pub fn at(tool_dir: PathBuf, bin_dir: Option<PathBuf>) -> Installation {
        let tool_dir = (!tool_dir.as_os_str().is_empty()).then_some(tool_dir);
        let env_dir = tool_dir
            .as_ref()
            .map(|t| t.join(crate::install::PACKAGE))
            .filter(|e| verified_env(e));
        let entry_points = env_dir
            .as_deref()
            .and_then(|e| crate::receipt::read(e).ok())
            .map(|r| r.entrypoints.into_iter().map(|e| e.name).collect())
            .unwrap_or_default();
        Installation {
            tool_dir,
            bin_dir: bin_dir.filter(|b| !b.as_os_str().is_empty()),
            env_dir,
            entry_points,
        }
    }

    /// uv's tool dir (the environment's parent).
    pub fn tool_dir(&self) -> Option<&Path> {
        self.tool_dir.as_deref()
    }

    /// Evidence that `pid` runs this installation's own interpreter on one
    /// of its entry points, if it does. Only the process's executable, argv
    /// and working directory are read; nothing of it is executed, and an
    /// argument that merely names a file inside the env proves nothing.
    pub fn evidence(&self, os: &dyn Os, pid: Pid) -> Option<String> {
        let env_dir = self.env_dir.as_ref()?;
        let argv = os.cmdline(pid);
        runs_entry_point(env_dir, &self.entry_points, &argv, os.exe(pid), || {
            os.cwd(pid)
        })
    }
}

/// Which installation a process runs, as far as its argv and executable
/// tell (the launch shapes of upstream delta §1.2–1.3).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// This installation's interpreter on one of its entry points, rule (b):
    /// `<env>/bin/python -m memtomem.server` (what `mm init` registers),
    /// `<env>/bin/python <bin>/memtomem-server` (a console script),
    /// `… <bin>/memtomem serve` / `mm serve`.
    This,
    /// memtomem run by another environment's Python: a `uvx --from
    /// memtomem[…]==V memtomem-server` cache env, a project's `.venv` under
    /// `uv run --directory …`, another tool dir. Never this installation.
    Other(PathBuf),
    /// Neither can be told.
    #[default]
    Unknown,
}

/// The console scripts of memtomem (an `Other` launch runs one of them).
const MEMTOMEM_SCRIPTS: [&str; 4] = ["memtomem", "memtomem-server", "memtomem-web", "mm"];

/// Which installation `pid` runs, with the evidence for it.
pub fn origin(os: &dyn Os, install: &Installation, pid: Pid) -> (Origin, Option<String>) {
    if let Some(ev) = install.evidence(os, pid) {
        return (Origin::This, Some(ev));
    }
    let argv = os.cmdline(pid);
    let cwd = || os.cwd(pid);
    let Some(py) = argv.first().and_then(|a| resolve_arg(a, &cwd)) else {
        return (Origin::Unknown, None);
    };
    let is_python = py
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("python"));
    let memtomem = match python_launch(&argv[1..]) {
        PyLaunch::Module(m) => m == "memtomem" || m.starts_with("memtomem."),
        PyLaunch::Script(s) => Path::new(&s)
            .file_name()
            .is_some_and(|n| MEMTOMEM_SCRIPTS.contains(&n.to_string_lossy().as_ref())),
        PyLaunch::Other => false,
    };
    if !is_python || !memtomem {
        return (Origin::Unknown, None);
    }
    // This env's interpreter path, but not proven (say, the executable is
    // not the file it leads to): not "another" installation either.
    let id = |d: &Path| fs::metadata(d).ok().map(|m| FileId::of(&m));
    let bin = py.parent().unwrap_or(Path::new("/"));
    if let Some(env) = &install.env_dir {
        if id(bin).is_some_and(|b| Some(b) == id(&env.join("bin"))) {
            return (Origin::Unknown, None);
        }
    }
    let venv = bin
        .parent()
        .filter(|root| bin.ends_with("bin") && root.join("pyvenv.cfg").is_file())
        .map_or_else(|| py.clone(), Path::to_path_buf);
    let ev = format!(
        "runs another installation: {} (its interpreter {})",
        venv.display(),
        py.display()
    );
    (Origin::Other(venv), Some(ev))
}

/// An argv path as the process resolved it: absolute, or relative to its
/// working directory; a bare name was found on `PATH`, which we do not read.
fn resolve_arg(p: &str, cwd: &dyn Fn() -> Option<PathBuf>) -> Option<PathBuf> {
    let p = Path::new(p);
    if p.is_absolute() {
        Some(p.to_path_buf())
    } else if p.components().count() > 1 {
        Some(cwd()?.join(p))
    } else {
        None
    }
}

/// A directory (not a link) at an absolute path, holding uv's receipt.
fn verified_env(env: &Path) -> bool {
    env.is_absolute()
        && fs::symlink_metadata(env).is_ok_and(|m| m.is_dir())
        && fs::symlink_metadata(env.join(crate::receipt::FILE)).is_ok_and(|m| m.is_file())
}

/// How a Python command line says what to run (CPython's own option rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PyLaunch {
    /// `-m <module>`
    Module(String),
    /// A script path, as Python will open it.
    Script(String),
    /// `-c <code>`, `-` (stdin) or an interactive session.
    Other,
}

/// Parse what a Python interpreter runs from its arguments (after argv[0]):
/// grouped flags (`-BEs`), options with an argument (`-W`, `-X`, attached
/// or separate, `--check-hash-based-pycs`), `-m`/`-c` ending the options,
/// `--`, and the first operand as the script.
pub fn python_launch(args: &[String]) -> PyLaunch {
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if a == "--" {
            return args
                .get(i + 1)
                .map_or(PyLaunch::Other, |s| PyLaunch::Script(s.clone()));
        }
        if a == "-" || !a.starts_with('-') {
            return match a {
                "-" => PyLaunch::Other,
                _ => PyLaunch::Script(a.to_string()),
            };
        }
        if let Some(long) = a.strip_prefix("--") {
            // Only one long option takes a separate value.
            i += if long == "check-hash-based-pycs" {
                2
            } else {
                1
            };
            continue;
        }
        let flags = &a[1..];
        for (k, c) in flags.char_indices() {
            let rest = &flags[k + c.len_utf8()..];
            match c {
                'm' | 'c' | 'W' | 'X' => {
                    let value = if rest.is_empty() {
                        i += 1;
                        args.get(i).cloned()
                    } else {
                        Some(rest.to_string())
                    };
                    match c {
                        'm' => return value.map_or(PyLaunch::Other, PyLaunch::Module),
                        'c' => return PyLaunch::Other,
                        _ => break,
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    PyLaunch::Other
}

/// Rule (b): the process runs this installation's own interpreter on one
/// of its entry points.
/// - argv[0] names a `python*` in the env's `bin/` (that is how Python knows
///   it is the env's interpreter), and the running executable is the very
///   file that path leads to;
/// - Python runs `-m memtomem…`, or a script that resolves (links followed,
///   a relative path against the process's working directory) to one of the
///   receipt's entry points in the env's `bin/`.
pub fn runs_entry_point(
    env_dir: &Path,
    entry_points: &[String],
    argv: &[String],
    exe: Option<FileId>,
    cwd: impl Fn() -> Option<PathBuf>,
) -> Option<String> {
    let bin = env_dir.join("bin");
    let bin_id = fs::metadata(&bin).ok().map(|m| FileId::of(&m))?;
    let resolve = |p: &str| resolve_arg(p, &cwd);
    let in_bin = |p: &Path| {
        p.parent()
            .and_then(|d| fs::metadata(d).ok())
            .is_some_and(|m| FileId::of(&m) == bin_id)
    };
    let argv0 = resolve(argv.first()?)?;
    let is_python = argv0
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("python"));
    if !is_python || !in_bin(&argv0) {
        return None;
    }
    let interp = fs::metadata(&argv0).ok().map(|m| FileId::of(&m))?;
    if exe? != interp {
        return None;
    }
    match python_launch(&argv[1..]) {
        PyLaunch::Module(m) if m == "memtomem" || m.starts_with("memtomem.") => Some(format!(
            "runs this installation's interpreter {} -m {m}",
            argv0.display()
        )),
        PyLaunch::Script(s) => {
            let script = fs::canonicalize(resolve(&s)?).ok()?;
            let name = script.file_name()?.to_string_lossy().into_owned();
            (in_bin(&script) && entry_points.contains(&name)).then(|| {
                format!(
                    "runs this installation's interpreter {} on its entry point {s}",
                    argv0.display()
                )
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys;
    use crate::testutil::Proc;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    fn s(p: &Path) -> String {
        p.to_str().unwrap().to_string()
    }

    /// A uv tool dir with a memtomem env: receipt listing `memtomem-server`,
    /// `bin/python` (a link to /bin/sh, standing in for the interpreter) and
    /// the entry point (a shell script that idles), and a bin-dir link.
    struct Env {
        tmp: tempfile::TempDir,
    }
    impl Env {
        fn new() -> Env {
            let tmp = tempfile::tempdir().unwrap();
            let env = tmp.path().join("tools/memtomem");
            fs::create_dir_all(env.join("bin")).unwrap();
            fs::create_dir_all(env.join("lib")).unwrap();
            fs::create_dir_all(tmp.path().join("bin")).unwrap();
            fs::write(
                env.join("uv-receipt.toml"),
                "[tool]\nrequirements = [{ name = \"memtomem\" }]\nentrypoints = [\n    { name = \"memtomem-server\", install-path = \"/b/memtomem-server\", from = \"memtomem\" },\n]\n",
            )
            .unwrap();
            symlink("/bin/sh", env.join("bin/python")).unwrap();
            for f in ["bin/memtomem-server", "lib/x.py"] {
                fs::write(env.join(f), "sleep 30 & wait\n").unwrap();
                fs::set_permissions(env.join(f), fs::Permissions::from_mode(0o755)).unwrap();
            }
            symlink(
                env.join("bin/memtomem-server"),
                tmp.path().join("bin/memtomem-server"),
            )
            .unwrap();
            Env { tmp }
        }
        fn path(&self, rel: &str) -> PathBuf {
            self.tmp.path().join(rel)
        }
        fn install(&self) -> Installation {
            Installation::at(self.path("tools"), Some(self.path("bin")))
        }
    }

    #[test]
    fn the_envs_interpreter_on_one_of_its_entry_points_is_proof() {
        let e = Env::new();
        let install = e.install();
        assert_eq!(install.entry_points, vec!["memtomem-server".to_string()]);
        let py = s(&e.path("tools/memtomem/bin/python"));
        // Direct, and through uv's bin-dir link (the path the shebang got).
        for script in [
            e.path("tools/memtomem/bin/memtomem-server"),
            e.path("bin/memtomem-server"),
        ] {
            let p = Proc::spawn(Command::new(&py).arg(&script))
                .exec_done(&[py.as_str(), s(&script).as_str()]);
            let proof = install.evidence(sys::real(), p.pid()).expect("proven");
            assert!(proof.contains("entry point"), "{proof}");
        }
    }

    /// Finding 1: a pager (or anything) with a file of the env among its
    /// arguments, and even the env's interpreter on a file that is not an
    /// entry point, is not this installation's server.
    #[test]
    fn an_argument_naming_a_file_inside_the_env_is_not_proof() {
        let e = Env::new();
        let install = e.install();
        let file = s(&e.path("tools/memtomem/lib/x.py"));
        // `less <env>/lib/x.py`: GNU tail, named less, following the file.
        let pager = Proc::spawn(Command::new("tail").arg0("less").args([&file, "-f"]))
            .exec_done(&["less", file.as_str(), "-f"]);
        assert_eq!(install.evidence(sys::real(), pager.pid()), None);
        // An interpreter of its own on a file of the env.
        let sh = Proc::spawn(Command::new("/bin/sh").arg(&file)).exec_done(&["/bin/sh", &file]);
        assert_eq!(install.evidence(sys::real(), sh.pid()), None);
        // The env's interpreter, but on a file that is not an entry point.
        let py = s(&e.path("tools/memtomem/bin/python"));
        let lib = Proc::spawn(Command::new(&py).arg(&file)).exec_done(&[&py, &file]);
        assert_eq!(install.evidence(sys::real(), lib.pid()), None);
        // argv[0] claims the env's interpreter, but another program runs.
        let script = s(&e.path("tools/memtomem/bin/memtomem-server"));
        let liar = Proc::spawn(Command::new("tail").arg0(&py).args(["-f", &script]))
            .exec_done(&[&py, "-f", &script]);
        assert_eq!(install.evidence(sys::real(), liar.pid()), None);
    }

    /// Finding 2: `uv tool dir` printing nothing made the installation the
    /// relative path `memtomem`, and any `memtomem` process "ours".
    #[test]
    fn an_installation_path_that_is_not_absolute_and_verified_proves_nothing() {
        let e = Env::new();
        let uv = e.path("uv");
        fs::write(&uv, "#!/bin/sh\nexit 0\n").unwrap();
        fs::set_permissions(&uv, fs::Permissions::from_mode(0o755)).unwrap();
        let uv = crate::install::Uv {
            program: uv,
            timeout: Duration::from_secs(10),
            interruptible: false,
        };
        let install = Installation::from_uv(&uv).unwrap();
        assert_eq!((&install.tool_dir, &install.env_dir), (&None, &None));
        let named = Proc::spawn(Command::new("sleep").arg0("memtomem").arg("30"))
            .exec_done(&["memtomem", "30"]);
        assert_eq!(install.evidence(sys::real(), named.pid()), None);
        // Absolute, but without uv's receipt: not verified either, even for
        // the env's interpreter on its entry point.
        fs::remove_file(e.path("tools/memtomem/uv-receipt.toml")).unwrap();
        let unverified = e.install();
        assert_eq!(unverified.env_dir, None);
        let py = s(&e.path("tools/memtomem/bin/python"));
        let script = s(&e.path("tools/memtomem/bin/memtomem-server"));
        let p = Proc::spawn(Command::new(&py).arg(&script)).exec_done(&[&py, &script]);
        assert_eq!(unverified.evidence(sys::real(), p.pid()), None);
    }

    #[test]
    fn python_command_lines_are_read_as_python_reads_them() {
        let v = |a: &[&str]| python_launch(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let m = |s: &str| PyLaunch::Module(s.into());
        let sc = |s: &str| PyLaunch::Script(s.into());
        assert_eq!(v(&["-m", "memtomem.server"]), m("memtomem.server"));
        assert_eq!(v(&["-BEs", "-mmemtomem.server"]), m("memtomem.server"));
        assert_eq!(
            v(&["-W", "ignore", "-X", "dev", "/e/bin/mm", "serve"]),
            sc("/e/bin/mm")
        );
        assert_eq!(v(&["-Wignore", "--", "-x.py"]), sc("-x.py"));
        assert_eq!(v(&["--check-hash-based-pycs", "never", "s.py"]), sc("s.py"));
        // The script is the first operand: later arguments are its own.
        assert_eq!(v(&["/tmp/a.py", "-m", "memtomem"]), sc("/tmp/a.py"));
        assert_eq!(v(&["-c", "import memtomem", "/e/bin/mm"]), PyLaunch::Other);
        assert_eq!(v(&["-Ic", "x"]), PyLaunch::Other);
        assert_eq!(v(&["-"]), PyLaunch::Other);
        assert_eq!(v(&[]), PyLaunch::Other);
        assert_eq!(v(&["-m"]), PyLaunch::Other);
    }

    #[test]
    fn never_signalled_covers_groups_init_ourselves_and_ancestors() {
        for pid in [-4242, -1, 0, 1, std::process::id() as Pid] {
            assert!(never_signalled(pid, &[]), "{pid}");
        }
        assert!(never_signalled(77, &[77]));
        assert!(!never_signalled(77, &[78]));
    }

    /// The launch shapes memtomem really uses (upstream delta §1.2–1.3),
    /// through the fake OS: this installation's, another installation's,
    /// and what cannot be told.
    #[test]
    fn fake_launch_shapes_are_classified_as_this_or_another_installation() {
        use crate::sys::fake::{FakeOs, FakeProc};
        let tmp = tempfile::tempdir().unwrap();
        let env = tmp.path().join("tools/memtomem");
        fs::create_dir_all(env.join("bin")).unwrap();
        fs::write(
            env.join("uv-receipt.toml"),
            "[tool]\nrequirements = [{ name = \"memtomem\" }]\nentrypoints = [\n    { name = \"memtomem\", install-path = \"/b/memtomem\" },\n    { name = \"memtomem-server\", install-path = \"/b/memtomem-server\" },\n    { name = \"mm\", install-path = \"/b/mm\" },\n]\n",
        )
        .unwrap();
        symlink("/bin/sh", env.join("bin/python")).unwrap();
        for f in ["memtomem", "memtomem-server", "mm"] {
            fs::write(env.join("bin").join(f), "").unwrap();
        }
        let install = Installation::at(tmp.path().join("tools"), None);
        let exe = FileId::of(&fs::metadata(env.join("bin/python")).unwrap());
        // A uvx cache env and a project venv (`uv run --directory proj`).
        let cache = tmp.path().join("cache/uv/archive-v0/Fk3kHc2vZ8dLxq1a");
        let venv = tmp.path().join("proj/.venv");
        for root in [&cache, &venv] {
            fs::create_dir_all(root.join("bin")).unwrap();
            fs::write(root.join("pyvenv.cfg"), "home = /usr/bin\n").unwrap();
        }
        let p = |d: &Path, f: &str| d.join(f).display().to_string();
        let py = p(&env, "bin/python");
        let os = FakeOs::new();
        let shapes: Vec<(Vec<String>, Option<FileId>, Origin)> = vec![
            // mm init's registration for uv tool installs
            (
                vec![py.clone(), "-m".into(), "memtomem.server".into()],
                Some(exe),
                Origin::This,
            ),
            // memtomem-server (its shebang), through uv's bin-dir link too
            (
                vec![py.clone(), p(&env, "bin/memtomem-server")],
                Some(exe),
                Origin::This,
            ),
            // memtomem serve / mm serve
            (
                vec![py.clone(), p(&env, "bin/memtomem"), "serve".into()],
                Some(exe),
                Origin::This,
            ),
            (
                vec![py.clone(), p(&env, "bin/mm"), "serve".into()],
                Some(exe),
                Origin::This,
            ),
            // uvx --from memtomem[onnx]==0.6.8 memtomem-server: the cache env
            (
                vec![p(&cache, "bin/python"), p(&cache, "bin/memtomem-server")],
                None,
                Origin::Other(cache.clone()),
            ),
            // uv run --directory proj memtomem-server: the project's venv
            (
                vec![p(&venv, "bin/python3"), p(&venv, "bin/memtomem-server")],
                None,
                Origin::Other(venv.clone()),
            ),
            // a system Python with memtomem installed for the user
            (
                vec![
                    "/usr/bin/python3".into(),
                    "-m".into(),
                    "memtomem.server".into(),
                ],
                None,
                Origin::Other("/usr/bin/python3".into()),
            ),
            // the uvx / uv run parents themselves, a pager, a bare name
            (
                vec![
                    "uvx".into(),
                    "--from".into(),
                    "memtomem[onnx]==0.6.8".into(),
                    "memtomem-server".into(),
                ],
                None,
                Origin::Unknown,
            ),
            (
                vec![
                    "/usr/bin/uv".into(),
                    "run".into(),
                    "--directory".into(),
                    p(tmp.path(), "proj"),
                    "memtomem-server".into(),
                ],
                None,
                Origin::Unknown,
            ),
            (
                vec!["less".into(), p(&env, "lib/x.py")],
                None,
                Origin::Unknown,
            ),
            (
                vec!["python3".into(), "-m".into(), "memtomem.server".into()],
                None,
                Origin::Unknown,
            ),
            // this env's interpreter path, but another executable: unproven,
            // yet not "another installation" either
            (
                vec![py.clone(), "-m".into(), "memtomem.server".into()],
                Some(FileId { dev: 1, ino: 1 }),
                Origin::Unknown,
            ),
            // this env's interpreter on something that is not memtomem
            (
                vec![py.clone(), "-m".into(), "pip".into()],
                Some(exe),
                Origin::Unknown,
            ),
        ];
        for (n, (argv, exe, _)) in shapes.iter().enumerate() {
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let mut proc_ = FakeProc::new(1).argv(&argv);
            proc_.exe = *exe;
            os.add(100 + n as Pid, proc_);
        }
        for (n, (argv, _, want)) in shapes.iter().enumerate() {
            let (got, ev) = origin(&os, &install, 100 + n as Pid);
            assert_eq!(&got, want, "{argv:?}");
            assert_eq!(ev.is_some(), *want != Origin::Unknown, "{argv:?}");
        }
    }
}
