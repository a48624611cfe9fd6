//! Who launched a memtomem server: its MCP host. A stdio server dies with
//! its host's session, and nothing but the host starts it again, so for
//! every server we stop (and every one `status` lists) we name the process
//! that launched it — its parent, or the nearest ancestor that is not a
//! shell running a command or a launcher (`sh -c`, `uvx`, `npx`, `env`…) —
//! recognise the common hosts from the process table (executable, argv,
//! comm), and say what the user does next in each.
//!
//! Only the process table is read (through [`crate::sys::Processes`]);
//! nothing here prints ([`words`] renders, the CLI prints) or signals.

pub mod view;
pub mod words;

#[cfg(test)]
mod tests;

use serde::Serialize;

use crate::sys::{Pid, Processes};

/// What kind of process launched a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostKind {
    ClaudeCode,
    ClaudeDesktop,
    Cursor,
    Vscode,
    Windsurf,
    Zed,
    /// An interactive shell on a terminal: the user started it by hand.
    Terminal,
    /// Any other process: named by its command.
    McpClient,
    /// No host any more: the server was reparented to init or a subreaper.
    Gone,
}

impl HostKind {
    /// The human name.
    pub fn label(self) -> &'static str {
        match self {
            HostKind::ClaudeCode => "Claude Code",
            HostKind::ClaudeDesktop => "Claude Desktop",
            HostKind::Cursor => "Cursor",
            HostKind::Vscode => "VS Code",
            HostKind::Windsurf => "Windsurf",
            HostKind::Zed => "Zed",
            HostKind::Terminal => "a terminal",
            HostKind::McpClient => "an MCP client",
            HostKind::Gone => "no host (orphan)",
        }
    }

    /// What the user does once this host lost its server (and did not
    /// start it again on its own).
    pub fn next_step(self) -> Option<&'static str> {
        Some(match self {
            HostKind::ClaudeCode => "run `/mcp` in Claude Code and reconnect memtomem",
            HostKind::ClaudeDesktop => {
                "restart Claude Desktop (or reconnect memtomem in Settings → Developer)"
            }
            HostKind::Cursor => "in Cursor: Settings → MCP → restart the memtomem server",
            HostKind::Vscode => {
                "in VS Code: `MCP: List Servers` → memtomem → Restart Server (or MCP settings → restart)"
            }
            HostKind::Windsurf => "in Windsurf: MCP settings → refresh/restart memtomem",
            HostKind::Zed => "in Zed: turn the memtomem context server off and on in the agent settings (or restart Zed)",
            HostKind::Terminal => "start memtomem-server again by hand in that terminal",
            HostKind::McpClient => {
                "restart or reconnect this client's memtomem session (it does not come back unless the client starts it again)"
            }
            HostKind::Gone => return None,
        })
    }
}

/// The process that launched a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostProc {
    pub pid: Pid,
    pub start_ticks: u64,
    /// `python3.12 client.py`, `claude`, `code`…
    pub command: String,
    pub kind: HostKind,
}

/// How a server was launched, as far as the process table tells now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// `None` when no host is left (or the server itself is gone).
    pub host: Option<HostProc>,
    /// The launchers and command shells between the server and its host
    /// (`sh -c`, `uvx`), nearest first.
    pub via: Vec<String>,
    /// Reparented to init (pid 1) or a subreaper: the host is gone.
    pub orphan: bool,
}

/// What one process of the chain is, for the walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Passes the server on: skipped (`sh -c`, `uvx`, `env`…).
    Launcher,
    /// init or a process that adopts orphans (a subreaper).
    Adopter,
    Host(HostKind),
}

fn base(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

const SHELLS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "fish", "ksh", "mksh", "tcsh", "csh", "ash", "nu", "elvish",
];
/// Programs that run another program and stay its parent.
const LAUNCHERS: &[&str] = &[
    "uv", "uvx", "npx", "npm", "pnpm", "pnpx", "bunx", "yarn", "env", "timeout", "nohup", "setsid",
    "stdbuf", "nice", "ionice", "chrt", "taskset", "time", "flock", "sudo", "doas", "xargs",
    "direnv", "mise", "asdf", "pipx", "poetry", "pdm", "hatch", "rye", "pyenv", "script",
];
/// Processes that adopt orphans: init and the usual subreapers.
const ADOPTERS: &[&str] = &[
    "systemd",
    "init",
    "launchd",
    "tini",
    "dumb-init",
    "catatonit",
    "docker-init",
];
/// Interpreters: their command is named with the script they run.
const INTERPRETERS: &[&str] = &["node", "bun", "deno", "ruby", "perl", "java"];

fn is_interpreter(a0: &str) -> bool {
    a0.starts_with("python") || a0.starts_with("pypy") || INTERPRETERS.contains(&a0)
}

/// A short command for the report: the executable's name, and for an
/// interpreter what it runs (`python3.12 client.py`, `python3 -m mcp_host`,
/// `node cli.js`).
pub fn command_of(argv: &[String], comm: &str) -> String {
    let Some(a0) = argv.first().map(|a| base(a)) else {
        return comm.to_string();
    };
    let a0 = a0.trim_start_matches('-');
    if !is_interpreter(a0) {
        return a0.to_string();
    }
    let mut it = argv[1..].iter();
    while let Some(a) = it.next() {
        if a == "-m" {
            return match it.next() {
                Some(m) => format!("{a0} -m {m}"),
                None => a0.to_string(),
            };
        }
        if !a.starts_with('-') {
            return format!("{a0} {}", base(a));
        }
    }
    a0.to_string()
}

/// Recognise a process of the chain from its argv, comm and terminal.
fn recognise(pid: Pid, argv: &[String], comm: &str, tty: Option<bool>) -> Seen {
    if pid <= 1 {
        return Seen::Adopter;
    }
    let exe = argv.first().map(String::as_str).unwrap_or(comm);
    let a0 = base(exe).trim_start_matches('-');
    let lower = a0.to_ascii_lowercase();
    let args = || argv.iter().skip(1).map(String::as_str);
    if ADOPTERS.contains(&a0) && argv.len() <= 3 {
        return Seen::Adopter;
    }
    // macOS application bundles, whatever helper process runs the server.
    for (bundle, kind) in [
        ("/Claude.app/", HostKind::ClaudeDesktop),
        ("/Cursor.app/", HostKind::Cursor),
        ("/Visual Studio Code.app/", HostKind::Vscode),
        ("/Visual Studio Code - Insiders.app/", HostKind::Vscode),
        ("/Windsurf.app/", HostKind::Windsurf),
        ("/Zed.app/", HostKind::Zed),
        ("/Zed Preview.app/", HostKind::Zed),
    ] {
        if exe.contains(bundle) {
            return Seen::Host(kind);
        }
    }
    if a0 == "Claude" || lower == "claude-desktop" {
        return Seen::Host(HostKind::ClaudeDesktop);
    }
    let script = args().find(|a| !a.starts_with('-')).map(base);
    if a0 == "claude"
        || comm == "claude"
        || (INTERPRETERS.contains(&a0) && script == Some("claude"))
        || args().any(|a| a.contains("@anthropic-ai/claude-code") || a.contains("/claude-code/"))
    {
        return Seen::Host(HostKind::ClaudeCode);
    }
    let path_has = |needle: &str| exe.to_ascii_lowercase().contains(needle);
    if lower == "cursor" || lower.starts_with("cursor ") || path_has(".cursor-server/") {
        return Seen::Host(HostKind::Cursor);
    }
    if [
        "code",
        "code-insiders",
        "code-oss",
        "codium",
        "vscodium",
        "code-server",
    ]
    .contains(&lower.as_str())
        || lower.starts_with("code helper")
        || path_has(".vscode-server/")
    {
        return Seen::Host(HostKind::Vscode);
    }
    if lower == "windsurf" || path_has(".windsurf-server/") {
        return Seen::Host(HostKind::Windsurf);
    }
    if ["zed", "zed-editor", "zeditor", "zed-preview"].contains(&lower.as_str()) {
        return Seen::Host(HostKind::Zed);
    }
    if LAUNCHERS.contains(&a0) {
        return Seen::Launcher;
    }
    // `node …/npx-cli.js` and friends: npm's launcher shims.
    if INTERPRETERS.contains(&a0)
        && script.is_some_and(|s| ["npx-cli.js", "npm-cli.js", "npx", "npm"].contains(&s))
    {
        return Seen::Launcher;
    }
    let busybox_sh = a0 == "busybox" && argv.get(1).is_some_and(|s| s == "sh");
    if SHELLS.contains(&a0) || busybox_sh {
        // A shell running a command or a script passes the server on; an
        // interactive one on a terminal is the user's terminal.
        let skip = if busybox_sh { 2 } else { 1 };
        let runs_something = argv
            .iter()
            .skip(skip)
            .any(|a| a == "-c" || !a.starts_with('-'));
        return match (runs_something, tty) {
            (true, _) => Seen::Launcher,
            (false, Some(false)) => Seen::Host(HostKind::McpClient),
            (false, _) => Seen::Host(HostKind::Terminal),
        };
    }
    Seen::Host(HostKind::McpClient)
}

/// How `pid` was launched: walk up from its parent past launchers to the
/// first process that is a host, or to init or a subreaper (an orphan).
pub fn launch_of(os: &dyn Processes, pid: Pid) -> Launch {
    let mut via = Vec::new();
    let gone = |via, orphan| Launch {
        host: None,
        via,
        orphan,
    };
    let Some(mut cur) = os.stat(pid).map(|s| s.ppid) else {
        return gone(via, false);
    };
    for _ in 0..64 {
        let Some(st) = (cur > 0).then(|| os.stat(cur)).flatten() else {
            // A parent we cannot read (another pid namespace, gone
            // meanwhile): no host to name, and no proof of an orphan.
            return gone(via, cur == 1);
        };
        let argv = os.cmdline(cur);
        match recognise(cur, &argv, &st.comm, os.has_tty(cur)) {
            Seen::Adopter => return gone(via, true),
            Seen::Launcher => {
                via.push(command_of(&argv, &st.comm));
                cur = st.ppid;
            }
            Seen::Host(kind) => {
                return Launch {
                    host: Some(HostProc {
                        pid: cur,
                        start_ticks: st.start_ticks,
                        command: command_of(&argv, &st.comm),
                        kind,
                    }),
                    via,
                    orphan: false,
                }
            }
        }
    }
    gone(via, false)
}

/// Whether `ancestor` is among the ancestors of `pid`.
pub fn descends_from(os: &dyn Processes, pid: Pid, ancestor: Pid) -> bool {
    let mut cur = pid;
    for _ in 0..64 {
        match os.stat(cur) {
            Some(st) if st.ppid == ancestor => return true,
            Some(st) if st.ppid > 1 => cur = st.ppid,
            _ => return false,
        }
    }
    false
}

/// A server a host started again on the new version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Respawn {
    pub pid: Pid,
    pub version: Option<String>,
}

/// One host that lost (or, in `status`, runs) memtomem servers: the
/// `clients` entries of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Client {
    /// `None` for [`HostKind::Gone`].
    pub pid: Option<Pid>,
    pub command: Option<String>,
    pub host: HostKind,
    /// Human name: `Claude Code`, `an MCP client (python3.12 client.py)`.
    pub name: String,
    /// The servers it launched (stopped ones in an upgrade report).
    pub servers: Vec<Pid>,
    pub respawned: Option<Respawn>,
    pub next_step: Option<String>,
    #[serde(skip)]
    pub start_ticks: u64,
}

impl Client {
    fn new(host: Option<&HostProc>) -> Client {
        let kind = host.map_or(HostKind::Gone, |h| h.kind);
        let name = match (host, kind) {
            (Some(h), HostKind::McpClient | HostKind::Terminal) => {
                format!("{} ({})", kind.label(), h.command)
            }
            _ => kind.label().to_string(),
        };
        Client {
            pid: host.map(|h| h.pid),
            command: host.map(|h| h.command.clone()),
            host: kind,
            name,
            servers: vec![],
            respawned: None,
            next_step: kind.next_step().map(str::to_string),
            start_ticks: host.map_or(0, |h| h.start_ticks),
        }
    }

    /// It started a server of the new version on its own: nothing to do.
    pub fn set_respawned(&mut self, r: Respawn) {
        self.respawned = Some(r);
        self.next_step = None;
    }
}

/// Group servers by the host that launched them, in order of first
/// appearance; every hostless server goes to one [`HostKind::Gone`] entry.
pub fn group(launches: &[(Pid, &Launch)]) -> Vec<Client> {
    let mut out: Vec<Client> = Vec::new();
    for (server, l) in launches {
        let key = l.host.as_ref().map(|h| (h.pid, h.start_ticks));
        let at = out
            .iter()
            .position(|c| c.pid.map(|p| (p, c.start_ticks)) == key);
        let c = match at {
            Some(i) => &mut out[i],
            None => {
                out.push(Client::new(l.host.as_ref()));
                out.last_mut().expect("just pushed")
            }
        };
        if !c.servers.contains(server) {
            c.servers.push(*server);
        }
    }
    out
}

/// Who launched each server we stop, noted before it is stopped (its
/// launchers may exit with it, and the chain with them).
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    /// (server, its start time, its launch)
    seen: Vec<(Pid, u64, Launch)>,
}

impl Ledger {
    /// Note the launch of each of `pids` not noted yet.
    pub fn note(&mut self, os: &dyn Processes, pids: impl IntoIterator<Item = Pid>) {
        for pid in pids {
            if !self.seen.iter().any(|(p, _, _)| *p == pid) {
                let start = os.stat(pid).map_or(0, |s| s.start_ticks);
                self.seen.push((pid, start, launch_of(os, pid)));
            }
        }
    }

    pub fn launch(&self, pid: Pid) -> Option<&Launch> {
        self.seen
            .iter()
            .find(|(p, _, _)| *p == pid)
            .map(|(_, _, l)| l)
    }

    /// Did `host` start a server at or after `since` that we stopped too
    /// (a host that respawns its servers)?
    pub fn respawned_since(&self, host: Pid, since: u64) -> bool {
        self.seen
            .iter()
            .any(|(_, start, l)| *start >= since && l.host.as_ref().is_some_and(|h| h.pid == host))
    }

    /// The hosts of the servers among `stopped`, grouped.
    pub fn clients(&self, stopped: &[Pid]) -> Vec<Client> {
        let launches: Vec<(Pid, &Launch)> = stopped
            .iter()
            .filter_map(|p| self.launch(*p).map(|l| (*p, l)))
            .collect();
        group(&launches)
    }
}

/// A server `status` lists, with what says which store it serves.
#[derive(Debug, Clone)]
pub struct Listed {
    pub pid: Pid,
    /// The store digest (`server-<digest16>.pid`, a presence marker's third
    /// field), for duplicates; `None` for the web UI and unregistered ones.
    pub store: Option<String>,
}

/// The store digest a pid file or presence-marker name carries.
pub fn store_digest(source: &std::path::Path) -> Option<String> {
    let name = source.file_name()?.to_str()?;
    let hex16 = |s: &str| s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(d) = name
        .strip_prefix("server-")
        .and_then(|n| n.strip_suffix(".pid"))
    {
        return hex16(d).then(|| d.to_string());
    }
    // <pid>-<ppid>-<digest16>-<procid8>-<nonce8>.lock
    let parts: Vec<&str> = name.strip_suffix(".lock")?.split('-').collect();
    (parts.len() == 5 && hex16(parts[2]) && parts[2] != "0000000000000000")
        .then(|| parts[2].to_string())
}

/// Several servers of one host, or of one store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Duplicate {
    /// `host` or `store`.
    pub kind: &'static str,
    /// The host's pid, or the store digest.
    pub key: String,
    pub pids: Vec<Pid>,
}

/// What `status` says of the hosts: each server's host, the grouped
/// clients, orphans and duplicates.
#[derive(Debug, Clone, Default)]
pub struct Survey {
    pub launches: Vec<(Pid, Launch)>,
    pub clients: Vec<Client>,
    pub orphans: Vec<Pid>,
    pub duplicates: Vec<Duplicate>,
}

impl Survey {
    pub fn launch(&self, pid: Pid) -> Option<&Launch> {
        self.launches
            .iter()
            .find(|(p, _)| *p == pid)
            .map(|(_, l)| l)
    }
}

/// The hosts of `listed`, with orphans and duplicates.
pub fn survey(os: &dyn Processes, listed: &[Listed]) -> Survey {
    let launches: Vec<(Pid, Launch)> = listed
        .iter()
        .map(|l| (l.pid, launch_of(os, l.pid)))
        .collect();
    let refs: Vec<(Pid, &Launch)> = launches.iter().map(|(p, l)| (*p, l)).collect();
    let mut clients = group(&refs);
    for c in &mut clients {
        c.next_step = None;
    }
    let orphans = launches
        .iter()
        .filter(|(_, l)| l.orphan)
        .map(|(p, _)| *p)
        .collect();
    let mut duplicates: Vec<Duplicate> = clients
        .iter()
        .filter(|c| c.pid.is_some() && c.servers.len() > 1)
        .map(|c| Duplicate {
            kind: "host",
            key: c.pid.map(|p| p.to_string()).unwrap_or_default(),
            pids: c.servers.clone(),
        })
        .collect();
    let mut stores: Vec<(String, Vec<Pid>)> = Vec::new();
    for l in listed {
        let Some(d) = &l.store else { continue };
        match stores.iter_mut().find(|(k, _)| k == d) {
            Some((_, pids)) => pids.push(l.pid),
            None => stores.push((d.clone(), vec![l.pid])),
        }
    }
    duplicates.extend(
        stores
            .into_iter()
            .filter(|(_, pids)| pids.len() > 1)
            .map(|(key, pids)| Duplicate {
                kind: "store",
                key,
                pids,
            }),
    );
    Survey {
        launches,
        clients,
        orphans,
        duplicates,
    }
}
