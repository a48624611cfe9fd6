//! `--argv-shape`: the command line a real server of that launch shape has, so discovery
//! sees what it would see in the field (upstream delta §1.2–1.3):
//!
//! | shape | `/proc/<pid>/cmdline` | `comm` |
//! |---|---|---|
//! | `entry-point` | `<py> <bin>/memtomem-server` (a console script's shebang) | `memtomem-server` |
//! | `python-m` | `<py> -m memtomem.server` (what `mm init` writes for uv tool, pipx, venv) | basename of `<py>` |
//! | `serve` | `<py> <bin>/memtomem serve` (`mm serve`, the MCP registry's `uvx memtomem==V serve`) | `memtomem` |
//! | `uvx` | `<cache>/archive-v0/<id>/bin/python <same>/bin/memtomem-server` (a plugin's `uvx --from memtomem[onnx]==V memtomem-server`) | `memtomem-server` |
//! | `uv-run` | `<dir>/.venv/bin/python3 <same>/bin/memtomem-server` (a source checkout's `uv run --directory <dir> memtomem-server`: uv runs the project venv's console script) | `memtomem-server` |
//!
//! `<py>` is `--argv-python`, by default `$HOME/.local/share/uv/tools/memtomem/bin/python`
//! (`uvx`: `$HOME/.cache/uv/archive-v0/<id>/bin/python`; `uv-run`:
//! `$HOME/src/memtomem/.venv/bin/python3`); `<bin>` is its directory.
//!
//! How: the process re-executes itself (same pid, before anything else happens) with
//! that argv; its real arguments travel in `FAKE_SERVER_SHAPED_ARGS` (JSON), so the
//! command line holds nothing else. `comm` is set with `PR_SET_NAME`. What cannot be
//! faked: `/proc/<pid>/exe` is still fake-server (a real one is the interpreter).

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use clap::{Parser, ValueEnum};

/// The environment variable that carries the real arguments across the re-exec.
pub const ARGS_ENV: &str = "FAKE_SERVER_SHAPED_ARGS";

/// An archive id shaped like uv's (16 characters of URL-safe base64).
const UVX_ARCHIVE: &str = "Fk3kHc2vZ8dLxq1a";

/// A source checkout's project venv interpreter, under HOME (`uv run --directory`).
const UV_RUN_PYTHON: &str = "src/memtomem/.venv/bin/python3";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Shape {
    /// `<py> <bin>/memtomem-server`
    EntryPoint,
    /// `<py> -m memtomem.server`
    PythonM,
    /// `<py> <bin>/memtomem serve`
    Serve,
    /// `<uv cache>/archive-v0/<id>/bin/python <same>/bin/memtomem-server`
    Uvx,
    /// `<dir>/.venv/bin/python3 <same>/bin/memtomem-server` (`uv run --directory <dir>`)
    UvRun,
}

impl Shape {
    /// The interpreter path when `--argv-python` is not given.
    fn default_python(self) -> PathBuf {
        let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/".into()));
        match self {
            Shape::Uvx => home.join(format!(".cache/uv/archive-v0/{UVX_ARCHIVE}/bin/python")),
            Shape::UvRun => home.join(UV_RUN_PYTHON),
            _ => home.join(".local/share/uv/tools/memtomem/bin/python"),
        }
    }

    /// argv and comm for this shape with interpreter `py`.
    pub fn argv(self, py: &Path) -> (Vec<OsString>, String) {
        let bin = py.parent().unwrap_or(Path::new("/"));
        let script = |name: &str| bin.join(name).into_os_string();
        match self {
            Shape::EntryPoint | Shape::Uvx | Shape::UvRun => (
                vec![py.into(), script("memtomem-server")],
                "memtomem-server".into(),
            ),
            Shape::PythonM => (
                vec![py.into(), "-m".into(), "memtomem.server".into()],
                py.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "python".into()),
            ),
            Shape::Serve => (
                vec![py.into(), script("memtomem"), "serve".into()],
                "memtomem".into(),
            ),
        }
    }
}

/// Parses the command line, and returns it with the arguments it was parsed from.
/// Under `--argv-shape` the first pass re-executes the process with the shaped argv
/// (never returning); the second pass finds its arguments in `FAKE_SERVER_SHAPED_ARGS`
/// and sets `comm`.
pub fn parse<C: Parser>(
    shape_of: impl Fn(&C) -> Option<(Shape, Option<PathBuf>)>,
) -> (C, Vec<String>) {
    if let Some(json) = std::env::var_os(ARGS_ENV) {
        // Single-threaded: nothing else reads the environment yet.
        std::env::remove_var(ARGS_ENV);
        let args: Vec<String> = match serde_json::from_slice(json.as_bytes()) {
            Ok(a) => a,
            Err(e) => crate::die_early(&format!("{ARGS_ENV}: {e}")),
        };
        let cli = C::parse_from(&args);
        if let Some((shape, py)) = shape_of(&cli) {
            let py = py.unwrap_or_else(|| shape.default_python());
            set_comm(&shape.argv(&py).1);
        }
        return (cli, args);
    }
    let args: Vec<String> = std::env::args().collect();
    let cli = C::parse_from(&args);
    let Some((shape, py)) = shape_of(&cli) else {
        return (cli, args);
    };
    let py = py.unwrap_or_else(|| shape.default_python());
    let (argv, _) = shape.argv(&py);
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => crate::die_early(&format!("--argv-shape: cannot find my executable: {e}")),
    };
    let err = std::process::Command::new(exe)
        .arg0(&argv[0])
        .args(&argv[1..])
        .env(
            ARGS_ENV,
            serde_json::to_string(&args).expect("strings serialise"),
        )
        .exec();
    crate::die_early(&format!("--argv-shape: re-exec failed: {err}"))
}

/// `PR_SET_NAME`: what `/proc/<pid>/comm` (and `ps -o comm`) shows, 15 bytes at most.
/// Linux only: macOS has no call that renames a process (its `p_comm` is the
/// executable's name), so there the shape is in argv alone.
#[cfg(not(target_os = "linux"))]
fn set_comm(_name: &str) {}

#[cfg(target_os = "linux")]
fn set_comm(name: &str) {
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated buffer of at most 16 bytes we own.
    unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr() as libc::c_ulong, 0, 0, 0) };
}
