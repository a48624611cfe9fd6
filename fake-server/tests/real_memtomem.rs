//! Side by side with a real memtomem 0.6.12: the fake must look the same on disk and to
//! memtomem's own `mm upgrade`.
//!
//! The real `memtomem-server` and `mm` come from `MEMTOMEM_SERVER_BIN` (and the `mm` next
//! to it) when that is set; otherwise each test installs memtomem==0.6.12 with real uv
//! into a scratch tool dir (`scripts/install-memtomem.sh`, offline from the warm cache,
//! which `scripts/memtomem-env.sh` prepares on first use). A failed setup fails the test
//! with its message; nothing is skipped.
//!
//! Real and fake each get a scratch runtime dir through memtomem's own test override
//! (`_MEMTOMEM_TEST_RUNTIME_DIR` with `PYTEST_CURRENT_TEST` set), which both honour, so
//! these tests never touch `/tmp/memtomem-<euid>` and run in parallel with anything.

mod common;
#[path = "real_memtomem/support.rs"]
mod support;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use support::*;

#[test]
fn default_mode_matches_a_real_memtomem_server() {
    let real = Real::get();
    let sb = Sandbox::new();
    let (rt_real, rt_fake) = (sb.path("rt-real"), sb.path("rt-fake"));

    let mut r = spawn_with_override(&real.server, &[], &sb, &rt_real, "real");
    wait_pid_file(&mut r, &rt_real, Duration::from_secs(30));
    let real_shape = shape(&rt_real, r.pid());

    let mut f = spawn_fake(&sb, &rt_fake, "fake", &[]);
    wait_pid_file(&mut f, &rt_fake, Duration::from_secs(10));
    let fake_shape = shape(&rt_fake, f.pid());

    assert_eq!(fake_shape.pid_file_name, real_shape.pid_file_name);
    assert!(real_shape.payload_ok && fake_shape.payload_ok);
    assert_eq!(fake_shape.pid_mode, real_shape.pid_mode);
    assert_eq!(fake_shape.rt_mode, real_shape.rt_mode);
    assert_eq!(fake_shape.marker_mode, real_shape.marker_mode);
    assert_eq!((fake_shape.marker_len, real_shape.marker_len), (0, 0));
    assert_eq!(fake_shape.marker_digest, real_shape.marker_digest);
    assert!(real_shape.marker_pid_matches && fake_shape.marker_pid_matches);
    assert_eq!(fake_shape.rt_entries, real_shape.rt_entries);

    // Same SIGTERM outcome: exit 0, own files gone.
    for p in [&mut r, &mut f] {
        kill(p.pid(), libc::SIGTERM);
        assert_eq!(p.wait_exit(Duration::from_secs(5)).unwrap().code(), Some(0));
    }
    assert_eq!(list(&rt_fake), list(&rt_real));
    assert!(list(&rt_real.join("presence")).is_empty());
}

/// The MCP exchange of a client, with the raw answer lines (for the envelope's key order).
fn mcp_session(p: &mut Proc, mcp: &Mcp) -> Vec<(String, Value)> {
    let msgs = [
        rpc(0, "ping"),
        initialize(1, "2025-06-18"),
        serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        rpc(2, "ping"),
        initialize(3, "1999-01-01"),
        rpc(4, "bogus/x"),
        rpc(5, "tools/list"),
    ];
    for m in &msgs {
        Mcp::send(p, m);
    }
    (0..6)
        .map(|i| {
            // The real server needs its Python imports first (about 1.5 s).
            let raw = mcp
                .recv_raw(Duration::from_secs(60))
                .unwrap_or_else(|| panic!("pid {}: no answer #{i}: {}", p.pid(), p.stderr_text()));
            let v: Value = serde_json::from_str(&raw).unwrap();
            assert_eq!(v["id"], i, "answers come in order: {raw}");
            (raw, v)
        })
        .collect()
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

#[test]
fn mcp_answers_match_a_real_memtomem_server() {
    let real = Real::get();
    let sb = Sandbox::new();
    let (mut r, rmcp) =
        spawn_mcp_with_override(&real.server, &[], &sb, &sb.path("rt-real"), "real");
    let (mut f, fmcp) =
        spawn_mcp_with_override(Path::new(BIN), &[], &sb, &sb.path("rt-fake"), "fake");
    let real_answers = mcp_session(&mut r, &rmcp);
    let fake_answers = mcp_session(&mut f, &fmcp);
    let envelope = |raw: &str| {
        raw[..raw
            .find(r#","result":"#)
            .or(raw.find(r#","error":"#))
            .unwrap()]
            .to_string()
    };
    for ((rraw, rv), (fraw, fv)) in real_answers.iter().zip(&fake_answers) {
        assert_eq!(envelope(fraw), envelope(rraw), "envelope: {fraw} vs {rraw}");
        assert_eq!(keys(fv), keys(rv), "{fv} vs {rv}");
    }
    let [(_, r_ping0), (_, r_init), (_, r_ping2), (_, r_init_unknown), (_, r_bogus), (_, r_tools)] =
        &real_answers[..]
    else {
        unreachable!()
    };
    let [(_, f_ping0), (_, f_init), (_, f_ping2), (_, f_init_unknown), (_, f_bogus), (_, f_tools)] =
        &fake_answers[..]
    else {
        unreachable!()
    };
    assert_eq!(f_ping0, r_ping0);
    assert_eq!(f_ping2, r_ping2);
    // initialize: the same keys, capabilities, serverInfo (name, version, nothing else)
    // and negotiated revision; only the instructions text differs.
    let (ri, fi) = (&r_init["result"], &f_init["result"]);
    assert_eq!(keys(fi), keys(ri), "{fi} vs {ri}");
    assert_eq!(fi["serverInfo"], ri["serverInfo"]);
    assert_eq!(ri["serverInfo"]["version"], VERSION);
    assert_eq!(fi["capabilities"], ri["capabilities"]);
    assert_eq!(fi["protocolVersion"], ri["protocolVersion"]);
    assert!(ri["instructions"].is_string() && fi["instructions"].is_string());
    assert_eq!(
        f_init_unknown["result"]["protocolVersion"], r_init_unknown["result"]["protocolVersion"],
        "the revision offered for an unknown request"
    );
    assert_eq!(f_bogus, r_bogus);
    // tools/list: the fake's one tool is a real one, with a subset of its keys.
    let rt_list = r_tools["result"]["tools"].as_array().unwrap();
    for t in f_tools["result"]["tools"].as_array().unwrap() {
        let same = rt_list
            .iter()
            .find(|x| x["name"] == t["name"])
            .unwrap_or_else(|| panic!("the real server has no tool {}", t["name"]));
        for k in keys(t) {
            assert!(same.get(&k).is_some(), "real {} has no {k}", t["name"]);
        }
        assert_eq!(t["inputSchema"]["type"], same["inputSchema"]["type"]);
    }
    // Then the same EOF shutdown.
    for p in [&mut r, &mut f] {
        p.close_stdin();
        assert_eq!(
            p.wait_exit(Duration::from_secs(10)).unwrap().code(),
            Some(0)
        );
    }
}

// ---------------------------------------------------------------------------
// memtomem's own `mm upgrade` against the fake (issue 2, "done when")

/// fake-uv as `uv` on PATH for memtomem's `mm upgrade`: `uv tool dir` names the real
/// installation's tool dir (`UV_TOOL_DIR`, so extras come from its receipt) and `--bin`
/// its bin dir; installs succeed without writing (`noop`: the real installation may be
/// shared by every test); every call is logged in `uv.log`.
fn fake_uv_on_path(sb: &Sandbox, tools: &Path, c: &mut Command) -> PathBuf {
    let dir = sb.path("uv-bin");
    fs::create_dir_all(&dir).unwrap();
    if fs::symlink_metadata(dir.join("uv")).is_err() {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_fake-uv"), dir.join("uv")).unwrap();
    }
    c.env("FAKE_UV_LOG", sb.path("uv.log"))
        .env("FAKE_UV_BEHAVIOR", "noop")
        .env("XDG_BIN_HOME", tools.join("../bin"))
        .env_remove("UV_TOOL_BIN_DIR");
    dir
}

struct MmRun {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl MmRun {
    fn json(&self) -> Value {
        let lines: Vec<&str> = self.stdout.lines().collect();
        assert_eq!(lines.len(), 1, "one JSON document expected: {self:?}");
        serde_json::from_str(lines[0]).unwrap()
    }
}

impl std::fmt::Debug for MmRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "mm upgrade → {}\n--- stdout\n{}\n--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs memtomem's `mm upgrade ARGS` with the override runtime dir and the stand-in uv,
/// reaping `reap` meanwhile: memtomem's probe counts an unreaped zombie as alive, and an
/// MCP client reaps its server at once.
fn mm_upgrade(
    real: &Real,
    sb: &Sandbox,
    rt: &Path,
    args: &[&str],
    reap: &mut [&mut Proc],
) -> MmRun {
    let (out, err) = (sb.path("mm.stdout"), sb.path("mm.stderr"));
    let mut c = Command::new(&real.mm);
    let uv_dir = fake_uv_on_path(sb, &real.tools, &mut c);
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![uv_dir];
    paths.extend(std::env::split_paths(&path));
    c.arg("upgrade").args(args);
    with_override(&mut c, &sb.home, rt);
    c.env("PATH", std::env::join_paths(paths).unwrap())
        .env("UV_TOOL_DIR", &real.tools)
        .stdin(Stdio::null())
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap());
    let mut child = c.spawn().expect("run mm");
    let start = Instant::now();
    let status = loop {
        for p in reap.iter_mut() {
            p.wait_exit(Duration::ZERO);
        }
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mm upgrade {args:?} did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    MmRun {
        status,
        stdout: fs::read_to_string(&out).unwrap_or_default(),
        stderr: fs::read_to_string(&err).unwrap_or_default(),
    }
}

#[test]
fn memtomem_mm_upgrade_dry_run_lists_the_fake_as_it_lists_a_real_server() {
    let real = Real::get();
    let sb = Sandbox::new();
    let rt = sb.path("rt");
    let args = ["--dry-run", "--json", "-y", "--version", VERSION];

    let mut r = spawn_with_override(&real.server, &[], &sb, &rt, "real");
    let real_pid_file = wait_pid_file(&mut r, &rt, Duration::from_secs(30));
    let run = mm_upgrade(&real, &sb, &rt, &args, &mut []);
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    let mut real_doc = run.json();
    assert_eq!(
        real_doc["would_kill"],
        serde_json::json!([r.pid()]),
        "{run:?}"
    );
    assert_eq!(
        real_doc["would_remove"],
        serde_json::json!([real_pid_file]),
        "{run:?}"
    );
    kill(r.pid(), libc::SIGTERM);
    assert_eq!(
        r.wait_exit(Duration::from_secs(10)).unwrap().code(),
        Some(0)
    );

    let mut f = spawn_fake(&sb, &rt, "fake", &[]);
    let fake_pid_file = wait_pid_file(&mut f, &rt, Duration::from_secs(10));
    let run = mm_upgrade(&real, &sb, &rt, &args, &mut []);
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    let mut fake_doc = run.json();
    assert_eq!(
        fake_doc["would_kill"],
        serde_json::json!([f.pid()]),
        "{run:?}"
    );
    assert_eq!(
        fake_pid_file, real_pid_file,
        "same store, same runtime dir, same pid file"
    );

    // Apart from the pid, the two plans are identical.
    real_doc["would_kill"] = Value::Null;
    fake_doc["would_kill"] = Value::Null;
    assert_eq!(fake_doc, real_doc);
    assert_eq!(fake_doc["ok"], true);
    assert_eq!(fake_doc["inventory_complete"], true);
    assert!(
        f.wait_exit(Duration::ZERO).is_none(),
        "the dry run stopped the fake"
    );
}

/// memtomem's `mm upgrade -y --json --grace 1` over one fake started with `extra`, which
/// must exit 0 having killed that fake (and only it). Returns the sandbox, the fake, its
/// pid file and the run.
fn mm_upgrade_one_fake(extra: &[&str]) -> (Sandbox, Proc, PathBuf, MmRun) {
    let real = Real::get();
    let sb = Sandbox::new();
    let rt = sb.path("rt");
    let mut f = spawn_fake(&sb, &rt, "fake", extra);
    let pid_file = wait_pid_file(&mut f, &rt, Duration::from_secs(10));
    let pid = f.pid();
    let run = mm_upgrade(
        &real,
        &sb,
        &rt,
        &["-y", "--json", "--grace", "1", "--version", VERSION],
        &mut [&mut f],
    );
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    assert_eq!(run.json()["killed"], serde_json::json!([pid]), "{run:?}");
    (sb, f, pid_file, run)
}

#[test]
fn memtomem_mm_upgrade_stops_a_default_fake_with_sigterm() {
    let (sb, mut f, pid_file, run) = mm_upgrade_one_fake(&[]);
    let doc = run.json();
    assert_eq!(doc["ok"], true, "{run:?}");
    assert_eq!(doc["removed"], serde_json::json!([pid_file]), "{run:?}");
    let st = f
        .wait_exit(Duration::from_secs(5))
        .expect("fake still running");
    assert_eq!(st.code(), Some(0), "{st}");
    let ev = f.events();
    assert!(
        ev.iter()
            .any(|e| e["event"] == "signal" && e["signal"] == "SIGTERM"),
        "no SIGTERM in the fake's events: {ev:?}"
    );
    assert_eq!(ev.last().unwrap()["how"], "sigterm-cleanup", "{ev:?}");
    assert!(!pid_file.exists());
    let log = fs::read_to_string(sb.path("uv.log")).unwrap();
    assert!(log.contains(r#""kind":"install""#), "{log}");
}

#[test]
fn memtomem_mm_upgrade_escalates_to_sigkill_for_a_fake_ignoring_sigterm() {
    let (_sb, mut f, pid_file, run) = mm_upgrade_one_fake(&["--mode", "ignore-sigterm"]);
    let st = f
        .wait_exit(Duration::from_secs(5))
        .expect("fake still running");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st}");
    // SIGKILL leaves the pid file stale; memtomem removed it under its lock.
    assert!(!pid_file.exists(), "{run:?}");
}

// ---------------------------------------------------------------------------
// fake-uv's installation against real uv's

/// Every path under `dir` (relative, sorted); symlinks are not followed.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, d: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let is_dir = fs::symlink_metadata(&p).unwrap().is_dir();
            out.push(rel.clone());
            if is_dir {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn cfg_keys(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k.to_string()))
        .collect()
}

#[test]
fn fake_uv_lays_out_an_installation_shaped_like_real_uvs() {
    let real = Real::get();
    let real_env = real.tools.join("memtomem");
    let real_receipt: toml::Table =
        toml::from_str(&fs::read_to_string(real_env.join("uv-receipt.toml")).unwrap()).unwrap();
    let sb = Sandbox::new();
    let (tools, bin) = (sb.path("tools"), sb.path("bin"));
    let mut args = vec!["tool", "install"];
    // Real uv recorded the interpreter it was told to use (UV_PYTHON): pass the same.
    let python = real_receipt["tool"].get("python").and_then(|p| p.as_str());
    if let Some(p) = python {
        args.extend(["--python", p]);
    }
    let spec = format!("memtomem=={VERSION}");
    args.push(&spec);
    let out = Command::new(env!("CARGO_BIN_EXE_fake-uv"))
        .args(&args)
        .env("UV_TOOL_DIR", &tools)
        .env("UV_TOOL_BIN_DIR", &bin)
        .env("FAKE_UV_TOOL_DIR", &tools)
        .env("FAKE_UV_SERVER_BIN", BIN)
        .env("HOME", &sb.home)
        .env_remove("FAKE_UV_BEHAVIOR")
        .env_remove("FAKE_UV_MANAGED_PIDS")
        .env_remove("FAKE_UV_LOG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let env = tools.join("memtomem");
    let receipt: toml::Table =
        toml::from_str(&fs::read_to_string(env.join("uv-receipt.toml")).unwrap()).unwrap();

    // The receipt: the same tables and keys, requirements and python; entry points with
    // the same names and origin, each installed in its own bin dir.
    let (rt, ft) = (&real_receipt["tool"], &receipt["tool"]);
    let keys = |t: &toml::Value| -> Vec<String> { t.as_table().unwrap().keys().cloned().collect() };
    assert_eq!(keys(ft), keys(rt));
    assert_eq!(ft["requirements"], rt["requirements"]);
    assert_eq!(ft.get("python"), rt.get("python"));
    let entries = |t: &toml::Value, bin: Option<&Path>| -> Vec<(String, String, String)> {
        let list = t["entrypoints"].as_array().unwrap();
        let bin = bin.map(Path::to_path_buf).unwrap_or_else(|| {
            let first = Path::new(list[0]["install-path"].as_str().unwrap());
            first.parent().unwrap().to_path_buf()
        });
        list.iter()
            .map(|e| {
                assert_eq!(keys(e), ["from", "install-path", "name"], "{e}");
                let path = Path::new(e["install-path"].as_str().unwrap());
                assert_eq!(path.parent(), Some(bin.as_path()), "{e}");
                (
                    e["name"].as_str().unwrap().to_string(),
                    path.file_name().unwrap().to_string_lossy().into_owned(),
                    e["from"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(entries(ft, Some(&bin)), entries(rt, None));

    // The environment: everything fake-uv writes is where real uv puts it.
    let real_tree = tree(&real_env);
    for p in tree(&env) {
        assert!(
            real_tree.contains(&p),
            "fake-uv wrote {p}, which real uv does not"
        );
    }
    for p in [
        "bin/python",
        "bin/python3",
        "bin/python3.12",
        "lib64",
        "pyvenv.cfg",
    ] {
        assert!(env.join(p).exists() && real_env.join(p).exists(), "{p}");
    }
    assert_eq!(
        cfg_keys(&env.join("pyvenv.cfg")),
        cfg_keys(&real_env.join("pyvenv.cfg"))
    );
    assert_eq!(
        fs::read_to_string(env.join(".gitignore")).unwrap(),
        fs::read_to_string(real_env.join(".gitignore")).unwrap()
    );
    // Console scripts name their environment's python: real uv in the shebang, fake-uv in
    // a comment on the second line.
    for n in ["memtomem", "memtomem-server", "memtomem-web", "mm"] {
        let real_script = fs::read_to_string(real_env.join("bin").join(n)).unwrap();
        assert_eq!(
            real_script.lines().next(),
            Some(format!("#!{}", real_env.join("bin/python").display()).as_str())
        );
        let fake_script = fs::read_to_string(env.join("bin").join(n)).unwrap();
        assert_eq!(
            fake_script.lines().nth(1),
            Some(format!("# python: {}", env.join("bin/python").display()).as_str())
        );
        assert_eq!(
            fs::read_link(bin.join(n)).unwrap(),
            env.join("bin").join(n),
            "{n}"
        );
    }
}
