//! The scenario suite on Linux (see `tests/scenarios.rs`).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};

use crate::{model, runner, sys};

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn main() {
    if let Ok(path) = std::env::var("MM_SCENARIO_INNER") {
        inner_main(PathBuf::from(path));
    }
    outer_main();
}

// ---- inner: one scenario in this process ------------------------------------------------

fn inner_main(path: PathBuf) -> ! {
    let env = |k: &str| std::env::var(k).ok();
    let cfg = runner::Config {
        scenario_path: path.clone(),
        name: env("MM_SCENARIO_NAME").unwrap_or_else(|| path.display().to_string()),
        bin_dir: PathBuf::from(env("MM_SCENARIO_BIN_DIR").expect("MM_SCENARIO_BIN_DIR")),
        mm_upgrade: env("MM_SCENARIO_MM_UPGRADE")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from),
        other: env("MM_SCENARIO_UPGRADER").filter(|s| !s.is_empty()),
        keep: env("MM_SCENARIO_KEEP").is_some_and(|v| v != "0"),
        pause: env("MM_SCENARIO_PAUSE").is_some_and(|v| v != "0"),
        // Each scenario's processes carry `<run id>/<scenario>`, so its own sweep never
        // touches other scenarios (nor their runners, which carry the bare run id).
        run_id: format!(
            "{}/{}",
            env("MM_SCENARIO_RUN_ID").unwrap_or_default(),
            std::process::id()
        ),
    };
    let (outcome, report) = runner::run_one(cfg);
    print!("{report}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::process::exit(match outcome {
        runner::Verdict::Pass => 0,
        runner::Verdict::Fail => 1,
    })
}

// ---- outer: the libtest harness ----------------------------------------------------------

struct Shared {
    bins: OnceLock<Result<PathBuf, String>>,
    mm_upgrade: Option<PathBuf>,
    other: Option<String>,
    run_id: String,
    unshare_ok: bool,
    table: Mutex<Vec<Row>>,
}

struct Row {
    name: String,
    result: &'static str,
    expected: String,
    detail: String,
}

fn find_scenarios(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            find_scenarios(&p, out);
        } else if p.extension().is_some_and(|e| e == "toml") {
            out.push(p);
        }
    }
}

/// Build (or locate) fake-server and fake-uv next to this test binary's profile dir.
fn fake_bins() -> Result<PathBuf, String> {
    if let Ok(d) = std::env::var("MM_SCENARIO_BIN_DIR") {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // <target>/<profile>/deps/scenarios-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot locate the target dir")?
        .to_path_buf();
    let target = profile_dir.parent().ok_or("cannot locate the target dir")?;
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "fake-server",
        "--bins",
        "--manifest-path",
    ])
    .arg(manifest_dir().join("Cargo.toml"))
    .env("CARGO_TARGET_DIR", target);
    if release {
        cmd.arg("--release");
    }
    let out = cmd
        .output()
        .map_err(|e| format!("building fake-server: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building fake-server failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(profile_dir)
}

fn outer_main() -> ! {
    let mut args = Arguments::from_args();
    if args.test_threads.is_none() {
        // Scenarios mostly wait (grace periods, readiness); 2 cores can run several.
        args.test_threads = Some(
            std::env::var("MM_SCENARIO_THREADS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(6),
        );
    }
    sys::set_subreaper();
    let run_id = format!("{}-{}", std::process::id(), sys::mono_ns());
    let other = std::env::var("MM_SCENARIO_UPGRADER")
        .ok()
        .filter(|s| !s.is_empty());
    if let Some(cmd) = &other {
        // The upgrader runs with the sandbox's PATH (`<sandbox>/bin:/usr/bin:/bin`, the fake
        // uv first), so a bare name would not be found, or would be the wrong program.
        let first = cmd.split_whitespace().next().unwrap_or("");
        if !first.starts_with('/') || !Path::new(first).is_file() {
            eprintln!(
                "MM_SCENARIO_UPGRADER={cmd:?}: the command must start with the absolute path of an \
                 existing program (e.g. \"$HOME/.local/bin/mm upgrade\"); it runs with the \
                 sandbox's PATH, where only the fake uv and /usr/bin:/bin are"
            );
            std::process::exit(2);
        }
    }
    let mm_upgrade = std::env::var("MM_SCENARIO_MM_UPGRADE")
        .ok()
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_BIN_EXE_mm-upgrade").map(PathBuf::from));
    let unshare_ok = std::env::var("MM_SCENARIO_HOSTILE").as_deref() != Ok("direct")
        && Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--kill-child", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    let shared = Arc::new(Shared {
        bins: OnceLock::new(),
        mm_upgrade,
        other: other.clone(),
        run_id: run_id.clone(),
        unshare_ok,
        table: Mutex::new(vec![]),
    });

    let root = manifest_dir().join("scenarios");
    let mut files = vec![];
    find_scenarios(&root, &mut files);
    let mut trials = vec![];
    for path in files {
        let name = path
            .strip_prefix(&root)
            .unwrap()
            .with_extension("")
            .to_string_lossy()
            .into_owned();
        let parsed = model::load(&path);
        let (ignored, hostile, diff_expect) = match &parsed {
            Ok(s) => {
                let diff_skip = other.is_some()
                    && (s.differential.expect == Some(model::DiffExpect::Skip)
                        || (s.hostile && !unshare_ok));
                let expect = s.differential.expect.map(|e| match &s.differential.reason {
                    Some(r) => format!("{} ({r})", e.as_str()),
                    None => e.as_str().to_string(),
                });
                let selected = args.filter.as_ref().is_none_or(|f| {
                    if args.exact {
                        &name == f
                    } else {
                        name.contains(f.as_str())
                    }
                }) && !args.skip.iter().any(|k| name.contains(k.as_str()));
                if diff_skip && s.ignore.is_none() && selected {
                    let why = if s.hostile && !unshare_ok {
                        "hostile, and no pid namespace (unshare) is available".to_string()
                    } else {
                        s.differential.reason.clone().unwrap_or_default()
                    };
                    shared.table.lock().unwrap().push(Row {
                        name: name.clone(),
                        result: "skip",
                        expected: format!("skip ({why})"),
                        detail: String::new(),
                    });
                }
                (s.ignore.is_some() || diff_skip, s.hostile, expect)
            }
            Err(_) => (false, false, None),
        };
        let sh = shared.clone();
        let p = path.clone();
        let n = name.clone();
        trials.push(
            Trial::test(name.clone(), move || {
                if let Err(e) = parsed {
                    return Err(Failed::from(format!("invalid scenario file: {e}")));
                }
                run_trial(&sh, &p, &n, hostile, diff_expect)
            })
            .with_ignored_flag(ignored),
        );
    }
    trials.push(Trial::test(
        "model/wrong-values-fail-at-load",
        model_rejects_wrong_values,
    ));
    let started = Instant::now();
    let conclusion = libtest_mimic::run(&args, trials);

    // Final sweep: anything that escaped a scenario (it cannot normally).
    sys::kill_all_descendants(Duration::from_secs(3));
    let swept = sys::sweep_run_id(&run_id);
    if !swept.is_empty() {
        eprintln!(
            "scenarios: swept {} stray processes: {swept:?}",
            swept.len()
        );
    }
    if let Some(cmd) = &other {
        print_table(&shared, cmd, started.elapsed());
    }
    if !args.list {
        eprintln!(
            "scenarios: total wall time {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }
    conclusion.exit()
}

fn run_trial(
    sh: &Shared,
    path: &Path,
    name: &str,
    hostile: bool,
    diff_expect: Option<String>,
) -> Result<(), Failed> {
    let bins = sh
        .bins
        .get_or_init(fake_bins)
        .clone()
        .map_err(Failed::from)?;
    if sh.other.is_none() && sh.mm_upgrade.is_none() {
        return Err(
            "no mm-upgrade binary: the root package must build it (or set MM_SCENARIO_MM_UPGRADE)"
                .into(),
        );
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let pause = std::env::var("MM_SCENARIO_PAUSE").is_ok_and(|v| v != "0");
    let mut cmd = if hostile && sh.unshare_ok {
        let mut c = Command::new("unshare");
        c.args(["--pid", "--fork", "--mount-proc", "--kill-child"])
            .arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    cmd.env("MM_SCENARIO_INNER", path)
        .env("MM_SCENARIO_NAME", name)
        .env("MM_SCENARIO_BIN_DIR", &bins)
        .env("MM_SCENARIO_RUN_ID", &sh.run_id)
        .env(
            "MM_SCENARIO_MM_UPGRADE",
            sh.mm_upgrade.clone().unwrap_or_default(),
        )
        .process_group(0);
    if pause {
        cmd.stdin(Stdio::inherit())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
    } else {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
    }
    // No PR_SET_PDEATHSIG here: libtest-mimic runs trials on short-lived worker threads,
    // and the "parent" of pdeathsig is the spawning thread. The run-id sweep at the end
    // and the timeout below cover a dying harness instead.
    let scenario_timeout = model::load(path).map_or(30.0, |s| s.timeout);
    let limit = if pause {
        Duration::from_secs(86400)
    } else {
        sys::scaled(scenario_timeout + 20.0)
    };
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("spawning the scenario runner: {e}"))?;
    let pid = child.id() as i32;
    let mut so = child.stdout.take().unwrap();
    let se = child.stderr.take();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut se) = se {
            let _ = se.read_to_string(&mut s);
        }
        s
    });
    // Wait with a deadline (the outer process is a subreaper too: waitpid on this pid only).
    let mut status = 0;
    let mut timed_out = false;
    loop {
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        if start.elapsed() > limit {
            timed_out = true;
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            unsafe { libc::waitpid(pid, &mut status, 0) };
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let report = t_out.join().unwrap_or_default();
    let errs = t_err.join().unwrap_or_default();
    let passed = !timed_out && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    let mut text = report.clone();
    if !errs.trim().is_empty() {
        text.push_str(&format!("--- runner stderr:\n{errs}"));
    }
    if timed_out {
        text.push_str(&format!(
            "--- the scenario runner was killed after {limit:?}\n"
        ));
    } else if !libc::WIFEXITED(status) {
        text.push_str(&format!(
            "--- the scenario runner died: {} (an upgrader signalling its ancestors?)\n",
            sys::describe_status(status)
        ));
    }
    if std::env::var("MM_SCENARIO_VERBOSE").is_ok()
        || std::env::var("MM_SCENARIO_KEEP").is_ok_and(|v| v != "0")
    {
        println!("{text}");
    }
    if sh.other.is_some() {
        let first = text
            .lines()
            .skip_while(|l| !l.starts_with("FAILED CHECKS:") && !l.starts_with("SETUP ERROR"))
            .find(|l| l.starts_with("  - ") || l.starts_with("SETUP ERROR"))
            .unwrap_or("")
            .trim_start_matches("  - ")
            .to_string();
        sh.table.lock().unwrap().push(Row {
            name: name.to_string(),
            result: if passed { "pass" } else { "fail" },
            expected: diff_expect.clone().unwrap_or_default(),
            detail: if passed { String::new() } else { first },
        });
        return match diff_expect
            .as_deref()
            .map(|e| e.split(' ').next().unwrap_or(""))
        {
            Some("pass") if !passed => Err(Failed::from(format!(
                "expected the other upgrader to pass:\n{text}"
            ))),
            Some("fail") if passed => Err(Failed::from(
                "expected the other upgrader to fail, but it passed",
            )),
            _ => Ok(()),
        };
    }
    if passed {
        Ok(())
    } else {
        Err(Failed::from(text))
    }
}

fn print_table(sh: &Shared, cmd: &str, elapsed: Duration) {
    let mut rows = std::mem::take(&mut *sh.table.lock().unwrap());
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    let pass = rows.iter().filter(|r| r.result == "pass").count();
    let skip = rows.iter().filter(|r| r.result == "skip").count();
    let mut t = format!(
        "\nDifferential run against `{cmd}`: {pass} of {} scenarios pass, {skip} skipped ({:.0}s)\n\n| scenario | result | expected | first failed check |\n|---|---|---|---|\n",
        rows.len() - skip,
        elapsed.as_secs_f64()
    );
    for r in &rows {
        t.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            r.name,
            r.result,
            r.expected,
            r.detail
                .replace('|', "\\|")
                .chars()
                .take(160)
                .collect::<String>()
        ));
    }
    println!("{t}");
    if let Ok(path) = std::env::var("MM_SCENARIO_TABLE") {
        let _ = std::fs::write(path, t);
    }
}

/// A wrong value fails the scenario file at load time, naming the key (and toml's line).
fn model_rejects_wrong_values() -> Result<(), Failed> {
    let head = "description = \"d\"\n[[server]]\nname = \"main\"\n";
    let cases: &[(&str, &[&str])] = &[
        (
            "[expect.servers.main]\noutcome = \"killed(SIGFOO)\"\n",
            &["expect.servers.main.outcome", "SIGFOO"],
        ),
        (
            "[expect.servers.main]\noutcome = \"exitted(0)\"\n",
            &["expect.servers.main.outcome", "not an outcome"],
        ),
        (
            "[expect]\norder = [\"main\"]\n",
            &["expect.order[0]", "event pattern"],
        ),
        (
            "[expect]\norder = [\"mian:exit\"]\n",
            &["expect.order[0]", "unknown source \"mian\""],
        ),
        (
            "[expect]\njson = { ok = \"<nonempy>\" }\n",
            &["expect.json", "<nonempy>"],
        ),
        (
            "[expect]\nallow_alive = [\"main:launcer\"]\n",
            &["expect.allow_alive[0]"],
        ),
        (
            "[[file]]\npath = \"x\"\nkind = \"symlnk\"\n",
            &["file[0].kind", "\"symlink\""],
        ),
        (
            "[[file]]\npath = \"x\"\nmode = \"0999\"\n",
            &["file[0].mode", "octal"],
        ),
        (
            "[[file]]\npath = \"x\"\nkind = \"symlink\"\n",
            &["file[0].target"],
        ),
        ("[uv]\nbehavior = \"wrong-version\"\n", &["uv.version"]),
        (
            "[expect.servers.other]\noutcome = \"alive\"\n",
            &["expect.servers.other", "no server"],
        ),
        (
            "[differential]\nexpect = \"passes\"\n",
            &["differential.expect", "\"pass\""],
        ),
    ];
    for (tail, want) in cases {
        let text = format!("{head}{tail}");
        match model::parse(&text) {
            Ok(_) => return Err(format!("accepted:\n{text}").into()),
            Err(e) => {
                for w in *want {
                    if !e.contains(w) {
                        return Err(
                            format!("error for\n{text}\ndoes not mention {w:?}: {e}").into()
                        );
                    }
                }
            }
        }
    }
    let good = format!(
        "{head}group = \"own\"\n[[server]]\nname = \"b\"\ngroup = \"shared-with:main\"\n[expect]\norder = [\"main:signal:SIGTERM\", \"mm:exited:{{pid:main}}\"]\njson = {{ killed = [\"...\", \"{{pid:main}}\"], error = \"<absent>\" }}\n[expect.servers.main]\noutcome = \"killed(SIGKILL)\"\n"
    );
    model::parse(&good).map_err(|e| format!("rejected a good scenario: {e}\n{good}"))?;
    Ok(())
}
