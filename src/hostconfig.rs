//! The MCP host configs on this machine that launch memtomem servers, read
//! (never edited) to tell a user which file and entry make a server of
//! another installation run old code, and what to change there.
//!
//! Read under the HOME mm-upgrade uses (`--home`): `~/.claude.json`
//! (top-level and per-project `mcpServers`), the project `.mcp.json` files
//! (the projects it lists, and the directories the caller adds: a server's
//! working directory), Claude Desktop's config (Linux and macOS places),
//! `~/.cursor/mcp.json`, and Claude Code plugins (`~/.claude/plugins`: the
//! `installPath`s of `installed_plugins.json` and the cache copies, each
//! with its `.mcp.json` or `.claude-plugin/plugin.json` `mcpServers`).
//! A file that does not parse is a warning naming it, never a failure.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::proof::{python_launch, PyLaunch};

/// ~/.claude.json grows with history; anything larger is not a config.
const MAX_CONFIG: u64 = 64 << 20;

/// One server entry of an MCP host config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub file: PathBuf,
    /// Where in the file: `mcpServers.memtomem`, `projects["/p"].mcpServers.memtomem`.
    pub entry: String,
    /// The plugin (`name@marketplace`) whose manifest this is.
    pub plugin: Option<String>,
    pub command: String,
    pub args: Vec<String>,
}

/// Every server entry found, and the files that could not be read.
#[derive(Debug, Default)]
pub struct Configs {
    pub entries: Vec<Entry>,
    pub warnings: Vec<String>,
}

/// A config entry naming a server, and what to change there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigRef {
    pub file: PathBuf,
    pub entry: String,
    pub change: String,
}

impl Configs {
    /// Read every known config under `home`, plus the `.mcp.json` of each
    /// directory of `project_dirs`.
    pub fn read(home: &Path, project_dirs: &[PathBuf]) -> Configs {
        let mut c = Configs::default();
        let claude = home.join(".claude.json");
        let mut projects: Vec<PathBuf> = Vec::new();
        if let Some(doc) = c.load(&claude) {
            c.servers(&claude, "", None, doc.get("mcpServers"));
            if let Some(ps) = doc.get("projects").and_then(Value::as_object) {
                for (dir, p) in ps {
                    let at = format!("projects[{}]", Value::from(dir.as_str()));
                    c.servers(&claude, &at, None, p.get("mcpServers"));
                    projects.push(PathBuf::from(dir));
                }
            }
        }
        projects.extend(project_dirs.iter().cloned());
        let mut seen: Vec<PathBuf> = Vec::new();
        for dir in projects {
            let file = dir.join(".mcp.json");
            if seen.contains(&file) {
                continue;
            }
            seen.push(file.clone());
            if let Some(doc) = c.load(&file) {
                c.servers(&file, "", None, doc.get("mcpServers"));
            }
        }
        for rel in [
            ".config/Claude/claude_desktop_config.json",
            "Library/Application Support/Claude/claude_desktop_config.json",
            ".cursor/mcp.json",
        ] {
            let file = home.join(rel);
            if let Some(doc) = c.load(&file) {
                c.servers(&file, "", None, doc.get("mcpServers"));
            }
        }
        for (dir, id) in plugin_dirs(&mut c, &home.join(".claude/plugins")) {
            c.plugin(&dir, &id);
        }
        c
    }

    /// The JSON of `file`; `None` when it does not exist, with a warning
    /// when it exists but cannot be read or parsed.
    fn load(&mut self, file: &Path) -> Option<Value> {
        let read = || -> Result<Option<Value>, String> {
            let meta = match fs::metadata(file) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e.to_string()),
            };
            if !meta.is_file() || meta.len() > MAX_CONFIG {
                return Err("not a regular file under 64 MiB".into());
            }
            let mut text = String::new();
            fs::File::open(file)
                .and_then(|f| f.take(MAX_CONFIG).read_to_string(&mut text))
                .map_err(|e| e.to_string())?;
            serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| e.to_string())
        };
        read().unwrap_or_else(|e| {
            self.warnings.push(format!(
                "MCP host config {} could not be read ({e}); the servers it names are not matched",
                file.display()
            ));
            None
        })
    }

    /// The stdio entries of an `mcpServers` object (HTTP ones have no command).
    fn servers(&mut self, file: &Path, at: &str, plugin: Option<&str>, servers: Option<&Value>) {
        let Some(map) = servers.and_then(Value::as_object) else {
            return;
        };
        for (name, s) in map {
            let Some(command) = s.get("command").and_then(Value::as_str) else {
                continue;
            };
            let args = s
                .get("args")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let dot = if at.is_empty() { "" } else { "." };
            let key = if name
                .chars()
                .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
            {
                format!(".{name}")
            } else {
                format!("[{}]", Value::from(name.as_str()))
            };
            self.entries.push(Entry {
                file: file.to_path_buf(),
                entry: format!("{at}{dot}mcpServers{key}"),
                plugin: plugin.map(str::to_string),
                command: command.to_string(),
                args,
            });
        }
    }

    /// A plugin's servers: its `.mcp.json` (with or without the
    /// `mcpServers` wrapper) and its manifest's `mcpServers` (inline, or
    /// the path of a file relative to the plugin root).
    fn plugin(&mut self, dir: &Path, id: &str) {
        let mcp = dir.join(".mcp.json");
        if let Some(doc) = self.load(&mcp) {
            let servers = doc.get("mcpServers").cloned().unwrap_or(doc);
            self.servers(&mcp, "", Some(id), Some(&servers));
        }
        let manifest = dir.join(".claude-plugin/plugin.json");
        if let Some(doc) = self.load(&manifest) {
            match doc.get("mcpServers") {
                Some(Value::String(rel)) => {
                    let file = dir.join(rel.trim_start_matches("./"));
                    if let Some(d) = self.load(&file) {
                        let servers = d.get("mcpServers").cloned().unwrap_or(d);
                        self.servers(&file, "", Some(id), Some(&servers));
                    }
                }
                inline => self.servers(&manifest, "", Some(id), inline),
            }
        }
    }
}

/// Installed plugin roots with their ids: the `installPath`s of
/// `installed_plugins.json` (one record or a list per id), and the cache
/// copies `cache/<marketplace>/<plugin>/<version>/`.
fn plugin_dirs(c: &mut Configs, root: &Path) -> Vec<(PathBuf, String)> {
    let mut out: Vec<(PathBuf, String)> = Vec::new();
    let mut push = |dir: PathBuf, id: String| {
        let key = fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
        if !out
            .iter()
            .any(|(d, _)| fs::canonicalize(d).unwrap_or_else(|_| d.clone()) == key)
        {
            out.push((dir, id));
        }
    };
    let index = root.join("installed_plugins.json");
    if let Some(doc) = c.load(&index) {
        for (id, recs) in doc
            .get("plugins")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let recs = match recs {
                Value::Array(a) => a.clone(),
                one => vec![one.clone()],
            };
            for r in recs {
                if let Some(p) = r.get("installPath").and_then(Value::as_str) {
                    push(PathBuf::from(p), id.clone());
                }
            }
        }
    }
    let subdirs = |d: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        v.sort();
        v
    };
    for market in subdirs(&root.join("cache")) {
        for plugin in subdirs(&market) {
            for version in subdirs(&plugin) {
                let name = |p: &Path| {
                    p.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned()
                };
                push(version, format!("{}@{}", name(&plugin), name(&market)));
            }
        }
    }
    out
}

/// How a memtomem server of another installation was launched.
#[derive(Debug, Clone, Copy)]
pub struct Launch<'a> {
    /// The server's own argv.
    pub argv: &'a [String],
    /// The argv of the launchers (`uvx`, `uv`) between it and its host.
    pub launchers: &'a [Vec<String>],
    /// Its environment (a venv root) or, without one, its interpreter.
    pub installation: &'a Path,
    /// Its version, from that installation's own metadata.
    pub version: Option<&'a str>,
}

/// What an MCP command runs, as far as memtomem is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Form {
    /// `uvx [opts] --from REQ memtomem-server`, `uvx REQ serve`, `uv tool run …`:
    /// `req_at` is the index in args of the requirement.
    Uvx { req_at: usize, pin: Option<String> },
    /// `uv run --directory DIR … memtomem-server`: a project's venv.
    Project { dir: PathBuf },
    /// `<env>/bin/python -m memtomem.server`, `<env>/bin/memtomem-server`.
    Env { env: PathBuf },
}

fn base(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// A requirement naming memtomem: its version if pinned exactly
/// (`memtomem[onnx]==0.6.11`, `memtomem@0.6.11`), `Some(None)` if unpinned.
pub fn memtomem_requirement(req: &str) -> Option<Option<String>> {
    let req = req.trim();
    let end = req
        .find(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c)))
        .unwrap_or(req.len());
    let name = req[..end].to_ascii_lowercase().replace(['_', '.'], "-");
    if name != "memtomem" {
        return None;
    }
    let mut rest = req[end..].trim_start();
    if rest.starts_with('[') {
        rest = rest.split_once(']').map_or("", |(_, r)| r).trim_start();
    }
    let pin = rest
        .strip_prefix("==")
        .or_else(|| rest.strip_prefix('@'))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty() && !v.contains(['*', ',', ';', ' ']));
    Some(pin)
}

/// `req` pinned to `version`, its name and extras kept.
pub fn repin(req: &str, version: &str) -> String {
    let cut = req
        .find("==")
        .or_else(|| req.find('@'))
        .unwrap_or(req.len());
    format!("{}=={version}", req[..cut].trim_end())
}

/// Does the command after a uv launcher run a memtomem server? `pos` is the
/// index of its first positional argument (the executable or requirement).
fn runs_server(args: &[String], pos: usize) -> bool {
    let Some(exe) = args.get(pos) else {
        return false;
    };
    let name = exe.split(['=', '@', '[']).next().unwrap_or(exe);
    name == "memtomem-server"
        || (matches!(name, "memtomem" | "mm") && args.get(pos + 1).is_some_and(|a| a == "serve"))
}

/// uv's options that take a value (those a registration uses).
const UV_VALUE_OPTS: [&str; 10] = [
    "--from",
    "--with",
    "--python",
    "-p",
    "--directory",
    "--project",
    "--index",
    "--index-url",
    "--extra-index-url",
    "--env-file",
];

/// What `command args` runs, if memtomem.
fn form(command: &str, args: &[String]) -> Option<Form> {
    let (rest, uvx) = match base(command) {
        "uvx" => (0, true),
        "uv" => match (
            args.first().map(String::as_str),
            args.get(1).map(String::as_str),
        ) {
            // `uvx` execs `uv tool uvx`, the same command.
            (Some("tool"), Some("run" | "uvx")) => (2, true),
            (Some("run"), _) => (1, false),
            _ => return None,
        },
        name if name.starts_with("python") || name == "memtomem-server" || name == "memtomem" => {
            let p = Path::new(command);
            let bin = p
                .parent()
                .filter(|b| p.is_absolute() && b.ends_with("bin"))?;
            let server = if name.starts_with("python") {
                match python_launch(args) {
                    PyLaunch::Module(m) => m == "memtomem.server" || m == "memtomem",
                    PyLaunch::Script(s) => base(&s) == "memtomem-server",
                    PyLaunch::Other => false,
                }
            } else {
                name == "memtomem-server" || args.first().is_some_and(|a| a == "serve")
            };
            return server.then(|| Form::Env {
                env: bin.parent().unwrap_or(bin).to_path_buf(),
            });
        }
        _ => return None,
    };
    let (mut from, mut dir, mut i) = (None, None, rest);
    while i < args.len() {
        let a = args[i].as_str();
        let (opt, inline) = a.split_once('=').map_or((a, None), |(o, v)| (o, Some(v)));
        if opt.starts_with('-') && UV_VALUE_OPTS.contains(&opt) {
            let at = if inline.is_some() { i } else { i + 1 };
            let value = inline.map(str::to_string).or_else(|| args.get(at).cloned());
            match opt {
                "--from" => from = value.map(|v| (at, v)),
                "--directory" | "--project" => dir = value,
                _ => {}
            }
            i = at + 1;
        } else if a.starts_with('-') {
            i += 1;
        } else {
            break;
        }
    }
    if !runs_server(args, i) {
        return None;
    }
    if !uvx {
        return dir.map(|d| Form::Project { dir: d.into() });
    }
    // The requirement: `--from REQ`, else the positional itself (`uvx memtomem==V serve`).
    let (req_at, req) = from.unwrap_or_else(|| (i, args[i].clone()));
    let pin = memtomem_requirement(&req)?;
    Some(Form::Uvx { req_at, pin })
}

fn same_path(a: &Path, b: &Path) -> bool {
    let c = |p: &Path| fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    a == b || c(a) == c(b)
}

/// The server entry's command line equals `argv`. A bare launcher name
/// (`uvx`, `uv`) matches a path of that name: the host found it on `PATH`.
/// A bare `python3` could be any interpreter, so it never does. `uvx`
/// execs `uv tool uvx …`, so that process is read as the `uvx …` it was.
fn same_command(e: &Entry, argv: &[String]) -> bool {
    let uvx;
    let argv = match argv {
        [uv, tool, sub, rest @ ..] if base(uv) == "uv" && tool == "tool" && sub == "uvx" => {
            uvx = [&["uvx".to_string()], rest].concat();
            &uvx[..]
        }
        _ => argv,
    };
    let Some((first, rest)) = argv.split_first() else {
        return false;
    };
    let cmd_ok = if e.command.contains('/') {
        e.command == *first
    } else {
        matches!(e.command.as_str(), "uv" | "uvx") && base(first) == e.command
    };
    cmd_ok && rest == e.args.as_slice()
}

/// Does `e` launch the server `l`? Then what to change there to run
/// `target` (this installation's version; `this_env` its environment).
pub fn change_for(
    e: &Entry,
    l: &Launch,
    this_env: Option<&Path>,
    target: Option<&str>,
) -> Option<String> {
    let exact = same_command(e, l.argv) || l.launchers.iter().any(|a| same_command(e, a));
    let f = form(&e.command, &e.args);
    let named = match &f {
        Some(Form::Uvx { pin: Some(v), .. }) => l.version == Some(v.as_str()),
        Some(Form::Project { dir }) => same_path(&dir.join(".venv"), l.installation),
        Some(Form::Env { env }) => same_path(env, l.installation),
        _ => false,
    };
    if !exact && !named {
        return None;
    }
    let want = target.unwrap_or("the installed version");
    let change = match f {
        Some(Form::Uvx { req_at, pin: Some(_) }) => {
            let old = &e.args[req_at];
            match target {
                Some(t) => format!("args[{req_at}]: \"{old}\" → \"{}\"", repin(old, t)),
                None => format!("args[{req_at}]: \"{old}\" → pin the installed memtomem version"),
            }
        }
        Some(Form::Uvx { .. }) => {
            format!("drop --isolated / the version from this uvx entry so it runs memtomem {want} of the installed tool")
        }
        Some(Form::Project { dir }) => format!(
            "upgrade memtomem in the project {}: `uv add memtomem=={want}` there (or point this entry at the installed memtomem-server)",
            dir.display()
        ),
        Some(Form::Env { .. }) | None => match this_env {
            Some(env) => format!(
                "command: \"{}\" → \"{}\" with args [\"-m\", \"memtomem.server\"] (this installation, memtomem {want})",
                e.command,
                env.join("bin/python").display()
            ),
            None => format!("point this entry at the installed memtomem-server (memtomem {want})"),
        },
    };
    Some(match &e.plugin {
        Some(id) => format!(
            "update the plugin {id} (`claude plugin update {id}`) to a release whose manifest has {change}; the plugin cache is replaced on update, not edited"
        ),
        None => change,
    })
}

/// Every entry of `configs` that launches `l`, with its change.
pub fn matching(
    configs: &Configs,
    l: &Launch,
    this_env: Option<&Path>,
    target: Option<&str>,
) -> Vec<ConfigRef> {
    configs
        .entries
        .iter()
        .filter_map(|e| {
            change_for(e, l, this_env, target).map(|change| ConfigRef {
                file: e.file.clone(),
                entry: e.entry.clone(),
                change,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
