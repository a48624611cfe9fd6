//! `fake-uv`: a stand-in for `uv` used by the scenario suite (`tests/scenarios.rs`).
//!
//! The scenario runner installs this binary as `uv` in the sandbox's `bin/` (first on
//! `PATH`) and steers it through the environment:
//!
//! | variable | meaning |
//! |---|---|
//! | `FAKE_UV_LOG` | JSON-lines file; one line appended per call (argv, kind, env, managed pids alive, ts/mono_ns, result, and `installed` on success) when it ends; a call that hangs logs its line as it starts hanging, with `exit_code` and `end_mono_ns` null and the note `hanging` |
//! | `FAKE_UV_TOOL_DIR` | the sandbox's *real* uv tool dir. A call whose `UV_TOOL_DIR` is under `$FAKE_UV_TOOL_DIR/.mm-upgrade/` is a *stage* call; one whose `UV_TOOL_DIR` is elsewhere is a *prepare* call |
//! | `FAKE_UV_MANAGED_PIDS` | file with one pid per line: the old-generation server processes; an *install* call while any of them is alive (and not a zombie) fails with exit 97. Stage calls are not checked: staging happens while the old servers run, by design |
//! | `FAKE_UV_BEHAVIOR` | what an install or stage call does: `succeed` (default), `fail:CODE:STDERR`, `hang`, `hang-half-written` (creates `E/lib/python3.12/site-packages`, then hangs), `sleep:MS` (then succeed), `delete-env-then-fail`, `noop` (succeeds, writes nothing), `dangling-entry` (installs, but the receipt's `mm` entry point is neither written nor linked), `broken-entry` (installs, but every entry point prints a `ModuleNotFoundError` and exits 1), `unresolvable` (the version does not exist: exit 1 with uv's resolver message), `broken-python` (installs, but `bin/python` prints `fake python: broken` and exits 1), `wrong-version:V` (installs V whatever was asked: dist-info, `bin/python` and `memtomem-server` all say V) |
//! | `FAKE_UV_SERVER_BIN` | the fake-server binary: the installed `bin/memtomem-server` execs it with `--server-version <V>` (without it, that script exits 0) |
//! | `FAKE_UV_SERVER_ARGS` | more fake-server arguments for that `memtomem-server`, separated by whitespace (no quoting), placed after `--server-version <V>` and before the script's own arguments, e.g. `--mode hang-initialize` |
//! | `FAKE_UV_PREPARE` | what a prepare call does: `succeed` (default), `fail` (version cannot be resolved, exit 1), `hang`, `sleep:MS` |
//! | `FAKE_UV_STAGE_ONLY` | set: every `tool install` that is not a stage call fails with exit 2 (the upgrader must never let uv install in place) |
//! | `FAKE_UV_DIR` | what `uv tool dir` does: `succeed` (default), `fail`, `print:TEXT` (prints TEXT, e.g. nothing or a relative path, instead of the tool dir; `--bin` is unchanged) |
//! | `FAKE_UV_CACHE` | a directory standing for uv's cache: prepare and stage calls record `memtomem-<V>` there; an `--offline` install or stage of a V not in it fails like uv does |
//! | `FAKE_UV_LATEST` | the version a request without `==V` resolves to (default `0.7.0`; ranges such as `>=0.6,<0.7` are not checked against it) |
//!
//! Without `UV_TOOL_DIR` / `UV_TOOL_BIN_DIR`, the dirs are uv's defaults: `$XDG_DATA_HOME/uv/tools`
//! (else `$HOME/.local/share/uv/tools`) and `$XDG_BIN_HOME` (else `$XDG_DATA_HOME/../bin`, else
//! `$HOME/.local/bin`).
//!
//! Kinds of call: `dir` (`uv tool dir [--bin]`), `stage`, `prepare`, `install`, `other`.
//! Exit codes: 0 ok, 1 generic failure / unresolvable version, 2 usage, 97 install while a
//! managed server is alive, otherwise as configured.
//!
//! `tool install [OPTIONS] SPEC` takes options before or after SPEC (`--with REQ`,
//! `--python P`, `--index URL`, `--refresh-package memtomem`, `--compile-bytecode`, ...).
//! SPEC is `memtomem`, `memtomem[a,b]`, `memtomem==V` or `memtomem[a]>=0.6,<0.7`.
//!
//! Every successful install, stage or prepare lays out the tool environment the way uv
//! does, in `$UV_TOOL_DIR/memtomem` (E below), with its entry points linked from the bin
//! dir (B: `$UV_TOOL_BIN_DIR`; else `$UV_TOOL_DIR/.bin` for a stage call and
//! `$HOME/.local/bin`, what `uv tool dir --bin` answers, otherwise):
//!
//! - `E/uv-receipt.toml`: `[tool]` with `requirements` (memtomem with its `extras` if any
//!   and its `specifier` if the SPEC had one, then each `--with`), `python` (only with
//!   `--python`), `entrypoints` (`memtomem`, `memtomem-server`, `memtomem-web`, `mm`, each
//!   with `install-path = "B/<name>"` and `from = "memtomem"`), and `[tool.options]`
//!   `compile-bytecode = true` only with `--compile-bytecode`.
//! - `E/pyvenv.cfg`, `E/lib64 -> lib`, `E/lib/python3.12/site-packages/memtomem-<V>.dist-info/METADATA`
//!   and `E/lib/python3.12/site-packages/memtomem/__init__.py`.
//! - `E/bin/python` (with `python3`, `python3.12` linked to it): a `/bin/sh` script that
//!   ignores its arguments, prints the one line `{"version": "<V>", "missing": [], "schema": null}`
//!   and exits 0. It stands in for the upgrader's metadata probe (`bin/python -I -c …`).
//! - `E/bin/{memtomem,memtomem-server,memtomem-web,mm}`: `/bin/sh` scripts whose second
//!   line is `# python: E/bin/python`, an absolute reference to the environment like a
//!   real console script's shebang, so moving the environment has to rewrite it.
//! - `B/<name>` → `E/bin/<name>` for the four entry points.

mod call;
mod layout;
mod request;
#[allow(dead_code)]
#[path = "../../util.rs"]
mod util;

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use call::{managed_alive, mono_ns, now_ts, Call};
use layout::Layout;
use request::{is_stage, parse_install, Requirement};

const EXIT_MANAGED_ALIVE: i32 = 97;
const PACKAGE: &str = "memtomem";
/// memtomem's console scripts, in the order uv's receipt lists them.
const ENTRY_POINTS: [&str; 4] = ["memtomem", "memtomem-server", "memtomem-web", "mm"];
/// The interpreter directory inside an environment.
const PYTHON_LIB: &str = "lib/python3.12/site-packages";

fn sleep_ms(spec: &str) {
    let ms: u64 = spec.parse().unwrap_or(0);
    std::thread::sleep(Duration::from_millis(ms));
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// uv's default tool dir without `UV_TOOL_DIR`: `$XDG_DATA_HOME/uv/tools`, else
/// `$HOME/.local/share/uv/tools`.
fn default_tool_dir() -> Option<String> {
    env_path("XDG_DATA_HOME")
        .map(|d| d.join("uv/tools"))
        .or_else(|| env_path("HOME").map(|h| h.join(".local/share/uv/tools")))
        .map(|p| p.to_string_lossy().into_owned())
}

/// uv's default bin dir without `UV_TOOL_BIN_DIR`: `$XDG_BIN_HOME`, else
/// `$XDG_DATA_HOME/../bin`, else `$HOME/.local/bin`.
fn default_bin_dir() -> Option<String> {
    env_path("XDG_BIN_HOME")
        .or_else(|| env_path("XDG_DATA_HOME").map(|d| d.join("../bin")))
        .or_else(|| env_path("HOME").map(|h| h.join(".local/bin")))
        .map(|p| p.to_string_lossy().into_owned())
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let tool_dir = std::env::var("UV_TOOL_DIR").ok();
    let bin_dir = std::env::var("UV_TOOL_BIN_DIR").ok();
    let real_tool_dir = std::env::var("FAKE_UV_TOOL_DIR").ok();
    let rest: Vec<&str> = argv.iter().skip(1).map(String::as_str).collect();

    let kind = match rest.as_slice() {
        ["tool", "dir", ..] => "dir",
        ["tool", "install", ..] => match (&tool_dir, &real_tool_dir) {
            (Some(t), Some(r)) if is_stage(t, r) => "stage",
            (Some(t), Some(r)) if t != r => "prepare",
            _ => "install",
        },
        _ => "other",
    };
    let mut call = Call {
        argv: argv.clone(),
        kind,
        tool_dir: tool_dir.clone(),
        bin_dir: bin_dir.clone(),
        managed_alive: managed_alive(),
        start_mono: mono_ns(),
        start_ts: now_ts(),
        installed: None,
    };

    match kind {
        "dir" => {
            if std::env::var("FAKE_UV_DIR").as_deref() == Ok("fail") {
                eprintln!("error: fake-uv: tool dir failed");
                call.finish(2, "dir failed");
            }
            let print = std::env::var("FAKE_UV_DIR").ok();
            let printed = print.as_deref().and_then(|v| v.strip_prefix("print:"));
            if let (Some(text), false) = (printed, rest.contains(&"--bin")) {
                println!("{text}");
                call.finish(0, "printed");
            }
            let out = if rest.contains(&"--bin") {
                bin_dir.clone().or_else(default_bin_dir)
            } else {
                tool_dir.clone().or_else(default_tool_dir)
            };
            println!("{}", out.unwrap_or_default());
            call.finish(0, "");
        }
        "stage" | "prepare" | "install" => {}
        _ => {
            eprintln!("error: fake-uv does not implement {:?}", rest);
            call.finish(2, "unsupported");
        }
    }
    if kind != "stage" && std::env::var_os("FAKE_UV_STAGE_ONLY").is_some() {
        eprintln!(
            "error: fake-uv: uv tool install into {}, not a staging dir (FAKE_UV_STAGE_ONLY)",
            tool_dir.as_deref().unwrap_or("the default tool dir")
        );
        call.finish(2, "not a staging dir");
    }

    let args = parse_install(&argv[3..]);
    let Some(spec) = args.spec.clone() else {
        eprintln!("error: fake-uv: no memtomem package spec in {:?}", rest);
        call.finish(2, "no spec");
    };
    let latest = std::env::var("FAKE_UV_LATEST").unwrap_or_else(|_| "0.7.0".into());
    let asked = spec.pinned().map(str::to_string).unwrap_or(latest);
    let target_dir = PathBuf::from(
        tool_dir
            .clone()
            .or_else(default_tool_dir)
            .unwrap_or_default(),
    );
    let target_bin = PathBuf::from(
        bin_dir
            .clone()
            .or_else(|| {
                (kind == "stage").then(|| target_dir.join(".bin").to_string_lossy().into_owned())
            })
            .or_else(default_bin_dir)
            .unwrap_or_default(),
    );
    let mut requirements = vec![spec.clone()];
    requirements.extend(args.with.iter().map(|w| Requirement::parse(w)));
    let mut lay = Layout {
        tool_dir: &target_dir,
        bin_dir: &target_bin,
        version: &asked,
        requirements,
        python: args.python.as_deref(),
        compile_bytecode: args.compile_bytecode,
        broken_entry: false,
        broken_python: false,
        dangling_entry: false,
    };
    let unresolvable = format!(
        "  × No solution found when resolving tool dependencies:\n  ╰─▶ Because there is no version of {PACKAGE}{s} and you require {PACKAGE}{s}, we can conclude that your requirements are unsatisfiable.",
        s = spec
            .specifier
            .clone()
            .unwrap_or_else(|| format!("=={asked}"))
    );

    if args.offline && args.refresh {
        eprintln!("error: the argument '--offline' cannot be used with '--refresh'");
        call.finish(2, "offline with refresh");
    }
    let cache = std::env::var("FAKE_UV_CACHE").ok().map(PathBuf::from);
    let cache_entry = cache.as_ref().map(|c| c.join(format!("memtomem-{asked}")));

    if kind == "prepare" {
        let behavior = std::env::var("FAKE_UV_PREPARE").unwrap_or_else(|_| "succeed".into());
        match behavior
            .split_once(':')
            .map(|(a, b)| (a, Some(b)))
            .unwrap_or((&behavior, None))
        {
            ("fail", _) => {
                eprintln!("{unresolvable}");
                call.finish(1, "prepare failed");
            }
            ("hang", _) => call.hang(),
            ("sleep", Some(ms)) => sleep_ms(ms),
            _ => {}
        }
        if let Err(e) = lay.write() {
            eprintln!("error: fake-uv: cannot write {}: {e}", target_dir.display());
            call.finish(2, "write failed");
        }
        if let Some(entry) = &cache_entry {
            let _ = fs::create_dir_all(entry);
        }
        call.installed = Some(lay.summary());
        eprintln!("Resolved 1 package\nInstalled 4 executables: memtomem, memtomem-server, memtomem-web, mm");
        call.finish(0, "prepared");
    }

    // The real install, or its staged twin.
    if kind == "install" && !call.managed_alive.is_empty() {
        eprintln!(
            "fake-uv: MANAGED SERVER STILL ALIVE during install: pids {:?}",
            call.managed_alive
        );
        call.finish(EXIT_MANAGED_ALIVE, "managed server alive");
    }
    if args.offline {
        if let Some(entry) = &cache_entry {
            if !entry.exists() {
                eprintln!(
                    "  × No solution found when resolving tool dependencies:\n  ╰─▶ Because memtomem=={asked} was not found in the cache and you require memtomem=={asked}, we can conclude that your requirements are unsatisfiable.\n\n      hint: Packages were unavailable because the network was disabled."
                );
                call.finish(1, "offline without prepared cache");
            }
        }
    }
    let behavior = std::env::var("FAKE_UV_BEHAVIOR").unwrap_or_else(|_| "succeed".into());
    let mut parts = behavior.splitn(3, ':');
    let wrong_version;
    let mut note = if kind == "stage" {
        "staged"
    } else {
        "installed"
    };
    match parts.next().unwrap_or("succeed") {
        "fail" => {
            let code: i32 = parts.next().and_then(|c| c.parse().ok()).unwrap_or(2);
            let msg = parts.next().unwrap_or("fake uv stderr line");
            eprintln!("{msg}");
            call.finish(code, "configured failure");
        }
        "unresolvable" => {
            eprintln!("{unresolvable}");
            call.finish(1, "version cannot be resolved");
        }
        "hang" => call.hang(),
        // Another upgrader's in-place install over an installation that must stay as it
        // is (a real one, shared by tests): logged and successful, nothing written.
        "noop" => {
            eprintln!("Installed 4 executables: memtomem, memtomem-server, memtomem-web, mm");
            call.finish(0, "noop");
        }
        "hang-half-written" => {
            // Stuck mid-way: the environment is half there when the call is killed.
            let _ = fs::create_dir_all(target_dir.join(PACKAGE).join(PYTHON_LIB));
            call.hang()
        }
        "dangling-entry" => {
            lay.dangling_entry = true;
            note = "installed with a dangling entry point";
        }
        "sleep" => sleep_ms(parts.next().unwrap_or("0")),
        "broken-entry" => {
            lay.broken_entry = true;
            note = "installed a broken entry point";
        }
        "broken-python" => {
            lay.broken_python = true;
            note = "installed a broken python";
        }
        "wrong-version" => {
            wrong_version = parts.collect::<Vec<_>>().join(":");
            if wrong_version.is_empty() {
                eprintln!("error: fake-uv: FAKE_UV_BEHAVIOR=wrong-version needs :V");
                call.finish(2, "wrong-version without a version");
            }
            lay.version = &wrong_version;
            note = "installed the wrong version";
        }
        "delete-env-then-fail" => {
            let _ = fs::remove_dir_all(target_dir.join(PACKAGE));
            eprintln!(
                "error: Failed to install entrypoints (fake-uv deleted the tool environment)"
            );
            call.finish(2, "deleted env then failed");
        }
        _ => {}
    }
    if let Err(e) = lay.write() {
        eprintln!("error: fake-uv: cannot write {}: {e}", target_dir.display());
        call.finish(2, "write failed");
    }
    if kind == "stage" {
        if let Some(entry) = &cache_entry {
            let _ = fs::create_dir_all(entry);
        }
    }
    call.installed = Some(lay.summary());
    eprintln!("Installed 4 executables: memtomem, memtomem-server, memtomem-web, mm");
    call.finish(0, note);
}
