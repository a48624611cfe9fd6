//! The ancestry walk and host recognition, through the fake OS.

use super::*;
use crate::sys::fake::{FakeOs, FakeProc};

fn p(ppid: Pid, argv: &[&str]) -> FakeProc {
    FakeProc::new(10).child_of(ppid).argv(argv)
}

/// A server (pid 500) under `chain` (nearest first, pids 400, 399, …),
/// whose last element's parent is 1.
fn under(chain: &[&[&str]]) -> FakeOs {
    let os = FakeOs::new();
    let mut pid = 400;
    os.add(500, p(pid, &["/env/bin/python", "-m", "memtomem.server"]));
    for (i, argv) in chain.iter().enumerate() {
        let parent = if i + 1 == chain.len() { 1 } else { pid - 1 };
        os.add(pid, p(parent, argv));
        pid -= 1;
    }
    os
}

fn host_of(chain: &[&[&str]]) -> (Option<HostKind>, Option<Pid>, Vec<String>) {
    let l = launch_of(&under(chain), 500);
    (
        l.host.as_ref().map(|h| h.kind),
        l.host.map(|h| h.pid),
        l.via,
    )
}

#[test]
fn each_common_host_is_recognised_from_its_argv() {
    let cases: &[(&[&str], HostKind)] = &[
        (&["claude"], HostKind::ClaudeCode),
        (
            &["node", "/usr/lib/node_modules/@anthropic-ai/claude-code/cli.js"],
            HostKind::ClaudeCode,
        ),
        (&["node", "/usr/local/bin/claude", "--resume"], HostKind::ClaudeCode),
        (
            &["/Applications/Claude.app/Contents/MacOS/Claude"],
            HostKind::ClaudeDesktop,
        ),
        (&["/usr/bin/claude-desktop"], HostKind::ClaudeDesktop),
        (
            &["/Applications/Cursor.app/Contents/Frameworks/Cursor Helper (Plugin).app/Contents/MacOS/Cursor Helper (Plugin)", "--type=utility"],
            HostKind::Cursor,
        ),
        (&["/opt/cursor/cursor", "--type=utility"], HostKind::Cursor),
        (&["/usr/share/code/code", "--type=utility"], HostKind::Vscode),
        (
            &["/home/u/.vscode-server/bin/abc/node", "--max-old-space-size=4096"],
            HostKind::Vscode,
        ),
        (&["/usr/bin/windsurf"], HostKind::Windsurf),
        (&["/usr/bin/zed-editor"], HostKind::Zed),
        (&["/Applications/Zed.app/Contents/MacOS/zed"], HostKind::Zed),
        (&["-zsh"], HostKind::Terminal),
        (&["busybox", "sh"], HostKind::Terminal),
        (&["python3.12", "client.py"], HostKind::McpClient),
    ];
    for (argv, want) in cases {
        let (kind, pid, _) = host_of(&[argv]);
        assert_eq!(kind, Some(*want), "{argv:?}");
        assert_eq!(pid, Some(400), "{argv:?}");
    }
}

#[test]
fn shells_running_a_command_and_launchers_are_walked_past() {
    let (kind, pid, via) = host_of(&[
        &["/bin/sh", "-c", "exec uvx memtomem-server"],
        &[
            "/home/u/.local/bin/uvx",
            "--from",
            "memtomem==0.6.11",
            "memtomem-server",
        ],
        &["env", "FOO=1", "uv", "run"],
        &[
            "node",
            "/usr/lib/node_modules/npm/bin/npx-cli.js",
            "-y",
            "x",
        ],
        &["bash", "/home/u/start-mcp.sh"],
        &["busybox", "sh", "-c", "x"],
        &["claude"],
    ]);
    assert_eq!(kind, Some(HostKind::ClaudeCode));
    assert_eq!(pid, Some(394));
    assert_eq!(
        via,
        ["sh", "uvx", "env", "node npx-cli.js", "bash", "busybox"]
    );
}

#[test]
fn the_python_sdk_client_is_an_mcp_client_named_by_its_command() {
    let l = launch_of(
        &under(&[&[
            "/usr/bin/python3.12",
            "-u",
            "/tmp/x/client.py",
            "--log",
            "l",
        ]]),
        500,
    );
    let h = l.host.unwrap();
    assert_eq!(h.kind, HostKind::McpClient);
    assert_eq!(h.command, "python3.12 client.py");
    let c = &group(&[(
        500,
        &launch_of(&under(&[&["python3", "-m", "mcp_host"]]), 500),
    )])[0];
    assert_eq!(c.name, "an MCP client (python3 -m mcp_host)");
    assert_eq!(c.host, HostKind::McpClient);
    assert!(c.next_step.as_deref().unwrap().contains("reconnect"));
}

#[test]
fn an_interactive_shell_is_a_terminal_only_on_a_tty() {
    let os = under(&[&["bash"]]);
    os.add(400, p(1, &["bash"]).tty(true));
    assert_eq!(launch_of(&os, 500).host.unwrap().kind, HostKind::Terminal);
    os.add(400, p(1, &["bash"]).tty(false));
    assert_eq!(launch_of(&os, 500).host.unwrap().kind, HostKind::McpClient);
}

#[test]
fn reparented_to_init_or_a_subreaper_is_an_orphan() {
    // Directly under init.
    let os = FakeOs::new();
    os.add(500, p(1, &["memtomem-server"]));
    let l = launch_of(&os, 500);
    assert!(l.orphan && l.host.is_none(), "{l:?}");
    // Under a user's systemd (a subreaper), through a surviving uvx.
    let l = launch_of(
        &under(&[
            &["uvx", "memtomem-server"],
            &["/usr/lib/systemd/systemd", "--user"],
        ]),
        500,
    );
    assert!(l.orphan && l.host.is_none(), "{l:?}");
    assert_eq!(l.via, ["uvx"]);
    // A live host: not an orphan.
    let l = launch_of(&under(&[&["claude"]]), 500);
    assert!(!l.orphan);
    // A server that is gone has no launch to tell.
    let l = launch_of(&FakeOs::new(), 500);
    assert!(!l.orphan && l.host.is_none());
}

#[test]
fn servers_are_grouped_by_host_and_orphans_share_one_gone_entry() {
    let os = FakeOs::new();
    os.add(400, p(1, &["claude"]));
    os.add(401, p(1, &["python3", "client.py"]));
    for (pid, parent) in [(500, 400), (501, 401), (502, 400), (503, 1), (504, 1)] {
        os.add(pid, p(parent, &["memtomem-server"]));
    }
    let mut ledger = Ledger::default();
    ledger.note(&os, [500, 501, 502, 503, 504]);
    // Noting again after the servers are gone keeps the first look.
    os.remove(400);
    ledger.note(&os, [500]);
    let clients = ledger.clients(&[500, 501, 502, 503, 504]);
    let got: Vec<(Option<Pid>, HostKind, Vec<Pid>)> = clients
        .iter()
        .map(|c| (c.pid, c.host, c.servers.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (Some(400), HostKind::ClaudeCode, vec![500, 502]),
            (Some(401), HostKind::McpClient, vec![501]),
            (None, HostKind::Gone, vec![503, 504]),
        ]
    );
    assert_eq!(clients[2].next_step, None);
    // Only the servers actually stopped count.
    assert_eq!(ledger.clients(&[501]).len(), 1);
}

#[test]
fn a_respawned_client_needs_no_next_step_and_says_so() {
    let os = under(&[&["claude"]]);
    let mut c = group(&[(500, &launch_of(&os, 500))]).remove(0);
    assert!(c.next_step.is_some());
    c.set_respawned(Respawn {
        pid: 600,
        version: Some("0.6.12".into()),
    });
    let v = serde_json::to_value(&c).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"pid": 400, "command": "claude", "host": "claude-code",
            "name": "Claude Code", "servers": [500],
            "respawned": {"pid": 600, "version": "0.6.12"}, "next_step": null})
    );
    let lines = words::upgrade_lines(&[c]);
    assert!(
        lines[1].contains("already runs memtomem 0.6.12 again (pid 600)"),
        "{lines:?}"
    );
}

#[test]
fn descends_from_follows_the_chain_not_just_the_parent() {
    let os = under(&[&["sh", "-c", "x"], &["claude"]]);
    assert!(descends_from(&os, 500, 399));
    assert!(descends_from(&os, 500, 400));
    assert!(!descends_from(&os, 500, 398));
}

#[test]
fn survey_flags_orphans_and_duplicates_by_host_and_by_store() {
    let os = FakeOs::new();
    os.add(400, p(1, &["claude"]));
    for (pid, parent) in [(500, 400), (501, 400), (502, 1)] {
        os.add(pid, p(parent, &["memtomem-server"]));
    }
    let d = "7e8680b97476a9e5";
    let listed = [
        Listed {
            pid: 500,
            store: Some(d.into()),
        },
        Listed {
            pid: 501,
            store: Some(d.into()),
        },
        Listed {
            pid: 502,
            store: Some("0123456789abcdef".into()),
        },
    ];
    let s = survey(&os, &listed);
    assert_eq!(s.orphans, vec![502]);
    assert_eq!(
        s.duplicates,
        vec![
            Duplicate {
                kind: "host",
                key: "400".into(),
                pids: vec![500, 501]
            },
            Duplicate {
                kind: "store",
                key: d.into(),
                pids: vec![500, 501]
            },
        ]
    );
    let lines = words::duplicate_lines(&s.duplicates, &s.clients);
    assert_eq!(
        lines[0],
        "Claude Code (pid 400, claude) runs 2 memtomem servers: 500, 501"
    );
    let orphan = s.launch(502).unwrap();
    assert!(words::status_launch(orphan, true).ends_with("; `mm-upgrade reap` stops it"));
    assert!(words::status_launch(orphan, false)
        .ends_with("`mm-upgrade reap` leaves it: stop it by hand"));
    assert!(!words::launch_line(orphan).contains("mm-upgrade reap"));
}

#[test]
fn store_digests_come_from_pid_files_and_presence_markers() {
    use std::path::Path;
    let d = "7e8680b97476a9e5";
    assert_eq!(
        store_digest(Path::new(&format!("/rt/server-{d}.pid"))).as_deref(),
        Some(d)
    );
    let m = format!("/rt/presence/2792-1-{d}-54004f8e-6080cb89.lock");
    assert_eq!(store_digest(Path::new(&m)).as_deref(), Some(d));
    assert_eq!(store_digest(Path::new("/rt/server.pid")), None);
    assert_eq!(store_digest(Path::new("/rt/web.pid")), None);
    let none = "/rt/presence/2792-1-0000000000000000-54004f8e-6080cb89.lock";
    assert_eq!(store_digest(Path::new(none)), None);
}
