//! Which installation a process runs, from its launch shape (upstream
//! delta §1.2–1.3): this one, another, or unknown.

use std::fs;
use std::path::{Path, PathBuf};

use super::installation::{resolve_arg, Installation};
use super::python::{python_launch, PyLaunch};
use crate::sys::{FileId, Os, Pid};

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

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
