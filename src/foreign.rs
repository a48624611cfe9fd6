//! memtomem servers of another installation: a plugin's `uvx --from
//! memtomem[…]==V memtomem-server` in uv's cache, `python -m memtomem.server`
//! of another venv, a project's `uv run`. No upgrade of this installation
//! changes their code, so they are reported with their version (read from
//! their own environment's metadata, never by running them), how they were
//! launched, and the MCP host config entries that start them
//! ([`crate::hostconfig`]), with what to change there.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::discover::{Inventory, Scope};
use crate::hostconfig::{self, ConfigRef, Configs, Launch};
use crate::proof::{self, Origin};
use crate::sys::{Os, Pid, RunState};

/// One server of another installation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Foreign {
    pub pid: Pid,
    /// memtomem's version in that installation; `None` when its metadata
    /// cannot be found (a system Python).
    pub version: Option<String>,
    /// Its command line, as the process shows it.
    pub command: String,
    /// The launcher's command line (`uvx …`), when uv started it: what a
    /// host config names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launcher: Option<String>,
    /// Its environment (a venv root) or, without one, its interpreter.
    pub installation: PathBuf,
    /// The host config entries that launch it, and what to change.
    pub configs: Vec<ConfigRef>,
    /// Older than the target version (or of unknown version): old code.
    pub old_code: bool,
}

/// The servers of other installations, and the configs that could not be read.
#[derive(Debug, Default)]
pub struct Survey {
    pub others: Vec<Foreign>,
    pub warnings: Vec<String>,
}

impl Survey {
    pub fn old_code(&self) -> impl Iterator<Item = &Foreign> {
        self.others.iter().filter(|f| f.old_code)
    }
}

/// Is `version` older than `target`? Unknown either way counts as old: it
/// cannot be shown to run the target's code.
pub fn older(version: Option<&str>, target: Option<&str>) -> bool {
    match (version, target) {
        (Some(v), Some(t)) => {
            crate::version::compare(v, t).is_none_or(|o| o == std::cmp::Ordering::Less)
        }
        _ => true,
    }
}

/// The memtomem version of `pid`'s installation, if it runs another one.
pub fn version_of(os: &dyn Os, scope: &Scope, pid: Pid) -> Option<Option<String>> {
    match proof::origin(os, scope.install, pid).0 {
        Origin::Other(at) => Some(crate::install::env_version(&at)),
        _ => None,
    }
}

/// What a process's argv must mention to be surveyed, unless the inventory
/// is confined to one runtime dir (`--runtime-dir`): then nothing is.
pub fn needle(env: &crate::paths::PathEnv) -> Option<&'static str> {
    env.runtime_override.is_none().then_some("memtomem")
}

/// The servers of other installations: those of the inventory and, unless
/// the inventory is confined to one runtime dir (`--runtime-dir`, a sandbox
/// whose servers are all registered there), the user's other processes
/// running memtomem under another Python. `target` is the version this
/// installation runs (or is about to).
pub fn survey(os: &dyn Os, inv: &Inventory, scope: &Scope, target: Option<&str>) -> Survey {
    let mut found: Vec<(Pid, PathBuf)> = inv
        .instances
        .iter()
        .filter_map(|i| match (&i.installation, i.pid) {
            (Origin::Other(at), Some(pid)) => Some((pid, at.clone())),
            _ => None,
        })
        .collect();
    if let Some(needle) = needle(scope.env) {
        for pid in os.mentioning(needle) {
            if proof::never_signalled(pid, scope.protected) || found.iter().any(|(p, _)| *p == pid)
            {
                continue;
            }
            let mine = os
                .stat(pid)
                .is_some_and(|s| s.state != RunState::Zombie && s.uid == Some(scope.env.euid));
            if let (true, (Origin::Other(at), _)) = (mine, proof::origin(os, scope.install, pid)) {
                found.push((pid, at));
            }
        }
    }
    // Each one's pid, argv, launchers' argv and installation.
    type Found = (Pid, Vec<String>, Vec<Vec<String>>, PathBuf);
    let launches: Vec<Found> = found
        .into_iter()
        .map(|(pid, at)| (pid, os.cmdline(pid), launchers(os, pid), at))
        .collect();
    let cwds: Vec<PathBuf> = launches
        .iter()
        .filter_map(|(pid, ..)| os.cwd(*pid))
        .collect();
    let configs = if launches.is_empty() {
        Configs::default()
    } else {
        Configs::read(&scope.env.home, &cwds)
    };
    let this_env = scope.install.env_dir.as_deref();
    let others = launches
        .into_iter()
        .map(|(pid, argv, launchers, at)| {
            let version = crate::install::env_version(&at);
            let l = Launch {
                argv: &argv,
                launchers: &launchers,
                installation: &at,
                version: version.as_deref(),
            };
            let configs = hostconfig::matching(&configs, &l, this_env, target);
            Foreign {
                pid,
                old_code: older(version.as_deref(), target),
                command: shell_join(&argv),
                launcher: launchers.last().map(|a| shell_join(a)),
                installation: at,
                version,
                configs,
            }
        })
        .collect();
    Survey {
        others,
        warnings: configs.warnings,
    }
}

/// [`survey`] for `mm-upgrade status`: the same scope as its discovery.
pub fn survey_for(
    env: &crate::paths::PathEnv,
    install: &crate::discover::Installation,
    protected: &[Pid],
    inv: &Inventory,
    target: Option<&str>,
) -> Survey {
    let scope = Scope {
        env,
        install,
        protected,
        scan_processes: true,
    };
    survey(crate::sys::real(), inv, &scope, target)
}

/// The `uv`/`uvx` processes above `pid`, nearest first (`uvx` runs `uv tool
/// uvx …`, which runs the server): a host config names the outermost.
fn launchers(os: &dyn Os, pid: Pid) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut at = pid;
    for _ in 0..3 {
        let Some(ppid) = os.stat(at).map(|s| s.ppid).filter(|p| *p > 1) else {
            break;
        };
        let argv = os.cmdline(ppid);
        let name = argv.first().map(|a| a.rsplit('/').next().unwrap_or(a));
        if !matches!(name, Some("uv" | "uvx")) {
            break;
        }
        out.push(argv);
        at = ppid;
    }
    out
}

/// A command line a shell reads back as the same words.
pub fn shell_join(argv: &[String]) -> String {
    argv.iter()
        .map(|a| crate::paths::shell_quote(Path::new(a)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The report in words: each server, its version and launch, and the
/// config entries to change (or that none known names it).
pub fn lines(others: &[Foreign], target: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    if others.is_empty() {
        return out;
    }
    out.push(format!(
        "memtomem server(s) of another installation (a pinned plugin or another environment; no upgrade of this one changes their code{}):",
        target.map(|t| format!(", this one runs {t}")).unwrap_or_default()
    ));
    for f in others {
        let state = match (&f.version, f.old_code) {
            (Some(v), true) => format!("memtomem {v}, old code"),
            (Some(v), false) => format!("memtomem {v}"),
            (None, _) => "version unknown, counted as old code".into(),
        };
        out.push(format!(
            "  pid {}  {state}  from {}",
            f.pid,
            f.installation.display()
        ));
        out.push(format!("      command: {}", f.command));
        if let Some(l) = &f.launcher {
            out.push(format!("      launched by: {l}"));
        }
        for c in &f.configs {
            out.push(format!(
                "      {} {}: {}",
                c.file.display(),
                c.entry,
                c.change
            ));
        }
        if f.configs.is_empty() {
            out.push(match f.old_code {
                true => "      no known MCP host config names it: change the host that launched it, then restart it",
                false => "      no known MCP host config names it; nothing to do while it runs this version",
            }.into());
        }
    }
    out
}

#[cfg(test)]
mod tests;
