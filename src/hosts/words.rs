//! The hosts in words, for the upgrade report and `status` (the CLI prints
//! these lines; nothing here prints).

use super::{Client, Duplicate, HostKind, Launch};
use crate::ui::pid_list as pids;

/// A host as `status` and the plan name it under a server ("… (pid N,
/// command)"), so one host reads the same in every output.
fn who(c: &Client) -> String {
    match c.pid {
        Some(pid) => format!(
            "{} (pid {pid}, {})",
            c.host.label(),
            c.command.as_deref().unwrap_or("?")
        ),
        None => "No host".into(),
    }
}

/// After an upgrade: one line per host that lost its servers, with what to
/// do next (or that it already started the new version).
pub fn upgrade_lines(clients: &[Client]) -> Vec<String> {
    if clients.is_empty() {
        return vec![];
    }
    let mut out = vec!["The hosts of the stopped servers:".to_string()];
    for c in clients {
        let servers = match c.servers.as_slice() {
            [one] => format!("server {one}"),
            many => format!("servers {}", pids(many)),
        };
        let line = match (&c.respawned, c.host) {
            (Some(r), _) => format!(
                "  {} lost {servers} and already runs memtomem {} again (pid {}): nothing to do.",
                who(c),
                r.version.as_deref().unwrap_or("(new version)"),
                r.pid
            ),
            (None, HostKind::Gone) => format!(
                "  {servers}: no MCP host was left (an orphan), so nothing reconnects it; nothing to do."
            ),
            (None, _) => format!(
                "  {} lost {servers}: {}.",
                who(c),
                c.next_step.as_deref().unwrap_or("reconnect it")
            ),
        };
        out.push(line);
    }
    out
}

fn via(l: &Launch) -> String {
    if l.via.is_empty() {
        String::new()
    } else {
        format!(" via {}", l.via.join(" → "))
    }
}

/// The launcher of one process, under its line in a plan: its host, or
/// that it is an orphan.
pub fn launch_line(l: &Launch) -> String {
    let via = via(l);
    match &l.host {
        Some(h) => format!(
            "launched by {} (pid {}, {}){via}",
            h.kind.label(),
            h.pid,
            h.command
        ),
        None if l.orphan => {
            format!("orphan: its host is gone (reparented to init or a subreaper){via}")
        }
        None => format!("launcher unknown{via}"),
    }
}

/// `status`: the same, and for an orphan what `mm-upgrade reap` does with
/// it (`reapable`: proven ours, so reap stops it; otherwise reap leaves it).
pub fn status_launch(l: &Launch, reapable: bool) -> String {
    let line = launch_line(l);
    match (l.host.is_none() && l.orphan, reapable) {
        (false, _) => line,
        (true, true) => format!("{line}; `mm-upgrade reap` stops it"),
        (true, false) => {
            format!("{line}; not provably ours, so `mm-upgrade reap` leaves it: stop it by hand")
        }
    }
}

/// `status`: what accumulated.
pub fn duplicate_lines(dups: &[Duplicate], clients: &[Client]) -> Vec<String> {
    dups.iter()
        .map(|d| match d.kind {
            "host" => {
                let name = clients
                    .iter()
                    .find(|c| c.pid.map(|p| p.to_string()).as_deref() == Some(d.key.as_str()))
                    .map_or_else(|| format!("pid {}", d.key), who);
                format!(
                    "{name} runs {} memtomem servers: {}",
                    d.pids.len(),
                    pids(&d.pids)
                )
            }
            _ => format!(
                "{} servers share the store {}: {}",
                d.pids.len(),
                d.key,
                pids(&d.pids)
            ),
        })
        .collect()
}
