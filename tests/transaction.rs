//! The upgrade as a transaction, against real uv and real memtomem 0.6.11 →
//! 0.6.12 (issue 9): the staged env is what uv would have installed at the
//! real path, the user's choices survive, a crash at any step boundary ends
//! with one complete installation, a release that fails its proof changes
//! nothing, and a downgrade the store cannot survive is refused.
//!
//! Each test has its own scratch HOME, tool and bin dirs and runtime dir
//! (`--runtime-dir`), so none touches the real `/tmp/memtomem-<uid>`; the
//! fault points need the `fault-points` feature (test builds only).
#![cfg(all(feature = "real-memtomem", feature = "fault-points"))]

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/scratch.rs"]
mod scratch;
#[path = "common/testenv.rs"]
mod testenv;
use scratch::{Run, Scratch};

const OLD: &str = "0.6.11";
const NEW: &str = "0.6.12";
/// A dependency of memtomem, so it is in the warm cache: the `--with`
/// package of these tests.
const WITH: &str = "watchdog";

fn old_with_extra_package() -> Scratch {
    let sc = Scratch::with(OLD);
    sc.install(OLD, &["--reinstall", "--with", WITH]);
    sc
}

/// `mm-upgrade ARGS` confined to the scratch dirs (runtime dir included).
fn upgrade(sc: &Scratch, args: &[&str], fault: Option<&str>) -> Run {
    upgrade_with_uv(sc, args, fault, &testenv::uv())
}

fn upgrade_with_uv(sc: &Scratch, args: &[&str], fault: Option<&str>, uv: &Path) -> Run {
    let rt = sc.path("rt");
    fs::create_dir_all(&rt).unwrap();
    fs::set_permissions(&rt, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_mm-upgrade"));
    sc.env(&mut c);
    c.env("MM_UPGRADE_UV", uv)
        .arg("--runtime-dir")
        .arg(&rt)
        .arg("--home")
        .arg(&sc.home)
        .args(args);
    if let Some(f) = fault {
        c.env("MM_UPGRADE_FAULT", f);
    }
    Run::of(c, args)
}

fn uv_tool_list(sc: &Scratch) -> (String, String) {
    let mut c = Command::new(testenv::uv());
    sc.env(&mut c);
    let out = c
        .args(["tool", "list"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "uv tool list failed");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Start the installed memtomem-server (scratch HOME and runtime dir), send
/// MCP `initialize`, return `serverInfo.version`. Its process group is
/// killed on return, panics included.
fn server_version(sc: &Scratch) -> String {
    struct Group(std::process::Child);
    impl Drop for Group {
        fn drop(&mut self) {
            // SAFETY: the group was created for this launch.
            unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
            let _ = self.0.wait();
        }
    }
    let rt = sc.path("server-rt");
    fs::create_dir_all(&rt).unwrap();
    // memtomem refuses a runtime dir with group or world bits.
    fs::set_permissions(&rt, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let mut c = Command::new(sc.bin.join("memtomem-server"));
    sc.env(&mut c);
    // The runtime dir override needs PYTEST_CURRENT_TEST (memtomem's hook).
    c.env("_MEMTOMEM_TEST_RUNTIME_DIR", &rt)
        .env("PYTEST_CURRENT_TEST", "transaction.rs (call)")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
    let mut server = Group(c.spawn().expect("start memtomem-server"));
    let mut stdin = server.0.stdin.take().unwrap();
    writeln!(stdin, r#"{{"jsonrpc":"2.0","id":1,"method":"initialize","params":{{"protocolVersion":"2025-06-18","capabilities":{{}},"clientInfo":{{"name":"t","version":"0"}}}}}}"#).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = server.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("memtomem-server answered initialize within 60 s");
        let v: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(_) => continue,
        };
        if v["id"] == 1 {
            drop(stdin);
            return v["result"]["serverInfo"]["version"]
                .as_str()
                .unwrap_or("")
                .to_string();
        }
    }
}

fn receipt_text(sc: &Scratch) -> String {
    String::from_utf8(sc.receipt()).unwrap()
}

/// Text files (no NUL in the first 8 KiB) under `dir` whose bytes contain `needle`.
fn text_files_naming(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() && e.path().extension().is_none_or(|x| x != "pyc") {
                let bytes = fs::read(e.path()).unwrap();
                let head = &bytes[..bytes.len().min(8192)];
                if !head.contains(&0) && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
                {
                    hits.push(e.path());
                }
            }
        }
    }
    hits
}

#[test]
fn the_switched_env_is_what_uv_installs_at_the_real_path_with_the_users_choices() {
    let sc = old_with_extra_package();
    let run = upgrade(&sc, &["-y", "--json", "--version", NEW], None);
    run.expect(0);
    let doc = run.json();
    assert_eq!(doc["version"], NEW, "{run}");
    assert_eq!(doc["proof"]["initialize"]["version"], NEW, "{run}");
    assert_eq!(sc.installed_versions(), vec![NEW]);
    assert!(
        !sc.tools.join(".mm-upgrade").exists(),
        "staging dir left behind"
    );

    // The receipt is the one uv writes for the same user command, in
    // another tool dir (only the dir names differ).
    let other = Scratch::with(OLD);
    other.install(NEW, &["--reinstall", "--with", WITH]);
    let ours = receipt_text(&sc).replace(&sc.dir.path().display().to_string(), "<D>");
    let theirs = receipt_text(&other).replace(&other.dir.path().display().to_string(), "<D>");
    assert_eq!(ours, theirs);
    assert!(ours.contains(WITH), "{ours}");

    // No text file of the switched env names the staging path.
    let hits = text_files_naming(&sc.env_dir(), ".mm-upgrade");
    assert!(hits.is_empty(), "files naming the staging path: {hits:?}");

    // Bytecode was compiled before the switch (by the proof's handshake, for
    // what a server start imports); stored code objects may name the
    // staging path, but loaded ones name the real env.
    let probe = r#"
import glob, inspect, marshal, sys, memtomem.server as m
pycs = glob.glob(sys.prefix + "/lib/python3.12/site-packages/memtomem/**/*.pyc", recursive=True)
stored = [marshal.loads(open(p, "rb").read()[16:]).co_filename for p in pycs]
f = next(v for v in vars(m).values() if inspect.isfunction(v) and v.__module__ == m.__name__)
print(len(pycs)); print(sum(".mm-upgrade" in s for s in stored) > 0); print(f.__code__.co_filename)
"#;
    let out = Command::new(sc.env_dir().join("bin/python"))
        .args(["-c", probe])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        lines[0].parse::<usize>().unwrap() > 50,
        "too few .pyc: {text}"
    );
    assert_eq!(
        lines[1], "True",
        "the .pyc were not written by the staged proof"
    );
    assert!(
        lines[2].starts_with(&sc.env_dir().display().to_string()),
        "{text}"
    );
    assert_eq!(server_version(&sc), NEW);
}

#[test]
fn an_unpinned_install_stays_unpinned_and_keeps_its_with_package() {
    let sc = Scratch::with(NEW);
    // `uv tool install memtomem --with watchdog`: no specifier at all.
    let mut c = Command::new(testenv::uv());
    sc.env(&mut c);
    let st = c
        .args([
            "tool",
            "install",
            "--offline",
            "--reinstall",
            "memtomem",
            "--with",
            WITH,
        ])
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    assert!(!receipt_text(&sc).contains("specifier = \"=="));
    // --reinstall: PyPI's latest may be the installed version, and the
    // receipt must come from a real staged install either way.
    let run = upgrade(&sc, &["-y", "--json", "--reinstall"], None);
    run.expect(0);
    assert!(run.json()["staged"]["version"].is_string(), "{run}");
    let r = receipt_text(&sc);
    assert!(
        r.contains("{ name = \"memtomem\" }"),
        "pinned by the upgrade: {r}"
    );
    assert!(
        r.contains(&format!("{{ name = \"{WITH}\" }}")),
        "--with lost: {r}"
    );
}

/// Every step boundary the upgrader passes, in order.
const FAULT_POINTS: &[&str] = &[
    "staged",
    "relocated",
    "stopped",
    "switching",
    "exchanged",
    "linked",
    "checked",
    "committed",
];

#[test]
fn a_crash_at_every_step_boundary_ends_with_one_complete_installation() {
    let mut outcomes = Vec::new();
    for point in FAULT_POINTS {
        let sc = old_with_extra_package();
        let crashed = upgrade(&sc, &["-y", "--version", NEW], Some(point));
        assert_eq!(crashed.code, -1, "no SIGKILL at {point}: {crashed}");
        // Killed mid-way, the installation is already complete: old or new.
        let versions = sc.installed_versions();
        assert_eq!(versions.len(), 1, "{point}: {versions:?}");
        assert!(sc.server_bin().exists(), "{point}: entry point missing");

        // `status` sees the interrupted transaction; `recover` resolves it.
        let status = upgrade(&sc, &["status"], None);
        let pending = status.stdout.contains("interrupted upgrade")
            || status.stderr.contains("interrupted upgrade");
        let rec = upgrade(&sc, &["recover", "--json"], None);
        rec.expect(0);
        let outcome = rec.json()["recovered"]
            .as_str()
            .unwrap_or("none")
            .to_string();
        assert!(!sc.tools.join(".mm-upgrade").exists(), "{point}: {rec}");
        let versions = sc.installed_versions();
        assert_eq!(versions.len(), 1, "{point}: {versions:?}");
        let (list, warnings) = uv_tool_list(&sc);
        assert!(
            list.contains(&format!("memtomem v{}", versions[0])),
            "{point}: {list}"
        );
        assert!(!warnings.contains("Ignoring"), "{point}: {warnings}");
        let receipt = receipt_text(&sc);
        assert!(receipt.contains(WITH), "{point}: --with lost: {receipt}");
        assert_eq!(server_version(&sc), versions[0], "{point}");

        // And the next run finishes the job.
        upgrade(&sc, &["-y", "--version", NEW], None).expect(0);
        assert_eq!(sc.installed_versions(), vec![NEW], "{point}");
        outcomes.push(format!(
            "{point}: {} → {outcome} (pending seen: {pending})",
            versions[0]
        ));
    }
    eprintln!(
        "crash cases, all complete afterwards ({}):\n  {}",
        outcomes.len(),
        outcomes.join("\n  ")
    );
    assert_eq!(outcomes.len(), FAULT_POINTS.len());
}

#[test]
fn a_release_that_fails_its_proof_changes_nothing() {
    let sc = old_with_extra_package();
    // Real uv, then the staged env loses its server module: the release
    // installs but cannot run.
    let wrapper = sc.path("uv-breaks-staging");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n\"{}\" \"$@\" || exit $?\ncase \"$UV_TOOL_DIR\" in */.mm-upgrade/*) rm -rf \"$UV_TOOL_DIR\"/memtomem/lib/python3.12/site-packages/memtomem/server* ;; esac\n",
            testenv::uv().display()
        ),
    )
    .unwrap();
    fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let before = sc.receipt();
    let run = upgrade_with_uv(&sc, &["-y", "--json", "--version", NEW], None, &wrapper);
    run.expect(5);
    let err = run.json()["error"].as_str().unwrap().to_string();
    assert!(
        err.contains("failed its proof") && err.contains("Nothing was stopped"),
        "{err}"
    );
    assert_eq!(sc.installed_versions(), vec![OLD]);
    assert_eq!(sc.receipt(), before);
    assert!(!sc.tools.join(".mm-upgrade").exists());
    assert_eq!(server_version(&sc), OLD);
}

#[test]
fn the_installed_version_is_a_no_op_that_stops_nothing() {
    let sc = Scratch::with(NEW);
    let before = sc.receipt();
    let run = upgrade(&sc, &["-y", "--json", "--version", NEW], None);
    run.expect(0);
    assert_eq!(run.json()["up_to_date"], true, "{run}");
    assert_eq!(sc.receipt(), before);
    assert!(!sc.tools.join(".mm-upgrade").exists());
}

#[test]
fn a_downgrade_the_store_cannot_survive_is_refused() {
    let sc = Scratch::with(NEW);
    let db = sc.home.join(".memtomem/memtomem.db");
    fs::create_dir_all(db.parent().unwrap()).unwrap();
    let st = Command::new(sc.env_dir().join("bin/python"))
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('create table _memtomem_meta (key text primary key, value text)'); c.execute(\"insert into _memtomem_meta values ('schema_version','99')\"); c.commit()",
        ])
        .arg(&db)
        .status()
        .unwrap();
    assert!(st.success());
    let run = upgrade(&sc, &["-y", "--json", "--version", OLD], None);
    run.expect(3);
    let err = run.json()["error"].as_str().unwrap().to_string();
    assert!(
        err.contains(NEW) && err.contains(OLD) && err.contains("99"),
        "{err}"
    );
    assert_eq!(sc.installed_versions(), vec![NEW]);
    assert!(!sc.tools.join(".mm-upgrade").exists());
}
