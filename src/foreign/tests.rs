use super::*;
use crate::discover::Installation;
use crate::paths::PathEnv;
use crate::sys::fake::{FakeOs, FakeProc};
use std::fs;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|a| a.to_string()).collect()
}

/// A venv at `root` with memtomem `version`'s metadata.
fn venv(root: &Path, version: &str) {
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::write(root.join("pyvenv.cfg"), "home = /usr/bin\n").unwrap();
    fs::create_dir_all(root.join(format!(
        "lib/python3.12/site-packages/memtomem-{version}.dist-info"
    )))
    .unwrap();
}

/// Through the fake OS: a plugin's pinned uvx server (under `uvx` → `uv tool
/// uvx`) and a project venv's `python -m memtomem.server`, found in the
/// process table with their versions, launchers and the configs naming them.
#[test]
fn fake_servers_of_other_installations_are_named_with_version_launch_and_config() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let cache = home.join(".cache/uv/archive-v0/Fk3kHc2vZ8dLxq1a");
    let proj = tmp.path().join("proj");
    venv(&cache, "0.6.11");
    venv(&proj.join(".venv"), "0.6.12");
    let p = |d: &Path, f: &str| d.join(f).display().to_string();
    fs::write(
        home.join(".claude.json"),
        r#"{"mcpServers": {"memtomem": {"command": "uvx", "args": ["--from", "memtomem[onnx]==0.6.11", "memtomem-server"]}}}"#,
    )
    .unwrap();
    let venv_py = p(&proj, ".venv/bin/python");
    fs::write(
        proj.join(".mcp.json"),
        format!(r#"{{"mcpServers": {{"mem": {{"command": "{venv_py}", "args": ["-m", "memtomem.server"]}}}}}}"#),
    )
    .unwrap();
    let uvx = [
        "/usr/bin/uvx",
        "--from",
        "memtomem[onnx]==0.6.11",
        "memtomem-server",
    ];
    let os = FakeOs::new();
    os.add(900, FakeProc::new(1).argv(&uvx));
    os.add(
        901,
        FakeProc::new(1).child_of(900).argv(&[
            "/usr/bin/uv",
            "tool",
            "uvx",
            "--from",
            "memtomem[onnx]==0.6.11",
            "memtomem-server",
        ]),
    );
    let mut plugin = FakeProc::new(1)
        .child_of(901)
        .argv(&[&p(&cache, "bin/python"), &p(&cache, "bin/memtomem-server")]);
    plugin.cwd = Some(tmp.path().to_path_buf());
    os.add(902, plugin);
    let mut project = FakeProc::new(1).argv(&[&venv_py, "-m", "memtomem.server"]);
    project.cwd = Some(proj.clone());
    os.add(903, project);
    // Another user's, and a process that only names memtomem.
    os.add(
        904,
        FakeProc::new(1)
            .uid(crate::sys::euid() + 1)
            .argv(&[&p(&cache, "bin/python"), &p(&cache, "bin/memtomem-server")]),
    );
    os.add(905, FakeProc::new(1).argv(&["less", "memtomem.log"]));

    let install = Installation::default();
    let mut env = PathEnv {
        euid: crate::sys::euid(),
        home: home.clone(),
        ..Default::default()
    };
    let scope = |env: &PathEnv| -> Survey {
        let scope = Scope {
            env,
            install: &install,
            protected: &[],
            scan_processes: true,
        };
        survey(&os, &Inventory::default(), &scope, Some("0.6.12"))
    };
    let got = scope(&env);
    assert!(got.warnings.is_empty(), "{:?}", got.warnings);
    let pids: Vec<Pid> = got.others.iter().map(|f| f.pid).collect();
    assert_eq!(pids, vec![902, 903]);
    let plugin = &got.others[0];
    assert_eq!(plugin.version.as_deref(), Some("0.6.11"));
    assert!(plugin.old_code);
    assert_eq!(plugin.installation, cache);
    assert_eq!(
        plugin.launcher.as_deref(),
        Some("/usr/bin/uvx --from 'memtomem[onnx]==0.6.11' memtomem-server")
    );
    assert_eq!(
        plugin.configs,
        vec![ConfigRef {
            file: home.join(".claude.json"),
            entry: "mcpServers.memtomem".into(),
            change: "args[1]: \"memtomem[onnx]==0.6.11\" → \"memtomem[onnx]==0.6.12\"".into(),
        }]
    );
    let project = &got.others[1];
    assert_eq!(project.version.as_deref(), Some("0.6.12"));
    assert!(!project.old_code);
    assert_eq!(project.configs.len(), 1);
    assert_eq!(project.configs[0].file, proj.join(".mcp.json"));
    assert_eq!(project.configs[0].entry, "mcpServers.mem");

    let text = lines(&got.others, Some("0.6.12")).join("\n");
    for want in [
        "pid 902  memtomem 0.6.11, old code",
        "launched by: /usr/bin/uvx",
        &format!(
            "{} mcpServers.memtomem: args[1]",
            home.join(".claude.json").display()
        ),
        "pid 903  memtomem 0.6.12  from",
    ] {
        assert!(text.contains(want), "{want:?} in\n{text}");
    }
    let json = serde_json::to_value(plugin).unwrap();
    for k in ["pid", "version", "command", "installation", "configs"] {
        assert!(json.get(k).is_some(), "{k} in {json}");
    }

    // Confined to one runtime dir (a sandbox), only its registered servers count.
    env.runtime_override = Some(tmp.path().join("rt"));
    assert!(scope(&env).others.is_empty());
}

/// Only old code is told to change its host: a server of another
/// installation on the target version has nothing to do.
#[test]
fn only_old_code_without_a_config_is_told_to_change_its_host() {
    let f = |version: &str, old_code| Foreign {
        pid: 7,
        version: Some(version.into()),
        command: "python -m memtomem.server".into(),
        launcher: None,
        installation: PathBuf::from("/venv"),
        configs: vec![],
        old_code,
    };
    let text = lines(&[f("0.6.11", true), f("0.6.12", false)], Some("0.6.12"));
    let advice: Vec<&String> = text
        .iter()
        .filter(|l| l.contains("no known MCP host config"))
        .collect();
    assert_eq!(advice.len(), 2, "{text:?}");
    assert!(advice[0].ends_with("change the host that launched it, then restart it"));
    assert!(
        advice[1].ends_with("nothing to do while it runs this version"),
        "{}",
        advice[1]
    );
}

#[test]
fn unknown_or_unparsable_versions_are_old_code() {
    assert!(older(Some("0.6.11"), Some("0.6.12")));
    assert!(!older(Some("0.6.12"), Some("0.6.12")));
    assert!(!older(Some("0.7.0"), Some("0.6.12")));
    assert!(older(None, Some("0.6.12")));
    assert!(older(Some("0.6.12"), None));
    assert!(older(Some("garbage"), Some("0.6.12")));
    assert_eq!(shell_join(&s(&["a b", "c"])), "'a b' c");
}
