//! The command line: where the server meets its peers (runtime dir, store), what it
//! acts as (server, `mm web`, a legacy era), what it reports (ready file, events), its
//! faults (`--mode`), and how it looks (`--argv-shape`, `--server-version`).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::{faults, shape};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Legacy {
    /// Exclusive flock on ~/.memtomem/.server.pid, payload just "<pid>", never unlinked.
    #[value(name = "pre-0.1.25")]
    Pre0125,
    /// 0.1.26-era: bare server.pid (EX) in the runtime dir plus a SHARED flock on
    /// ~/.memtomem/.server.pid.
    Alias,
}

#[derive(Parser, Debug)]
#[command(
    name = "fake-server",
    version,
    about = "A memtomem-server 0.6.12 (stdio) double with a catalogue of lifecycle faults",
    after_help = faults::help_text()
)]
pub struct Cli {
    /// Runtime dir instead of /tmp/memtomem-<euid> (created 0700 and validated). Without it,
    /// _MEMTOMEM_TEST_RUNTIME_DIR is honoured when PYTEST_CURRENT_TEST is set.
    #[arg(long, env = "FAKE_SERVER_RUNTIME_DIR", value_name = "DIR")]
    pub runtime_dir: Option<PathBuf>,
    /// Store path whose digest names the pid file [default: $HOME/.memtomem/memtomem.db]
    #[arg(long, env = "MEMTOMEM_STORAGE__SQLITE_PATH", value_name = "PATH")]
    pub store: Option<OsString>,
    /// Act as the web UI (`mm web`): web.pid + web.json, no presence marker.
    #[arg(long)]
    pub web: bool,
    /// Port written into web.pid / web.json (nothing listens on it).
    #[arg(long, default_value_t = 8080, requires = "web")]
    pub port: u16,
    /// Act as an old server generation.
    #[arg(long, value_enum, value_name = "ERA", conflicts_with = "web")]
    pub legacy: Option<Legacy>,
    /// Use the bare server.pid (a server whose store path cannot be digested).
    #[arg(long, conflicts_with_all = ["web", "legacy"])]
    pub bare: bool,
    /// Write a JSON readiness record here (atomically) once every lock, file and signal
    /// disposition is in place.
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
    /// Append JSON-lines events (start, lock, ready, signal, fork, respawn, warning, exit).
    /// The environment variable reaches servers a launcher starts (fake-host, an entry
    /// point): all of them append to one file.
    #[arg(long, env = "FAKE_SERVER_EVENTS", value_name = "PATH")]
    pub events: Option<PathBuf>,
    /// Fault mode, repeatable (see the list below).
    #[arg(long = "mode", value_name = "NAME[=ARG]", value_parser = faults::check)]
    pub modes: Vec<String>,
    /// Do not treat stdin EOF as shutdown (for launches with stdin at /dev/null).
    #[arg(long)]
    pub no_stdin: bool,
    /// serverInfo.version in the MCP `initialize` answer.
    #[arg(
        long,
        env = "FAKE_SERVER_VERSION",
        value_name = "V",
        default_value = "0.6.12"
    )]
    pub server_version: String,
    /// Look like this launch shape in /proc/<pid>/cmdline and comm (see src/shape.rs):
    /// the process re-executes itself, same pid, with that argv.
    #[arg(long, value_enum, value_name = "SHAPE")]
    pub argv_shape: Option<shape::Shape>,
    /// The interpreter path in the shaped argv [default: ~/.local/share/uv/tools/memtomem/bin/python;
    /// uvx: ~/.cache/uv/archive-v0/<id>/bin/python; uv-run: ~/src/memtomem/.venv/bin/python3].
    #[arg(long, value_name = "PATH", requires = "argv_shape")]
    pub argv_python: Option<PathBuf>,
}
