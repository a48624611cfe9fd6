use super::*;
use assert_fs::prelude::*;
use assert_fs::TempDir;
use proptest::prelude::*;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|a| a.to_string()).collect()
}

fn entries(c: &Configs) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = c
        .entries
        .iter()
        .map(|e| (e.file.display().to_string(), e.entry.clone()))
        .collect();
    v.sort();
    v
}

const UVX: &str =
    r#"{"command": "uvx", "args": ["--from", "memtomem[onnx]==0.6.11", "memtomem-server"]}"#;

/// Every place a host keeps its servers is read, under the given HOME only.
#[test]
fn every_known_host_config_is_read_under_home() {
    let home = TempDir::new().unwrap();
    let proj = TempDir::new().unwrap();
    let cwd = TempDir::new().unwrap();
    let p = |d: &TempDir, rel: &str| d.path().join(rel).display().to_string();
    home.child(".claude.json")
        .write_str(&format!(
            r#"{{"numStartups": 3, "mcpServers": {{"memtomem": {UVX}, "web": {{"type": "http", "url": "http://x"}}}},
               "projects": {{"{}": {{"mcpServers": {{"mem tomem": {UVX}}}}}}}}}"#,
            proj.path().display()
        ))
        .unwrap();
    proj.child(".mcp.json")
        .write_str(&format!(r#"{{"mcpServers": {{"memtomem": {UVX}}}}}"#))
        .unwrap();
    cwd.child(".mcp.json")
        .write_str(&format!(r#"{{"mcpServers": {{"m": {UVX}}}}}"#))
        .unwrap();
    for rel in [
        ".config/Claude/claude_desktop_config.json",
        "Library/Application Support/Claude/claude_desktop_config.json",
        ".cursor/mcp.json",
    ] {
        home.child(rel)
            .write_str(&format!(r#"{{"mcpServers": {{"memtomem": {UVX}}}}}"#))
            .unwrap();
    }
    // A plugin installed where installed_plugins.json says (v2: a list per
    // id), its .mcp.json without the wrapper; a cache copy whose manifest
    // names a file; one whose manifest has them inline.
    let installed = home.child("elsewhere/memtomem");
    installed
        .child(".mcp.json")
        .write_str(&format!(r#"{{"memtomem": {UVX}}}"#))
        .unwrap();
    home.child(".claude/plugins/installed_plugins.json")
        .write_str(&format!(
            r#"{{"version": 2, "plugins": {{"memtomem@memtomem": [{{"scope": "user", "installPath": "{}"}}]}}}}"#,
            installed.path().display()
        ))
        .unwrap();
    let cache = home.child(".claude/plugins/cache/mkt/memtomem/0.6.11");
    cache
        .child(".claude-plugin/plugin.json")
        .write_str(r#"{"name": "memtomem", "mcpServers": "./servers.json"}"#)
        .unwrap();
    cache
        .child("servers.json")
        .write_str(&format!(r#"{{"mcpServers": {{"memtomem": {UVX}}}}}"#))
        .unwrap();
    home.child(".claude/plugins/cache/mkt/other/1.0/.claude-plugin/plugin.json")
        .write_str(&format!(r#"{{"mcpServers": {{"x": {UVX}}}}}"#))
        .unwrap();

    let c = Configs::read(home.path(), &[cwd.path().to_path_buf()]);
    assert_eq!(c.warnings, Vec::<String>::new());
    let mut want = vec![
        (p(&home, ".claude.json"), "mcpServers.memtomem".to_string()),
        (
            p(&home, ".claude.json"),
            format!(
                "projects[\"{}\"].mcpServers[\"mem tomem\"]",
                proj.path().display()
            ),
        ),
        (p(&proj, ".mcp.json"), "mcpServers.memtomem".into()),
        (p(&cwd, ".mcp.json"), "mcpServers.m".into()),
        (
            p(&home, ".config/Claude/claude_desktop_config.json"),
            "mcpServers.memtomem".into(),
        ),
        (
            p(
                &home,
                "Library/Application Support/Claude/claude_desktop_config.json",
            ),
            "mcpServers.memtomem".into(),
        ),
        (p(&home, ".cursor/mcp.json"), "mcpServers.memtomem".into()),
        (
            p(&home, "elsewhere/memtomem/.mcp.json"),
            "mcpServers.memtomem".into(),
        ),
        (
            p(
                &home,
                ".claude/plugins/cache/mkt/memtomem/0.6.11/servers.json",
            ),
            "mcpServers.memtomem".into(),
        ),
        (
            p(
                &home,
                ".claude/plugins/cache/mkt/other/1.0/.claude-plugin/plugin.json",
            ),
            "mcpServers.x".into(),
        ),
    ];
    want.sort();
    assert_eq!(entries(&c), want);
    let plugin_of = |file: &str| {
        c.entries
            .iter()
            .find(|e| e.file.ends_with(file))
            .and_then(|e| e.plugin.clone())
    };
    assert_eq!(
        plugin_of("elsewhere/memtomem/.mcp.json").as_deref(),
        Some("memtomem@memtomem")
    );
    assert_eq!(plugin_of("servers.json").as_deref(), Some("memtomem@mkt"));
    assert_eq!(plugin_of(".claude.json"), None);
}

/// A config that does not parse (or is not a file) is a warning naming it;
/// the others are read all the same. A missing one is silence.
#[test]
fn a_broken_config_is_a_warning_naming_it_never_a_failure() {
    let home = TempDir::new().unwrap();
    home.child(".claude.json")
        .write_str("{\"mcpServers\": {")
        .unwrap();
    home.child(".cursor/mcp.json").create_dir_all().unwrap();
    home.child(".config/Claude/claude_desktop_config.json")
        .write_str(&format!(r#"{{"mcpServers": {{"memtomem": {UVX}}}}}"#))
        .unwrap();
    let c = Configs::read(home.path(), &[]);
    assert_eq!(c.entries.len(), 1, "{:?}", c.entries);
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    assert!(c.warnings[0].contains(&home.path().join(".claude.json").display().to_string()));
    assert!(
        c.warnings[1].contains("cursor/mcp.json"),
        "{:?}",
        c.warnings
    );
    assert!(Configs::read(&home.path().join("nowhere"), &[])
        .warnings
        .is_empty());
}

fn entry(command: &str, args: &[&str]) -> Entry {
    Entry {
        file: "/h/.claude.json".into(),
        entry: "mcpServers.memtomem".into(),
        plugin: None,
        command: command.into(),
        args: s(args),
    }
}

const CACHE: &str = "/h/.cache/uv/archive-v0/Fk3kHc2vZ8dLxq1a";

/// A plugin's pinned server: its own argv and its `uvx` launcher's.
fn uvx_server() -> (Vec<String>, Vec<String>) {
    (
        vec![
            format!("{CACHE}/bin/python"),
            format!("{CACHE}/bin/memtomem-server"),
        ],
        s(&[
            "/usr/bin/uvx",
            "--from",
            "memtomem[onnx]==0.6.11",
            "memtomem-server",
        ]),
    )
}

#[test]
fn a_uvx_pin_names_the_server_of_that_version_and_its_change_is_the_pin() {
    let (argv, _) = uvx_server();
    let l = |v| Launch {
        argv: &argv,
        launchers: &[],
        installation: Path::new(CACHE),
        version: v,
    };
    let e = entry(
        "uvx",
        &["--from", "memtomem[onnx]==0.6.11", "memtomem-server"],
    );
    let change = change_for(&e, &l(Some("0.6.11")), None, Some("0.6.12")).expect("named");
    assert_eq!(
        change,
        "args[1]: \"memtomem[onnx]==0.6.11\" → \"memtomem[onnx]==0.6.12\""
    );
    // Another version's server is not this entry's.
    assert_eq!(
        change_for(&e, &l(Some("0.6.10")), None, Some("0.6.12")),
        None
    );
    assert_eq!(change_for(&e, &l(None), None, Some("0.6.12")), None);
    // The shapes of the field: --from=, `uv tool run`, the registry's `uvx memtomem==V serve`,
    // options before, `uvx memtomem@V`.
    for (cmd, args, at) in [
        (
            "uvx",
            vec!["--from=memtomem[all]==0.6.11", "memtomem-server"],
            0,
        ),
        (
            "/usr/local/bin/uv",
            vec![
                "tool",
                "run",
                "--from",
                "memtomem==0.6.11",
                "memtomem-server",
            ],
            3,
        ),
        ("uvx", vec!["memtomem==0.6.11", "serve"], 0),
        (
            "uvx",
            vec![
                "--isolated",
                "--python",
                "3.12",
                "--from",
                "memtomem[onnx]==0.6.11",
                "memtomem-server",
            ],
            4,
        ),
    ] {
        let e = entry(cmd, &args);
        let change = change_for(&e, &l(Some("0.6.11")), None, Some("0.6.12"))
            .unwrap_or_else(|| panic!("{cmd} {args:?}"));
        assert!(change.starts_with(&format!("args[{at}]: ")), "{change}");
        assert!(change.ends_with("==0.6.12\""), "{change}");
    }
    // Not memtomem, or not its server.
    for args in [
        vec!["--from", "memtomemx==0.6.11", "memtomem-server"],
        vec!["--from", "memtomem==0.6.11", "mm", "search"],
        vec!["other-server==0.6.11"],
    ] {
        assert_eq!(
            change_for(
                &entry("uvx", &args),
                &l(Some("0.6.11")),
                None,
                Some("0.6.12")
            ),
            None,
            "{args:?}"
        );
    }
}

#[test]
fn the_launchers_exact_command_line_names_the_server_whatever_its_form() {
    let (argv, launcher) = uvx_server();
    let l = Launch {
        argv: &argv,
        launchers: &[launcher],
        installation: Path::new(CACHE),
        version: None,
    };
    // uvx was found on PATH by the host: the bare name matches the path.
    let e = entry(
        "uvx",
        &["--from", "memtomem[onnx]==0.6.11", "memtomem-server"],
    );
    let change = change_for(&e, &l, None, None).expect("exact");
    assert!(
        change.ends_with("\"memtomem[onnx]==0.6.11\" → pin the installed memtomem version"),
        "{change}"
    );
    // uvx execs `uv tool uvx …`: that process is the `uvx …` the host ran.
    let exec = vec![s(&[
        "/usr/bin/uv",
        "tool",
        "uvx",
        "--from",
        "memtomem[onnx]==0.6.11",
        "memtomem-server",
    ])];
    let execd = Launch {
        launchers: &exec,
        ..l
    };
    assert!(change_for(&e, &execd, None, None).is_some());
    let odd = entry("uvx", &["--from", "memtomem[onnx]", "memtomem-server"]);
    assert_eq!(change_for(&odd, &execd, None, None), None);
    // Another path for the command is another command.
    let e = entry(
        "/opt/uvx",
        &["--from", "memtomem[onnx]==0.6.11", "memtomem-server"],
    );
    assert_eq!(change_for(&e, &l, None, None), None);
    // Same command, other arguments.
    let e = entry(
        "uvx",
        &["--from", "memtomem[onnx]==0.6.11", "memtomem-server", "-v"],
    );
    assert_eq!(change_for(&e, &l, None, None), None);
}

#[test]
fn an_interpreter_or_project_entry_names_the_server_of_that_environment() {
    let proj = TempDir::new().unwrap();
    let venv = proj.path().join(".venv");
    let argv = vec![
        venv.join("bin/python3").display().to_string(),
        "-m".into(),
        "memtomem.server".into(),
    ];
    let l = Launch {
        argv: &argv,
        launchers: &[],
        installation: &venv,
        version: Some("0.6.9"),
    };
    let this = Path::new("/h/.local/share/uv/tools/memtomem");
    let py = venv.join("bin/python").display().to_string();
    let change = change_for(
        &entry(&py, &["-m", "memtomem.server"]),
        &l,
        Some(this),
        Some("0.6.12"),
    )
    .expect("python -m");
    assert_eq!(
        change,
        format!("command: \"{py}\" → \"/h/.local/share/uv/tools/memtomem/bin/python\" with args [\"-m\", \"memtomem.server\"] (this installation, memtomem 0.6.12)")
    );
    let script = venv.join("bin/memtomem-server").display().to_string();
    assert!(change_for(&entry(&script, &[]), &l, Some(this), Some("0.6.12")).is_some());
    let dir = proj.path().display().to_string();
    let change = change_for(
        &entry("uv", &["run", "--directory", &dir, "memtomem-server"]),
        &l,
        Some(this),
        Some("0.6.12"),
    )
    .expect("uv run --directory");
    assert!(change.contains("uv add memtomem==0.6.12"), "{change}");
    // This installation's interpreter, another project, a python on something else.
    for e in [
        entry(
            "/h/.local/share/uv/tools/memtomem/bin/python",
            &["-m", "memtomem.server"],
        ),
        entry(
            "uv",
            &["run", "--directory", "/elsewhere", "memtomem-server"],
        ),
        entry(&py, &["-m", "pip"]),
        entry("python3", &["-m", "memtomem.server"]),
    ] {
        assert_eq!(
            change_for(&e, &l, Some(this), Some("0.6.12")),
            None,
            "{e:?}"
        );
    }
}

#[test]
fn a_plugin_manifest_says_to_update_the_plugin() {
    let (argv, _) = uvx_server();
    let l = Launch {
        argv: &argv,
        launchers: &[],
        installation: Path::new(CACHE),
        version: Some("0.6.11"),
    };
    let mut e = entry(
        "uvx",
        &["--from", "memtomem[onnx]==0.6.11", "memtomem-server"],
    );
    e.plugin = Some("memtomem@memtomem".into());
    let configs = Configs {
        entries: vec![
            e,
            entry("uvx", &["--from", "memtomem==0.6.8", "memtomem-server"]),
        ],
        warnings: vec![],
    };
    let refs = matching(&configs, &l, None, Some("0.6.12"));
    assert_eq!(refs.len(), 1, "{refs:?}");
    assert!(
        refs[0]
            .change
            .starts_with("update the plugin memtomem@memtomem"),
        "{}",
        refs[0].change
    );
    assert!(
        refs[0].change.contains("\"memtomem[onnx]==0.6.12\""),
        "{}",
        refs[0].change
    );
}

fn extras() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec("[a-z][a-z0-9-]{0,6}", 0..3)
}

proptest! {
    /// A pin is read back from any extras and release, and repinning keeps
    /// name and extras and changes only the version.
    #[test]
    fn pins_are_read_and_rewritten(ex in extras(), v in "[0-9]{1,2}(\\.[0-9]{1,3}){1,3}", t in "[0-9]{1,2}\\.[0-9]{1,3}") {
        let name = if ex.is_empty() { "memtomem".to_string() } else { format!("memtomem[{}]", ex.join(",")) };
        let req = format!("{name}=={v}");
        prop_assert_eq!(memtomem_requirement(&req), Some(Some(v.clone())));
        prop_assert_eq!(memtomem_requirement(&name), Some(None));
        let new = repin(&req, &t);
        prop_assert_eq!(&new, &format!("{name}=={t}"));
        prop_assert_eq!(memtomem_requirement(&new), Some(Some(t)));
    }

    /// Whatever a config holds, reading its command never panics, and a
    /// command that is not a launch of memtomem is never matched.
    #[test]
    fn any_command_line_is_read_without_panic(cmd in "[a-z/.]{0,12}", args in proptest::collection::vec("[-=a-z0-9.\\[\\]@/ ]{0,16}", 0..6)) {
        let argv = s(&["/x/bin/python", "-m", "memtomem.server"]);
        let l = Launch { argv: &argv, launchers: &[], installation: Path::new("/x"), version: Some("1.0") };
        let e = Entry { file: "/f".into(), entry: "e".into(), plugin: None, command: cmd.clone(), args: args.clone() };
        let got = change_for(&e, &l, None, Some("2.0"));
        if !args.iter().any(|a| a.contains("memtomem")) && !cmd.contains("memtomem") {
            prop_assert_eq!(got, None);
        }
    }
}
