//! `fake-uv`: a stand-in for `uv` used by the scenario suite (`tests/scenarios.rs`).
//!
//! The scenario runner installs this binary as `uv` in the sandbox's `bin/` (first on
//! `PATH`) and steers it through the environment:
//!
//! | variable | meaning |
//! |---|---|
//! | `FAKE_UV_LOG` | JSON-lines file; one line appended per call (argv, kind, env, managed pids alive, ts/mono_ns, result) |
//! | `FAKE_UV_TOOL_DIR` | the sandbox's *real* uv tool dir; a call whose `UV_TOOL_DIR` differs is a *prepare* call |
//! | `FAKE_UV_MANAGED_PIDS` | file with one pid per line: the old-generation server processes; an install while any of them is alive (and not a zombie) fails with exit 97 |
//! | `FAKE_UV_BEHAVIOR` | what the real install does: `succeed` (default), `fail:CODE:STDERR`, `hang`, `sleep:MS` (then succeed), `delete-env-then-fail`, `broken-entry` (installs, but `memtomem-server` exits 1), `unresolvable` (the version does not exist: exit 1 with uv's resolver message) |
//! | `FAKE_UV_SERVER_BIN` | the fake-server binary; installs link `<UV_TOOL_BIN_DIR>/memtomem-server` to it (else a script that exits 0) |
//! | `FAKE_UV_PREPARE` | what a prepare call does: `succeed` (default), `fail` (version cannot be resolved, exit 1), `hang`, `sleep:MS` |
//! | `FAKE_UV_DIR` | what `uv tool dir` does: `succeed` (default), `fail` |
//! | `FAKE_UV_CACHE` | a directory standing for uv's cache: prepare records `memtomem-<V>` there; an `--offline` install of a V not in it fails like uv does |
//! | `FAKE_UV_LATEST` | the version a request without `==V` resolves to (default `0.7.0`) |
//!
//! Kinds of call: `dir` (`uv tool dir [--bin]`), `prepare`, `install`, `other`.
//! Exit codes: 0 ok, 1 generic failure / unresolvable version, 2 usage, 97 install while a
//! managed server is alive, otherwise as configured.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

const EXIT_MANAGED_ALIVE: i32 = 97;

fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn now_ts() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Process state letter from /proc/<pid>/stat, None if the process is gone.
fn proc_state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rfind(')')?;
    stat[after + 1..].trim_start().chars().next()
}

fn managed_alive() -> Vec<i32> {
    let Ok(path) = std::env::var("FAKE_UV_MANAGED_PIDS") else {
        return vec![];
    };
    let Ok(text) = fs::read_to_string(path) else {
        return vec![];
    };
    text.split_whitespace()
        .filter_map(|s| s.parse::<i32>().ok())
        .filter(|&pid| pid > 1)
        .filter(|&pid| matches!(proc_state(pid), Some(s) if s != 'Z' && s != 'X'))
        .collect()
}

fn log(record: &Value) {
    if let Ok(path) = std::env::var("FAKE_UV_LOG") {
        if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(path) {
            let mut line = record.to_string();
            line.push('\n');
            // One write(2) per line: O_APPEND keeps concurrent writers from interleaving.
            let _ = f.write_all(line.as_bytes());
        }
    }
}

struct Call {
    argv: Vec<String>,
    kind: &'static str,
    tool_dir: Option<String>,
    bin_dir: Option<String>,
    managed_alive: Vec<i32>,
    start_mono: u64,
    start_ts: f64,
}

impl Call {
    fn finish(&self, code: i32, note: &str) -> ! {
        log(&json!({
            "event": "call",
            "kind": self.kind,
            "argv": self.argv,
            "uv_tool_dir": self.tool_dir,
            "uv_tool_bin_dir": self.bin_dir,
            "managed_alive": self.managed_alive,
            "pid": std::process::id(),
            "ts": self.start_ts,
            "mono_ns": self.start_mono,
            "end_mono_ns": mono_ns(),
            "exit_code": code,
            "note": note,
        }));
        std::process::exit(code)
    }
}

/// Package spec from the argv: the last argument starting with "memtomem" that is not
/// the value of an option (`--reinstall-package memtomem`, `--with ...`).
fn spec(argv: &[String]) -> Option<&str> {
    let takes_value = [
        "--reinstall-package",
        "--upgrade-package",
        "--with",
        "--from",
        "--python",
        "-p",
        "--index",
        "--index-url",
        "--constraints",
        "-c",
        "--overrides",
    ];
    let mut found = None;
    let mut skip = false;
    for a in argv.iter().skip(3) {
        if skip {
            skip = false;
            continue;
        }
        if takes_value.contains(&a.as_str()) {
            skip = true;
            continue;
        }
        if a.starts_with("memtomem") {
            found = Some(a.as_str());
        }
    }
    found
}

/// Split `memtomem[a,b]==1.2` into (extras, version).
fn parse_spec(spec: &str) -> (Vec<String>, Option<String>) {
    let (name_part, version) = match spec.split_once("==") {
        Some((n, v)) => (n, Some(v.to_string())),
        None => (spec, None),
    };
    let extras = match (name_part.find('['), name_part.find(']')) {
        (Some(a), Some(b)) if b > a => name_part[a + 1..b]
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        _ => vec![],
    };
    (extras, version)
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// Put the entry points into the bin dir: `memtomem-server` is the fake server (when
/// `FAKE_UV_SERVER_BIN` names it), or a script that exits with `code`.
fn write_bin(bin_dir: Option<&str>, broken: bool) -> std::io::Result<()> {
    let Some(bin) = bin_dir else { return Ok(()) };
    let bin = Path::new(bin);
    fs::create_dir_all(bin)?;
    for name in ["memtomem-server", "mm"] {
        let p = bin.join(name);
        let _ = fs::remove_file(&p);
        match std::env::var("FAKE_UV_SERVER_BIN") {
            Ok(server) if !broken && name == "memtomem-server" => {
                std::os::unix::fs::symlink(server, &p)?
            }
            _ => {
                let body = if broken {
                    "#!/bin/sh\necho 'ModuleNotFoundError: No module named memtomem' >&2\nexit 1\n"
                } else {
                    "#!/bin/sh\nexit 0\n"
                };
                fs::write(&p, body)?;
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&p, fs::Permissions::from_mode(0o755))?;
            }
        }
    }
    Ok(())
}

/// Lay out `<tool_dir>/memtomem/` as uv would: a receipt and a dist-info for `version`.
fn write_env(tool_dir: &Path, extras: &[String], version: &str) -> std::io::Result<()> {
    let env = tool_dir.join("memtomem");
    if env.exists() {
        fs::remove_dir_all(&env)?;
    }
    let site = env.join("lib").join("python3.12").join("site-packages");
    let dist = site.join(format!("memtomem-{version}.dist-info"));
    fs::create_dir_all(&dist)?;
    fs::write(
        dist.join("METADATA"),
        format!("Metadata-Version: 2.1\nName: memtomem\nVersion: {version}\n"),
    )?;
    let extras_part = if extras.is_empty() {
        String::new()
    } else {
        format!(
            ", extras = [{}]",
            extras
                .iter()
                .map(|e| toml_str(e))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    fs::write(
        env.join("uv-receipt.toml"),
        format!(
            "[tool]\nrequirements = [{{ name = \"memtomem\"{extras_part}, specifier = {} }}]\n\
             entrypoints = [\n    {{ name = \"mm\", install-path = \"mm\", from = \"memtomem\" }},\n    \
             {{ name = \"memtomem-server\", install-path = \"memtomem-server\", from = \"memtomem\" }},\n]\n\n\
             [tool.options]\nexclude-newer-package = {{}}\n",
            toml_str(&format!("=={version}"))
        ),
    )?;
    Ok(())
}

fn sleep_ms(spec: &str) {
    let ms: u64 = spec.parse().unwrap_or(0);
    std::thread::sleep(Duration::from_millis(ms));
}

fn hang() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let tool_dir = std::env::var("UV_TOOL_DIR").ok();
    let bin_dir = std::env::var("UV_TOOL_BIN_DIR").ok();
    let real_tool_dir = std::env::var("FAKE_UV_TOOL_DIR").ok();
    let rest: Vec<&str> = argv.iter().skip(1).map(String::as_str).collect();

    let kind = match rest.as_slice() {
        ["tool", "dir", ..] => "dir",
        ["tool", "install", ..] => {
            if tool_dir.is_some() && real_tool_dir.is_some() && tool_dir != real_tool_dir {
                "prepare"
            } else {
                "install"
            }
        }
        _ => "other",
    };
    let call = Call {
        argv: argv.clone(),
        kind,
        tool_dir: tool_dir.clone(),
        bin_dir: bin_dir.clone(),
        managed_alive: managed_alive(),
        start_mono: mono_ns(),
        start_ts: now_ts(),
    };

    match kind {
        "dir" => {
            if std::env::var("FAKE_UV_DIR").as_deref() == Ok("fail") {
                eprintln!("error: fake-uv: tool dir failed");
                call.finish(2, "dir failed");
            }
            let out = if rest.contains(&"--bin") {
                bin_dir.clone().or_else(|| {
                    std::env::var("HOME")
                        .ok()
                        .map(|h| format!("{h}/.local/bin"))
                })
            } else {
                tool_dir.clone().or_else(|| {
                    std::env::var("HOME")
                        .ok()
                        .map(|h| format!("{h}/.local/share/uv/tools"))
                })
            };
            println!("{}", out.unwrap_or_default());
            call.finish(0, "");
        }
        "prepare" | "install" => {}
        _ => {
            eprintln!("error: fake-uv does not implement {:?}", rest);
            call.finish(2, "unsupported");
        }
    }

    let Some(spec) = spec(&argv) else {
        eprintln!("error: fake-uv: no memtomem package spec in {:?}", rest);
        call.finish(2, "no spec");
    };
    let (extras, version) = parse_spec(spec);
    let latest = std::env::var("FAKE_UV_LATEST").unwrap_or_else(|_| "0.7.0".into());
    let version = version.unwrap_or(latest);
    let target_dir = PathBuf::from(
        tool_dir
            .clone()
            .or_else(|| {
                std::env::var("HOME")
                    .ok()
                    .map(|h| format!("{h}/.local/share/uv/tools"))
            })
            .unwrap_or_default(),
    );

    if rest.contains(&"--offline") && rest.contains(&"--refresh") {
        eprintln!("error: the argument '--offline' cannot be used with '--refresh'");
        call.finish(2, "offline with refresh");
    }
    let cache = std::env::var("FAKE_UV_CACHE").ok().map(PathBuf::from);
    let cache_entry = cache
        .as_ref()
        .map(|c| c.join(format!("memtomem-{version}")));

    if kind == "prepare" {
        let behavior = std::env::var("FAKE_UV_PREPARE").unwrap_or_else(|_| "succeed".into());
        match behavior
            .split_once(':')
            .map(|(a, b)| (a, Some(b)))
            .unwrap_or((&behavior, None))
        {
            ("fail", _) => {
                eprintln!(
                    "  × No solution found when resolving tool dependencies:\n  ╰─▶ Because there is no version of memtomem=={version} and you require memtomem=={version}, we can conclude that your requirements are unsatisfiable."
                );
                call.finish(1, "prepare failed");
            }
            ("hang", _) => hang(),
            ("sleep", Some(ms)) => sleep_ms(ms),
            _ => {}
        }
        if let Err(e) = write_env(&target_dir, &extras, &version) {
            eprintln!("error: fake-uv: cannot write {}: {e}", target_dir.display());
            call.finish(2, "write failed");
        }
        if let Some(entry) = &cache_entry {
            let _ = fs::create_dir_all(entry);
        }
        let _ = write_bin(bin_dir.as_deref(), false);
        eprintln!("Resolved 1 package\nInstalled 1 executable: memtomem-server");
        call.finish(0, "prepared");
    }

    // The real install.
    if !call.managed_alive.is_empty() {
        eprintln!(
            "fake-uv: MANAGED SERVER STILL ALIVE during install: pids {:?}",
            call.managed_alive
        );
        call.finish(EXIT_MANAGED_ALIVE, "managed server alive");
    }
    if rest.contains(&"--offline") {
        if let Some(entry) = &cache_entry {
            if !entry.exists() {
                eprintln!(
                    "  × No solution found when resolving tool dependencies:\n  ╰─▶ Because memtomem=={version} was not found in the cache and you require memtomem=={version}, we can conclude that your requirements are unsatisfiable.\n\n      hint: Packages were unavailable because the network was disabled."
                );
                call.finish(1, "offline without prepared cache");
            }
        }
    }
    let behavior = std::env::var("FAKE_UV_BEHAVIOR").unwrap_or_else(|_| "succeed".into());
    let mut parts = behavior.splitn(3, ':');
    match parts.next().unwrap_or("succeed") {
        "fail" => {
            let code: i32 = parts.next().and_then(|c| c.parse().ok()).unwrap_or(2);
            let msg = parts.next().unwrap_or("fake uv stderr line");
            eprintln!("{msg}");
            call.finish(code, "configured failure");
        }
        "unresolvable" => {
            eprintln!(
                "  × No solution found when resolving tool dependencies:\n  ╰─▶ Because there is no version of memtomem=={version} and you require memtomem=={version}, we can conclude that your requirements are unsatisfiable."
            );
            call.finish(1, "version cannot be resolved");
        }
        "hang" => hang(),
        "sleep" => sleep_ms(parts.next().unwrap_or("0")),
        "broken-entry" => {
            if let Err(e) = write_env(&target_dir, &extras, &version)
                .and_then(|_| write_bin(bin_dir.as_deref(), true))
            {
                eprintln!("error: fake-uv: cannot write {}: {e}", target_dir.display());
                call.finish(2, "write failed");
            }
            eprintln!("Installed 1 executable: memtomem-server");
            call.finish(0, "installed a broken entry point");
        }
        "delete-env-then-fail" => {
            let _ = fs::remove_dir_all(target_dir.join("memtomem"));
            eprintln!(
                "error: Failed to install entrypoints (fake-uv deleted the tool environment)"
            );
            call.finish(2, "deleted env then failed");
        }
        _ => {}
    }
    if let Err(e) = write_env(&target_dir, &extras, &version) {
        eprintln!("error: fake-uv: cannot write {}: {e}", target_dir.display());
        call.finish(2, "write failed");
    }
    if let Err(e) = write_bin(bin_dir.as_deref(), false) {
        eprintln!("error: fake-uv: cannot write the entry points: {e}");
        call.finish(2, "write failed");
    }
    eprintln!("Installed 1 executable: memtomem-server");
    call.finish(0, "installed");
}
