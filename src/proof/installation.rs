//! Rule (b): this installation, verified, and the proof that a process
//! runs its own interpreter on one of its entry points.

use std::fs;
use std::path::{Path, PathBuf};

use super::python::{python_launch, PyLaunch};
use crate::sys::{FileId, Os, Pid};

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

    /// The files `<env>/bin/python*` lead to: rule (b) requires a process's
    /// executable to be one of them, so a scan can rule out every other
    /// process with one look at its executable.
    pub fn interpreters(&self) -> Vec<FileId> {
        let Some(env_dir) = &self.env_dir else {
            return Vec::new();
        };
        let Ok(dir) = fs::read_dir(env_dir.join("bin")) else {
            return Vec::new();
        };
        let mut out: Vec<FileId> = dir
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("python"))
            .filter_map(|e| fs::metadata(e.path()).ok())
            .map(|m| FileId::of(&m))
            .collect();
        out.sort_by_key(|f| (f.dev, f.ino));
        out.dedup();
        out
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

/// An argv path as the process resolved it: absolute, or relative to its
/// working directory; a bare name was found on `PATH`, which we do not read.
pub(super) fn resolve_arg(p: &str, cwd: &dyn Fn() -> Option<PathBuf>) -> Option<PathBuf> {
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
    use std::time::Duration;

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
}
