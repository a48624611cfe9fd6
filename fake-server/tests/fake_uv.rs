//! `fake-uv`: the calls the upgrader makes (stage, install, prepare) and the tool
//! environments they leave behind, checked file by file.

mod common;
#[path = "fake_uv/uvbox.rs"]
mod uvbox;

use std::fs;
use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use uvbox::*;
#[test]
fn a_stage_call_lays_out_a_real_looking_environment_while_managed_servers_run() {
    let b = UvBox::new();
    // This test process stands for an old server that is still running.
    let managed = b.managed(&[std::process::id()]);
    let stage = b.stage("s1");
    let bin = stage.join(".bin");
    let mut c = b.command(
        &[
            ("UV_TOOL_DIR", &stage),
            ("UV_TOOL_BIN_DIR", &bin),
            ("FAKE_UV_MANAGED_PIDS", &managed),
        ],
        &[
            "tool",
            "install",
            "--refresh-package",
            "memtomem",
            "--python",
            "/usr/bin/python3.12",
            "--compile-bytecode",
            "--index",
            "https://example.invalid/simple",
            "memtomem[a,b]==0.6.13",
            "--with",
            "httpx",
            "--with",
            "anyio>=4",
        ],
    );
    let out = c.output().unwrap();
    ok(&out);
    let call = b.last_call();
    assert_eq!(call["kind"], "stage");
    assert_eq!(call["exit_code"], 0);
    assert_eq!(
        call["managed_alive"],
        serde_json::json!([std::process::id()])
    );
    assert_eq!(call["installed"]["version"], "0.6.13");

    let env = stage.join("memtomem");
    assert_layout(&env, &bin, "0.6.13");
    assert_eq!(
        receipt(&env),
        expected_receipt(
            r#"[{ name = "memtomem", extras = ["a", "b"], specifier = "==0.6.13" }, { name = "httpx" }, { name = "anyio", specifier = ">=4" }]"#,
            Some("/usr/bin/python3.12"),
            &bin,
            true
        )
    );
    // uv's own layout: inline tables, one requirement per line.
    let text = fs::read_to_string(env.join("uv-receipt.toml")).unwrap();
    assert!(
        text.contains(
            "\n    { name = \"memtomem\", extras = [\"a\", \"b\"], specifier = \"==0.6.13\" },\n"
        ),
        "{text}"
    );
    assert!(fs::read_to_string(env.join("pyvenv.cfg"))
        .unwrap()
        .starts_with("home = /usr/bin\n"));

    // The metadata probe's contract: one JSON line, exit 0, whatever the arguments.
    let p = probe(&env);
    assert_eq!(p.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(p.stdout).unwrap(),
        "{\"version\": \"0.6.13\", \"missing\": [], \"schema\": null}\n"
    );
    let p3 = run(&env.join("bin/python3"), &[]);
    assert_eq!(
        serde_json::from_slice::<Value>(&p3.stdout).unwrap()["version"],
        "0.6.13"
    );

    for n in ["memtomem", "memtomem-web", "mm"] {
        assert_eq!(run(&bin.join(n), &["--help"]).status.code(), Some(0), "{n}");
    }
    // The real tool dir's own installation is not touched.
    assert!(!b.tools.join("memtomem").exists());

    // The staged memtomem-server is the fake server, reporting the staged version.
    let sb = Sandbox::new();
    let mut p = start_installed_server(&bin.join("memtomem-server"), &sb, &[]);
    let mcp = Mcp::new(p.child.stdout.take().unwrap());
    let v = mcp.request(&mut p, &initialize(1, "2025-06-18"));
    assert_eq!(v["result"]["serverInfo"]["version"], "0.6.13", "{v}");
    p.close_stdin();
    assert_eq!(p.wait_exit(Duration::from_secs(5)).unwrap().code(), Some(0));
}

#[test]
fn unpinned_specs_resolve_to_the_latest_and_the_receipt_keeps_what_was_asked() {
    let b = UvBox::new();
    let stage = b.stage("range");
    let bin = stage.join(".bin");
    let mut c = b.command(
        &[("UV_TOOL_DIR", &stage), ("UV_TOOL_BIN_DIR", &bin)],
        // The SPEC before the options this time.
        &[
            "tool",
            "install",
            "memtomem[a]>=0.6,<0.7",
            "--refresh-package",
            "memtomem",
        ],
    );
    c.env("FAKE_UV_LATEST", "0.6.99");
    ok(&c.output().unwrap());
    let env = stage.join("memtomem");
    assert_layout(&env, &bin, "0.6.99");
    assert_eq!(
        receipt(&env),
        expected_receipt(
            r#"[{ name = "memtomem", extras = ["a"], specifier = ">=0.6,<0.7" }]"#,
            None,
            &bin,
            false
        )
    );
    let text = fs::read_to_string(env.join("uv-receipt.toml")).unwrap();
    assert!(
        !text.contains("[tool.options]") && !text.contains("python ="),
        "{text}"
    );

    // A bare `memtomem`, and no UV_TOOL_BIN_DIR: the bin dir is `<stage>/.bin`.
    let stage = b.stage("bare");
    let mut c = b.command(&[("UV_TOOL_DIR", &stage)], &["tool", "install", "memtomem"]);
    c.env("FAKE_UV_LATEST", "0.8.0");
    ok(&c.output().unwrap());
    let env = stage.join("memtomem");
    assert_layout(&env, &stage.join(".bin"), "0.8.0");
    assert_eq!(
        receipt(&env),
        expected_receipt(
            r#"[{ name = "memtomem" }]"#,
            None,
            &stage.join(".bin"),
            false
        )
    );
    assert!(String::from_utf8(probe(&env).stdout)
        .unwrap()
        .contains("\"version\": \"0.8.0\""));
}

#[test]
fn an_install_call_is_refused_while_a_managed_server_lives_and_lays_out_the_same_shape() {
    let b = UvBox::new();
    let alive = b.managed(&[std::process::id()]);
    let out = b.install_call(
        &[("FAKE_UV_MANAGED_PIDS", &alive)],
        &["--reinstall", "memtomem==0.6.12"],
    );
    assert_eq!(out.status.code(), Some(97));
    assert_eq!(b.last_call()["kind"], "install");
    assert!(!b.tools.join("memtomem").exists());

    let none = b.managed(&[]);
    let out = b.install_call(
        &[("FAKE_UV_MANAGED_PIDS", &none)],
        &["--reinstall", "memtomem[web]==0.6.12"],
    );
    ok(&out);
    assert_eq!(b.last_call()["kind"], "install");
    let env = b.tools.join("memtomem");
    assert_layout(&env, &b.bin, "0.6.12");
    assert_eq!(
        receipt(&env),
        expected_receipt(
            r#"[{ name = "memtomem", extras = ["web"], specifier = "==0.6.12" }]"#,
            None,
            &b.bin,
            false
        )
    );
    let server = fs::read_to_string(env.join("bin/memtomem-server")).unwrap();
    assert!(
        server.contains("--server-version '0.6.12' \"$@\""),
        "{server}"
    );
    assert!(server.contains(BIN), "{server}");

    // A stage call afterwards leaves that installation alone.
    let (out, stage) = b.stage_call("s", "succeed", &["memtomem==0.7.0"]);
    ok(&out);
    assert_eq!(installed_version(&env), ["0.6.12"]);
    assert_eq!(installed_version(&stage.join("memtomem")), ["0.7.0"]);
    assert_eq!(fs::read_link(b.bin.join("mm")).unwrap(), env.join("bin/mm"));
}

#[test]
fn a_prepare_call_elsewhere_lays_out_the_same_shape() {
    let b = UvBox::new();
    let scratch = b.dir.path().join("prepare");
    let (tools, bin) = (scratch.join("tools"), scratch.join("bin"));
    let out = b
        .command(
            &[("UV_TOOL_DIR", &tools), ("UV_TOOL_BIN_DIR", &bin)],
            &["tool", "install", "--refresh", "memtomem==0.6.12"],
        )
        .output()
        .unwrap();
    ok(&out);
    assert_eq!(b.last_call()["kind"], "prepare");
    assert_layout(&tools.join("memtomem"), &bin, "0.6.12");
}

#[test]
fn a_stage_call_honours_the_failures_of_fake_uv_behavior() {
    let b = UvBox::new();
    let (out, stage) = b.stage_call("fail", "fail:3:boom: no wheel", &["memtomem==0.7.0"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "boom: no wheel\n");
    assert!(!stage.join("memtomem").exists());
    let call = b.last_call();
    assert_eq!(
        (call["kind"].as_str(), call["exit_code"].as_i64()),
        (Some("stage"), Some(3))
    );

    let (out, stage) = b.stage_call("unres", "unresolvable", &["memtomem==9.9.9"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("there is no version of memtomem==9.9.9"),
        "{err}"
    );
    assert!(!stage.join("memtomem").exists());

    let t0 = Instant::now();
    let (out, stage) = b.stage_call("sleep", "sleep:300", &["memtomem==0.7.0"]);
    ok(&out);
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert_eq!(installed_version(&stage.join("memtomem")), ["0.7.0"]);

    let stage = b.stage("hang");
    let mut c = b.command(
        &[("UV_TOOL_DIR", &stage)],
        &["tool", "install", "memtomem==0.7.0"],
    );
    c.env("FAKE_UV_BEHAVIOR", "hang");
    let mut p = Proc::start(
        c,
        b.dir.path().join("r"),
        b.dir.path().join("e"),
        b.dir.path().join("x"),
    );
    assert!(p.wait_exit(Duration::from_millis(300)).is_none(), "hangs");
    // A hanging call is logged as it starts hanging: it never ends by itself.
    let call = b.last_call();
    assert_eq!(call["kind"], "stage");
    assert_eq!(call["note"], "hanging");
    assert!(
        call["exit_code"].is_null() && call["end_mono_ns"].is_null(),
        "{call}"
    );
    assert!(call["mono_ns"].as_u64().is_some());
    drop(p);
    assert!(!stage.join("memtomem").exists());

    // Offline: only what is in the cache.
    let cache = b.dir.path().join("cache");
    fs::create_dir_all(cache.join("memtomem-0.7.0")).unwrap();
    for (v, code) in [("0.7.1", 1), ("0.7.0", 0)] {
        let stage = b.stage(&format!("offline-{v}"));
        let mut c = b.command(
            &[("UV_TOOL_DIR", &stage), ("FAKE_UV_CACHE", &cache)],
            &["tool", "install", "--offline", &format!("memtomem=={v}")],
        );
        assert_eq!(c.output().unwrap().status.code(), Some(code), "{v}");
    }
}

#[test]
fn broken_python_and_broken_entry() {
    let b = UvBox::new();
    let (out, stage) = b.stage_call("py", "broken-python", &["memtomem==0.7.0"]);
    ok(&out);
    let env = stage.join("memtomem");
    assert_layout(&env, &stage.join(".bin"), "0.7.0");
    let p = probe(&env);
    assert_eq!(p.status.code(), Some(1));
    assert!(p.stdout.is_empty());
    assert_eq!(String::from_utf8_lossy(&p.stderr), "fake python: broken\n");
    assert_eq!(run(&env.join("bin/mm"), &[]).status.code(), Some(0));

    let (out, stage) = b.stage_call("entry", "broken-entry", &["memtomem==0.7.0"]);
    ok(&out);
    let env = stage.join("memtomem");
    assert_layout(&env, &stage.join(".bin"), "0.7.0");
    let s = run(&stage.join(".bin/memtomem-server"), &[]);
    assert_eq!(s.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&s.stderr).contains("ModuleNotFoundError"));
    assert_eq!(probe(&env).status.code(), Some(0));
}

#[test]
fn wrong_version_installs_and_reports_v_everywhere() {
    let b = UvBox::new();
    let (out, stage) = b.stage_call("w", "wrong-version:0.6.5", &["memtomem==0.7.1"]);
    ok(&out);
    let env = stage.join("memtomem");
    assert_layout(&env, &stage.join(".bin"), "0.6.5");
    assert_eq!(
        serde_json::from_slice::<Value>(&probe(&env).stdout).unwrap()["version"],
        "0.6.5"
    );
    let server = fs::read_to_string(env.join("bin/memtomem-server")).unwrap();
    assert!(server.contains("--server-version '0.6.5'"), "{server}");
    // The receipt records what was asked for.
    assert_eq!(
        receipt(&env)["tool"]["requirements"][0]["specifier"].as_str(),
        Some("==0.7.1")
    );
    assert_eq!(b.last_call()["installed"]["version"], "0.6.5");
}

#[test]
fn server_args_reach_the_installed_memtomem_server() {
    let b = UvBox::new();
    let stage = b.stage("args");
    let bin = stage.join(".bin");
    let mut c = b.command(
        &[("UV_TOOL_DIR", &stage), ("UV_TOOL_BIN_DIR", &bin)],
        &["tool", "install", "memtomem==0.7.2"],
    );
    c.env("FAKE_UV_SERVER_ARGS", " --mode  hang-initialize\n");
    ok(&c.output().unwrap());
    let env = stage.join("memtomem");
    assert_layout(&env, &bin, "0.7.2");
    let script = fs::read_to_string(env.join("bin/memtomem-server")).unwrap();
    assert!(
        script.ends_with("--server-version '0.7.2' '--mode' 'hang-initialize' \"$@\"\n"),
        "{script}"
    );

    // The staged server hangs on initialize, and still exits on EOF.
    let sb = Sandbox::new();
    let (ready, events) = (sb.path("s.ready"), sb.path("s.events"));
    let mut p = start_installed_server(
        &bin.join("memtomem-server"),
        &sb,
        &[
            "--ready-file",
            ready.to_str().unwrap(),
            "--events",
            events.to_str().unwrap(),
        ],
    );
    p.ready();
    let mcp = Mcp::new(p.child.stdout.take().unwrap());
    Mcp::send(&mut p, &initialize(1, "2025-06-18"));
    assert_eq!(mcp.recv(Duration::from_millis(300)), None);
    p.close_stdin();
    assert_eq!(p.wait_exit(Duration::from_secs(5)).unwrap().code(), Some(0));

    // Without the variable the script passes nothing more.
    let (out, stage) = b.stage_call("plain", "succeed", &["memtomem==0.7.2"]);
    ok(&out);
    let script = fs::read_to_string(stage.join("memtomem/bin/memtomem-server")).unwrap();
    assert!(
        script.ends_with("--server-version '0.7.2' \"$@\"\n"),
        "{script}"
    );
}

#[test]
fn stage_only_refuses_every_install_that_is_not_a_stage_call() {
    let b = UvBox::new();
    let mut c = b.command(
        &[("UV_TOOL_DIR", &b.tools), ("UV_TOOL_BIN_DIR", &b.bin)],
        &["tool", "install", "memtomem==0.7.0"],
    );
    let out = c.env("FAKE_UV_STAGE_ONLY", "1").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a staging dir"), "{err}");
    assert!(!b.tools.join("memtomem").exists());
    assert_eq!(b.last_call()["kind"], "install");
    // A stage call still lays out its environment.
    let stage = b.stage("s");
    let mut c = b.command(
        &[("UV_TOOL_DIR", &stage)],
        &["tool", "install", "memtomem==0.7.0"],
    );
    ok(&c.env("FAKE_UV_STAGE_ONLY", "1").output().unwrap());
    assert_eq!(installed_version(&stage.join("memtomem")), ["0.7.0"]);
}

#[test]
fn dangling_entry_names_mm_in_the_receipt_but_never_writes_it() {
    let b = UvBox::new();
    let (out, stage) = b.stage_call("d", "dangling-entry", &["memtomem==0.7.0"]);
    ok(&out);
    let env = stage.join("memtomem");
    let bin = stage.join(".bin");
    let names: Vec<String> = receipt(&env)["tool"]["entrypoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ENTRY_POINTS);
    assert!(fs::symlink_metadata(bin.join("mm")).is_err());
    assert!(fs::symlink_metadata(env.join("bin/mm")).is_err());
    for n in ["memtomem", "memtomem-server", "memtomem-web"] {
        assert_eq!(fs::read_link(bin.join(n)).unwrap(), env.join("bin").join(n));
    }
    assert_eq!(b.last_call()["installed"]["dangling_entry"], true);
}

#[test]
fn hang_half_written_leaves_part_of_an_environment_then_hangs() {
    let b = UvBox::new();
    let stage = b.stage("h");
    let mut c = b.command(
        &[("UV_TOOL_DIR", &stage)],
        &["tool", "install", "memtomem==0.7.0"],
    );
    c.env("FAKE_UV_BEHAVIOR", "hang-half-written");
    let mut p = Proc::start(
        c,
        b.dir.path().join("r"),
        b.dir.path().join("e"),
        b.dir.path().join("x"),
    );
    // The log line is written once the half environment is there.
    let hanging = || {
        fs::read_to_string(&b.log)
            .unwrap_or_default()
            .contains("\"note\":\"hanging\"")
    };
    testkit::wait_for(
        "the hanging call's log line",
        Duration::from_secs(10),
        hanging,
    );
    assert_eq!(b.last_call()["pid"], p.child.id());
    assert!(stage.join("memtomem/lib/python3.12/site-packages").is_dir());
    assert!(!stage.join("memtomem/uv-receipt.toml").exists());
    assert!(p.wait_exit(Duration::from_millis(100)).is_none(), "hangs");
}

#[test]
fn without_uv_dirs_the_defaults_follow_xdg_then_home() {
    let b = UvBox::new();
    let home = b.dir.path().join("home");
    let xdg = b.dir.path().join("xdg");
    let ask = |env: &[(&str, &Path)], bin: bool| -> String {
        let mut args = vec!["tool", "dir"];
        if bin {
            args.push("--bin");
        }
        let out = b.command(env, &args).output().unwrap();
        ok(&out);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let s = |p: PathBuf| p.to_string_lossy().into_owned();
    assert_eq!(ask(&[], false), s(home.join(".local/share/uv/tools")));
    assert_eq!(ask(&[], true), s(home.join(".local/bin")));
    let data = xdg.join("data");
    assert_eq!(
        ask(&[("XDG_DATA_HOME", &data)], false),
        s(data.join("uv/tools"))
    );
    assert_eq!(
        ask(&[("XDG_DATA_HOME", &data)], true),
        s(data.join("../bin"))
    );
    let xbin = xdg.join("bin");
    assert_eq!(
        ask(&[("XDG_DATA_HOME", &data), ("XDG_BIN_HOME", &xbin)], true),
        s(xbin.clone())
    );
    assert_eq!(
        ask(
            &[("XDG_BIN_HOME", &xbin), ("UV_TOOL_BIN_DIR", &b.bin)],
            true
        ),
        s(b.bin.clone())
    );
}
