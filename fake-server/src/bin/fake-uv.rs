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
//! | `FAKE_UV_BEHAVIOR` | what an install or stage call does: `succeed` (default), `fail:CODE:STDERR`, `hang`, `sleep:MS` (then succeed), `delete-env-then-fail`, `broken-entry` (installs, but every entry point prints a `ModuleNotFoundError` and exits 1), `unresolvable` (the version does not exist: exit 1 with uv's resolver message), `broken-python` (installs, but `bin/python` prints `fake python: broken` and exits 1), `wrong-version:V` (installs V whatever was asked: dist-info, `bin/python` and `memtomem-server` all say V) |
//! | `FAKE_UV_SERVER_BIN` | the fake-server binary: the installed `bin/memtomem-server` execs it with `--server-version <V>` (without it, that script exits 0) |
//! | `FAKE_UV_SERVER_ARGS` | more fake-server arguments for that `memtomem-server`, separated by whitespace (no quoting), placed after `--server-version <V>` and before the script's own arguments, e.g. `--mode hang-initialize` |
//! | `FAKE_UV_PREPARE` | what a prepare call does: `succeed` (default), `fail` (version cannot be resolved, exit 1), `hang`, `sleep:MS` |
//! | `FAKE_UV_DIR` | what `uv tool dir` does: `succeed` (default), `fail` |
//! | `FAKE_UV_CACHE` | a directory standing for uv's cache: prepare and stage calls record `memtomem-<V>` there; an `--offline` install or stage of a V not in it fails like uv does |
//! | `FAKE_UV_LATEST` | the version a request without `==V` resolves to (default `0.7.0`; ranges such as `>=0.6,<0.7` are not checked against it) |
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

use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

const EXIT_MANAGED_ALIVE: i32 = 97;
const PACKAGE: &str = "memtomem";
/// memtomem's console scripts, in the order uv's receipt lists them.
const ENTRY_POINTS: [&str; 4] = ["memtomem", "memtomem-server", "memtomem-web", "mm"];
/// The interpreter directory inside an environment.
const PYTHON_LIB: &str = "lib/python3.12/site-packages";

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
    /// What a successful install, stage or prepare laid out.
    installed: Option<Value>,
}

impl Call {
    fn finish(&self, code: i32, note: &str) -> ! {
        self.log(Some(code), note);
        std::process::exit(code)
    }

    /// Log the call (it never ends on its own), then hang until killed.
    fn hang(&self) -> ! {
        self.log(None, "hanging");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }

    fn log(&self, code: Option<i32>, note: &str) {
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
            "end_mono_ns": code.map(|_| mono_ns()),
            "exit_code": code,
            "note": note,
            "installed": self.installed,
        }));
    }
}

// ---------------------------------------------------------------------------------------
// The command line of `uv tool install`.

/// One requirement, as uv's receipt records it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    name: String,
    extras: Vec<String>,
    specifier: Option<String>,
}

impl Requirement {
    /// `name[extra,...]specifier` (an environment marker after `;` is dropped).
    fn parse(s: &str) -> Requirement {
        let s = s.split(';').next().unwrap_or("").trim();
        let end = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
            .unwrap_or(s.len());
        let (name, mut rest) = s.split_at(end);
        let mut extras = Vec::new();
        if let Some(inner) = rest.trim_start().strip_prefix('[') {
            let (list, after) = inner.split_once(']').unwrap_or((inner, ""));
            extras = list
                .split(',')
                .map(|e| e.trim().to_string())
                .filter(|e| !e.is_empty())
                .collect();
            rest = after;
        }
        let specifier: String = rest.chars().filter(|c| !c.is_whitespace()).collect();
        Requirement {
            name: name.to_string(),
            extras,
            specifier: (!specifier.is_empty()).then_some(specifier),
        }
    }

    /// The exact version of a `==V` specifier (not `==0.6.*`, not a range).
    fn pinned(&self) -> Option<&str> {
        let v = self.specifier.as_deref()?.strip_prefix("==")?;
        (!v.contains([',', '*']) && !v.starts_with('=')).then_some(v)
    }
}

/// What an argv after `uv tool install` asks for.
#[derive(Debug, Default)]
struct InstallArgs {
    spec: Option<Requirement>,
    python: Option<String>,
    with: Vec<String>,
    compile_bytecode: bool,
    offline: bool,
    refresh: bool,
}

/// uv's `tool install` options that take a value (`--opt VALUE` or `--opt=VALUE`).
const TAKES_VALUE: &[&str] = &[
    "--reinstall-package",
    "--upgrade-package",
    "--refresh-package",
    "--no-build-package",
    "--no-binary-package",
    "--with",
    "--with-editable",
    "--with-requirements",
    "--with-executables-from",
    "--from",
    "--python",
    "-p",
    "--python-platform",
    "--index",
    "--default-index",
    "--index-url",
    "-i",
    "--extra-index-url",
    "--find-links",
    "-f",
    "--index-strategy",
    "--keyring-provider",
    "--resolution",
    "--prerelease",
    "--fork-strategy",
    "--exclude-newer",
    "--exclude-newer-package",
    "--link-mode",
    "--constraints",
    "--constraint",
    "-c",
    "--overrides",
    "--build-constraints",
    "-b",
    "--config-setting",
    "-C",
    "--cache-dir",
    "--config-file",
    "--directory",
    "--project",
    "--color",
    "--python-preference",
    "--allow-insecure-host",
];

fn parse_install(args: &[String]) -> InstallArgs {
    let mut out = InstallArgs::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (opt, inline) = match a.split_once('=') {
            Some((o, v)) if a.starts_with("--") => (o, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        if TAKES_VALUE.contains(&opt) {
            let value = inline.or_else(|| it.next().cloned()).unwrap_or_default();
            match opt {
                "--python" | "-p" => out.python = Some(value),
                "--with" => out.with.push(value),
                _ => {}
            }
            continue;
        }
        match a.as_str() {
            "--compile-bytecode" => out.compile_bytecode = true,
            "--offline" => out.offline = true,
            "--refresh" => out.refresh = true,
            s if !s.starts_with('-') => {
                let r = Requirement::parse(s);
                if r.name.eq_ignore_ascii_case(PACKAGE) {
                    out.spec = Some(r);
                }
            }
            _ => {}
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The tool environment, laid out as uv does.

/// One installation into `<tool_dir>/memtomem` with entry points linked from `bin_dir`.
struct Layout<'a> {
    tool_dir: &'a Path,
    bin_dir: &'a Path,
    /// The version installed (the dist-info, what `bin/python` and the server report).
    version: &'a str,
    /// memtomem first, then each `--with`, as the receipt lists them.
    requirements: Vec<Requirement>,
    python: Option<&'a str>,
    compile_bytecode: bool,
    broken_entry: bool,
    broken_python: bool,
}

/// `'…'` for /bin/sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A TOML string (escaping by the toml crate).
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn write_exec(path: &Path, body: &str) -> std::io::Result<()> {
    fs::write(path, body)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
}

/// Replaces whatever is at `link` (never following it) with a symlink to `target`.
fn relink(target: &Path, link: &Path) -> std::io::Result<()> {
    if fs::symlink_metadata(link).is_ok() {
        fs::remove_file(link)?;
    }
    symlink(target, link)
}

impl Layout<'_> {
    fn env(&self) -> PathBuf {
        self.tool_dir.join(PACKAGE)
    }

    /// uv's receipt, in uv's own layout (inline tables, `requirements` on one line when
    /// there is one); every value is encoded by the toml crate.
    fn receipt(&self) -> String {
        let req = |r: &Requirement| {
            let mut fields = vec![format!("name = {}", toml_str(&r.name))];
            if !r.extras.is_empty() {
                let extras: Vec<toml::Value> = r
                    .extras
                    .iter()
                    .map(|e| toml::Value::String(e.clone()))
                    .collect();
                fields.push(format!("extras = {}", toml::Value::Array(extras)));
            }
            if let Some(s) = &r.specifier {
                fields.push(format!("specifier = {}", toml_str(s)));
            }
            format!("{{ {} }}", fields.join(", "))
        };
        let mut out = String::from("[tool]\n");
        if let [only] = &self.requirements[..] {
            out.push_str(&format!("requirements = [{}]\n", req(only)));
        } else {
            out.push_str("requirements = [\n");
            for r in &self.requirements {
                out.push_str(&format!("    {},\n", req(r)));
            }
            out.push_str("]\n");
        }
        if let Some(p) = self.python {
            out.push_str(&format!("python = {}\n", toml_str(p)));
        }
        out.push_str("entrypoints = [\n");
        for name in ENTRY_POINTS {
            let path = self.bin_dir.join(name);
            out.push_str(&format!(
                "    {{ name = {}, install-path = {}, from = {} }},\n",
                toml_str(name),
                toml_str(&path.to_string_lossy()),
                toml_str(PACKAGE)
            ));
        }
        out.push_str("]\n");
        if self.compile_bytecode {
            out.push_str("\n[tool.options]\ncompile-bytecode = true\n");
        }
        out
    }

    /// The stand-in interpreter: the metadata probe's answer, whatever it is asked.
    fn python_script(&self) -> String {
        if self.broken_python {
            return "#!/bin/sh\necho 'fake python: broken' >&2\nexit 1\n".into();
        }
        let line = format!(
            r#"{{"version": {}, "missing": [], "schema": null}}"#,
            json!(self.version)
        );
        format!(
            "#!/bin/sh\n# fake-uv's stand-in interpreter for memtomem {v}: arguments are ignored.\nprintf '%s\\n' {}\n",
            sh_quote(&line),
            v = self.version
        )
    }

    fn entry_script(&self, name: &str, python: &Path) -> String {
        let head = format!("#!/bin/sh\n# python: {}\n", python.display());
        if self.broken_entry {
            return format!(
                "{head}echo \"ModuleNotFoundError: No module named '{PACKAGE}'\" >&2\nexit 1\n"
            );
        }
        match std::env::var("FAKE_UV_SERVER_BIN") {
            Ok(server) if name == "memtomem-server" => format!(
                "{head}exec {} --server-version {}{} \"$@\"\n",
                sh_quote(&server),
                sh_quote(self.version),
                server_args()
                    .iter()
                    .map(|a| format!(" {}", sh_quote(a)))
                    .collect::<String>()
            ),
            _ => format!("{head}exit 0\n"),
        }
    }

    fn write(&self) -> std::io::Result<()> {
        let env = self.env();
        if fs::symlink_metadata(&env).is_ok() {
            fs::remove_dir_all(&env)?;
        }
        let site = env.join(PYTHON_LIB);
        let dist = site.join(format!("{PACKAGE}-{}.dist-info", self.version));
        fs::create_dir_all(&dist)?;
        fs::write(
            dist.join("METADATA"),
            format!(
                "Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: {}\n",
                self.version
            ),
        )?;
        fs::write(dist.join("INSTALLER"), "uv\n")?;
        fs::create_dir_all(site.join(PACKAGE))?;
        fs::write(
            site.join(PACKAGE).join("__init__.py"),
            format!("__version__ = {}\n", json!(self.version)),
        )?;
        symlink("lib", env.join("lib64"))?;
        let home = self
            .python
            .and_then(|p| Path::new(p).parent())
            .map(|d| d.display().to_string())
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| "/usr/bin".into());
        fs::write(
            env.join("pyvenv.cfg"),
            format!(
                "home = {home}\nimplementation = CPython\nuv = 0.13.9\nversion_info = 3.12.1\ninclude-system-site-packages = false\n"
            ),
        )?;
        fs::write(env.join(".gitignore"), "*")?;
        fs::write(
            env.join("CACHEDIR.TAG"),
            "Signature: 8a477f597d28d172789f06886806bc55",
        )?;

        let bin = env.join("bin");
        fs::create_dir_all(&bin)?;
        let python = bin.join("python");
        write_exec(&python, &self.python_script())?;
        for alias in ["python3", "python3.12"] {
            symlink("python", bin.join(alias))?;
        }
        fs::create_dir_all(self.bin_dir)?;
        for name in ENTRY_POINTS {
            write_exec(&bin.join(name), &self.entry_script(name, &python))?;
            relink(&bin.join(name), &self.bin_dir.join(name))?;
        }
        // uv writes the receipt last: an environment with a receipt is complete.
        fs::write(env.join("uv-receipt.toml"), self.receipt())
    }

    fn summary(&self) -> Value {
        json!({
            "version": self.version,
            "env": self.env(),
            "bin_dir": self.bin_dir,
            "broken_entry": self.broken_entry,
            "broken_python": self.broken_python,
        })
    }
}

/// `FAKE_UV_SERVER_ARGS`, split on whitespace.
fn server_args() -> Vec<String> {
    std::env::var("FAKE_UV_SERVER_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn sleep_ms(spec: &str) {
    let ms: u64 = spec.parse().unwrap_or(0);
    std::thread::sleep(Duration::from_millis(ms));
}

fn home_path(rel: &str) -> Option<String> {
    std::env::var("HOME").ok().map(|h| format!("{h}/{rel}"))
}

/// A stage call: `UV_TOOL_DIR` strictly inside `$FAKE_UV_TOOL_DIR/.mm-upgrade/`.
fn is_stage(tool_dir: &str, real_tool_dir: &str) -> bool {
    Path::new(tool_dir)
        .strip_prefix(Path::new(real_tool_dir).join(".mm-upgrade"))
        .is_ok_and(|rest| rest.components().next().is_some())
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
            let out = if rest.contains(&"--bin") {
                bin_dir.clone().or_else(|| home_path(".local/bin"))
            } else {
                tool_dir
                    .clone()
                    .or_else(|| home_path(".local/share/uv/tools"))
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
            .or_else(|| home_path(".local/share/uv/tools"))
            .unwrap_or_default(),
    );
    let target_bin = PathBuf::from(
        bin_dir
            .clone()
            .or_else(|| {
                (kind == "stage").then(|| target_dir.join(".bin").to_string_lossy().into_owned())
            })
            .or_else(|| home_path(".local/bin"))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str, extras: &[&str], spec: Option<&str>) -> Requirement {
        Requirement {
            name: name.into(),
            extras: extras.iter().map(|e| e.to_string()).collect(),
            specifier: spec.map(str::to_string),
        }
    }

    #[test]
    fn requirements_parse_like_pep_508() {
        assert_eq!(Requirement::parse("memtomem"), req("memtomem", &[], None));
        assert_eq!(
            Requirement::parse("memtomem[a, b]"),
            req("memtomem", &["a", "b"], None)
        );
        let pinned = Requirement::parse("memtomem==0.6.12");
        assert_eq!(pinned, req("memtomem", &[], Some("==0.6.12")));
        assert_eq!(pinned.pinned(), Some("0.6.12"));
        let range = Requirement::parse("memtomem[a]>=0.6, <0.7");
        assert_eq!(range, req("memtomem", &["a"], Some(">=0.6,<0.7")));
        assert_eq!(range.pinned(), None);
        assert_eq!(Requirement::parse("memtomem==0.6.*").pinned(), None);
        assert_eq!(Requirement::parse("memtomem===0.6").pinned(), None);
        assert_eq!(
            Requirement::parse("anyio>=4; python_version >= '3.9'"),
            req("anyio", &[], Some(">=4"))
        );
    }

    #[test]
    fn options_before_and_after_the_spec() {
        let a: Vec<String> = [
            "--with",
            "httpx",
            "memtomem[a]==1.0",
            "--python=/usr/bin/python3.12",
            "--compile-bytecode",
            "--index",
            "https://example.invalid/simple",
            "--with=anyio>=4",
            "--refresh-package",
            "memtomem",
            "--offline",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let p = parse_install(&a);
        assert_eq!(p.spec, Some(req("memtomem", &["a"], Some("==1.0"))));
        assert_eq!(p.python.as_deref(), Some("/usr/bin/python3.12"));
        assert_eq!(p.with, ["httpx", "anyio>=4"]);
        assert!(p.compile_bytecode && p.offline && !p.refresh);
    }

    #[test]
    fn stage_dirs_are_strictly_inside_dot_mm_upgrade() {
        assert!(is_stage("/t/tools/.mm-upgrade/stage-1", "/t/tools"));
        assert!(is_stage("/t/tools/.mm-upgrade/stage-1/", "/t/tools/"));
        assert!(!is_stage("/t/tools/.mm-upgrade", "/t/tools"));
        assert!(!is_stage("/t/tools/.mm-upgrade-x/s", "/t/tools"));
        assert!(!is_stage("/t/tools", "/t/tools"));
        assert!(!is_stage("/tmp/prepare/tools", "/t/tools"));
    }
}
