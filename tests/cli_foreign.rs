//! Servers of another installation end to end (issue 12, point 2): a
//! plugin's pinned `uvx --from memtomem[onnx]==V memtomem-server` (fake-server
//! in its `uvx` argv shape, under the sandbox's HOME) is shown by `status`
//! and the upgrade report with its version, command and installation, and
//! the MCP host config entries (in the sandbox HOME) that launch it.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{json_run, Sandbox};
use predicates::prelude::*;
use serde_json::Value;

/// fake-server's `uvx` shape runs from this cache env under HOME.
const CACHE: &str = "home/.cache/uv/archive-v0/Fk3kHc2vZ8dLxq1a";

/// The uv cache env of a plugin pinned to memtomem `version`, and the host
/// configs that name it: `~/.claude.json` (top level) and the `.mcp.json`
/// of a project it lists. Returns (cache env, ~/.claude.json, project .mcp.json).
fn pinned_plugin_env(sb: &Sandbox, version: &str) -> (PathBuf, PathBuf, PathBuf) {
    let cache = sb.path(CACHE);
    fs::create_dir_all(cache.join("bin")).unwrap();
    fs::write(cache.join("pyvenv.cfg"), "home = /usr/bin\n").unwrap();
    fs::create_dir_all(cache.join(format!(
        "lib/python3.12/site-packages/memtomem-{version}.dist-info"
    )))
    .unwrap();
    let entry = format!(
        r#"{{"command": "uvx", "args": ["--from", "memtomem[onnx]=={version}", "memtomem-server"], "env": {{"MEMTOMEM_TOOL_MODE": "core"}}}}"#
    );
    let proj = sb.path("proj");
    fs::create_dir_all(&proj).unwrap();
    let claude = sb.path("home/.claude.json");
    fs::write(
        &claude,
        format!(
            r#"{{"mcpServers": {{"memtomem": {entry}}}, "projects": {{"{}": {{"mcpServers": {{}}}}}}}}"#,
            proj.display()
        ),
    )
    .unwrap();
    let mcp = proj.join(".mcp.json");
    fs::write(&mcp, format!(r#"{{"mcpServers": {{"mem": {entry}}}}}"#)).unwrap();
    (cache, claude, mcp)
}

/// `doc` is valid against the published schema `name`, and each of its
/// `other_installations` against that schema's `other_installation`,
/// closed to the keys it documents (a key printed but not documented fails).
fn check_schema(name: &str, doc: &Value) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("schemas/{name}.schema.json"));
    let schema: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    let open = jsonschema::draft202012::new(&schema).unwrap();
    let errs: Vec<String> = open.iter_errors(doc).map(|e| e.to_string()).collect();
    assert!(errs.is_empty(), "{name}: {errs:?}\n{doc}");
    let mut def = schema["$defs"]["other_installation"].clone();
    def["unevaluatedProperties"] = Value::Bool(false);
    def["properties"]["configs"]["items"]["unevaluatedProperties"] = Value::Bool(false);
    let closed = jsonschema::draft202012::new(&def).unwrap();
    let others = doc["other_installations"]
        .as_array()
        .expect("other_installations");
    for o in others {
        let errs: Vec<String> = closed.iter_errors(o).map(|e| e.to_string()).collect();
        assert!(errs.is_empty(), "{name} other_installation: {errs:?}\n{o}");
    }
}

fn config<'a>(other: &'a Value, file: &Path) -> &'a Value {
    other["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["file"] == file.display().to_string())
        .unwrap_or_else(|| panic!("{} not in {other}", file.display()))
}

#[test]
fn status_names_a_pinned_plugin_server_its_version_and_the_configs_that_launch_it() {
    let sb = Sandbox::new();
    let (cache, claude, mcp) = pinned_plugin_env(&sb, "0.6.9");
    let server = sb.server("plugin", &["--argv-shape", "uvx"]);
    let doc = json_run(sb.upgrader().args(["status", "--json"]), 6);
    check_schema("status", &doc);
    let others = doc["other_installations"].as_array().expect("key");
    assert_eq!(others.len(), 1, "{doc}");
    let o = &others[0];
    assert_eq!(o["pid"], server.pid());
    assert_eq!(o["version"], "0.6.9");
    assert_eq!(o["old_code"], true);
    assert_eq!(o["installation"], cache.display().to_string());
    assert_eq!(
        o["command"],
        format!("{0}/bin/python {0}/bin/memtomem-server", cache.display())
    );
    // The installed version is 0.6.11: that is what the pin should say.
    let change = "args[1]: \"memtomem[onnx]==0.6.9\" → \"memtomem[onnx]==0.6.11\"";
    let c = config(o, &claude);
    assert_eq!(
        (c["entry"].as_str(), c["change"].as_str()),
        (Some("mcpServers.memtomem"), Some(change))
    );
    let c = config(o, &mcp);
    assert_eq!(
        (c["entry"].as_str(), c["change"].as_str()),
        (Some("mcpServers.mem"), Some(change))
    );

    // Words: the same, with the file, the entry and the change.
    sb.upgrader().arg("status").assert().code(6).stdout(
        predicate::str::contains(format!("pid {}  memtomem 0.6.9, old code", server.pid()))
            .and(predicate::str::contains(format!(
                "{} mcpServers.memtomem: {change}",
                claude.display()
            )))
            .and(predicate::str::contains(format!(
                "{} mcpServers.mem: {change}",
                mcp.display()
            ))),
    );
}

#[test]
fn a_config_that_does_not_parse_is_a_warning_naming_it_and_status_goes_on() {
    let sb = Sandbox::new();
    let (_, claude, mcp) = pinned_plugin_env(&sb, "0.6.9");
    fs::write(&claude, "{ not json").unwrap();
    let server = sb.server("plugin", &["--argv-shape", "uvx"]);
    let doc = json_run(sb.upgrader().args(["status", "--json"]), 6);
    let o = &doc["other_installations"][0];
    assert_eq!(o["pid"], server.pid());
    // The project is no longer listed, so nothing names it.
    assert_eq!(o["configs"], serde_json::json!([]), "{doc}");
    let warned = doc["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w.as_str().unwrap().contains(&claude.display().to_string()));
    assert!(warned, "{doc}");
    assert!(mcp.exists());
    sb.upgrader().arg("status").assert().code(6).stderr(
        predicate::str::contains(claude.display().to_string())
            .and(predicate::str::contains("could not be read")),
    );
}

#[test]
fn the_plan_shows_the_pinned_server_and_its_config_entry() {
    let sb = Sandbox::new();
    let (_, claude, _) = pinned_plugin_env(&sb, "0.6.9");
    let server = sb.server("plugin", &["--argv-shape", "uvx"]);
    let doc = json_run(
        sb.upgrader()
            .args(["--dry-run", "--json", "--version", "0.6.12"]),
        0,
    );
    check_schema("upgrade-report", &doc);
    let o = &doc["other_installations"][0];
    assert_eq!(o["pid"], server.pid());
    assert_eq!(
        config(o, &claude)["change"],
        "args[1]: \"memtomem[onnx]==0.6.9\" → \"memtomem[onnx]==0.6.12\""
    );
    sb.upgrader()
        .args(["--dry-run", "--version", "0.6.12"])
        .assert()
        .code(0)
        .stdout(
            predicate::str::contains("of another installation").and(predicate::str::contains(
                format!("{} mcpServers.memtomem", claude.display()),
            )),
        );
    assert!(server.alive());
}

/// The plugin's host respawns it, pinned, as soon as it is stopped (fake-server's
/// `respawn` supervisor, in the uvx shape): after the switch it runs 0.6.9 again,
/// so old code remains (exit 6), and the report names the config to change.
#[test]
fn a_respawned_pinned_server_after_the_upgrade_is_old_code_and_exits_6() {
    let sb = Sandbox::new();
    let (_, claude, _) = pinned_plugin_env(&sb, "0.6.9");
    let _host = sb.server("plugin", &["--argv-shape", "uvx", "--mode", "respawn"]);
    let doc = json_run(
        sb.upgrader()
            .args(["-y", "--json", "--grace", "1", "--version", "0.6.12"]),
        6,
    );
    check_schema("upgrade-report", &doc);
    assert_eq!(doc["ok"], false, "{doc}");
    assert_eq!(doc["version"], "0.6.12", "{doc}");
    assert_eq!(sb.installed_versions(), vec!["0.6.12".to_string()]);
    let o = &doc["other_installations"][0];
    assert_eq!(o["version"], "0.6.9", "{doc}");
    assert_eq!(
        config(o, &claude)["change"],
        "args[1]: \"memtomem[onnx]==0.6.9\" → \"memtomem[onnx]==0.6.12\""
    );
    let error = doc["error"].as_str().unwrap();
    assert!(
        error.contains("another installation still runs old code"),
        "{error}"
    );
    assert!(error.contains("mcpServers.memtomem"), "{error}");
}

/// A pinned server already on the installed version is not old code: the
/// upgrade ends 0 and names it.
#[test]
fn a_respawned_server_pinned_to_the_new_version_is_current() {
    let sb = Sandbox::new();
    pinned_plugin_env(&sb, "0.6.12");
    let _host = sb.server("plugin", &["--argv-shape", "uvx", "--mode", "respawn"]);
    let doc = json_run(
        sb.upgrader()
            .args(["-y", "--json", "--grace", "1", "--version", "0.6.12"]),
        0,
    );
    assert_eq!(doc["ok"], true, "{doc}");
    let o = &doc["other_installations"][0];
    assert_eq!(
        (o["version"].as_str(), o["old_code"].as_bool()),
        (Some("0.6.12"), Some(false)),
        "{doc}"
    );
}

/// --skip-pkill keeps old code running by request: the pinned server is kept,
/// named with its config entry, and the run exits 0 as it does for kept servers.
#[test]
fn with_skip_pkill_a_pinned_server_is_named_but_does_not_fail_the_run() {
    let sb = Sandbox::new();
    let (_, claude, _) = pinned_plugin_env(&sb, "0.6.9");
    let server = sb.server("plugin", &["--argv-shape", "uvx"]);
    let doc = json_run(
        sb.upgrader()
            .args(["-y", "--json", "--skip-pkill", "--version", "0.6.12"]),
        0,
    );
    check_schema("upgrade-report", &doc);
    assert_eq!(doc["kept"], serde_json::json!([server.pid()]), "{doc}");
    let o = &doc["other_installations"][0];
    assert_eq!(
        (o["pid"].as_i64(), o["old_code"].as_bool()),
        (Some(server.pid() as i64), Some(true))
    );
    assert_eq!(config(o, &claude)["entry"], "mcpServers.memtomem");
    assert!(server.alive());
}

/// A server pinned to the installed version (0.6.11 in the sandbox) runs
/// another installation's code, but not old code: status calls it current,
/// exits 0 and does not say "restart them" (it said stale, exit 6).
#[test]
fn a_pinned_server_on_the_installed_version_is_current() {
    let sb = Sandbox::new();
    pinned_plugin_env(&sb, "0.6.11");
    let server = sb.server("plugin", &["--argv-shape", "uvx"]);
    let doc = json_run(sb.upgrader().args(["status", "--json"]), 0);
    check_schema("status", &doc);
    assert_eq!(doc["other_installations"][0]["pid"], server.pid(), "{doc}");
    assert_eq!(doc["other_installations"][0]["old_code"], false, "{doc}");
    assert_eq!(doc["processes"][0]["generation"], "current", "{doc}");
    assert_eq!(doc["stale"], 0, "{doc}");
    // The installation is named once (it was, twice, in other words).
    let evidence = doc["processes"][0]["evidence"].as_array().unwrap();
    let naming: Vec<_> = evidence
        .iter()
        .filter(|e| e.as_str().unwrap().contains("Fk3kHc2vZ8dLxq1a"))
        .collect();
    assert_eq!(naming.len(), 1, "{doc}");
    sb.upgrader()
        .arg("status")
        .assert()
        .code(0)
        .stdout(predicate::str::contains("restart them").not());
}
