//! The fake-uv test sandbox: a real tool dir, its bin dir and a call log, and the checks
//! of an installation's layout file by file.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::common::*;
use serde_json::Value;

pub const UV: &str = env!("CARGO_BIN_EXE_fake-uv");
pub const ENTRY_POINTS: [&str; 4] = ["memtomem", "memtomem-server", "memtomem-web", "mm"];

/// A sandbox with a real tool dir (`tools`), its bin dir (`bin`) and a call log.
pub struct UvBox {
    pub dir: tempfile::TempDir,
    pub tools: PathBuf,
    pub bin: PathBuf,
    pub log: PathBuf,
}

impl UvBox {
    pub fn new() -> UvBox {
        let dir = tempfile::tempdir().unwrap();
        let tools = dir.path().join("tools");
        let bin = dir.path().join("bin");
        fs::create_dir_all(&tools).unwrap();
        fs::create_dir_all(dir.path().join("home")).unwrap();
        let log = dir.path().join("uv.jsonl");
        UvBox {
            dir,
            tools,
            bin,
            log,
        }
    }

    /// The staging tool dir the upgrader uses: inside the real one.
    pub fn stage(&self, name: &str) -> PathBuf {
        self.tools.join(".mm-upgrade").join(name)
    }

    /// `fake-uv ARGS` with a clean environment: the sandbox's FAKE_UV_* and `env`.
    pub fn command(&self, env: &[(&str, &Path)], args: &[&str]) -> Command {
        let mut c = Command::new(UV);
        c.args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", self.dir.path().join("home"))
            .env("FAKE_UV_TOOL_DIR", &self.tools)
            .env("FAKE_UV_LOG", &self.log)
            .env("FAKE_UV_SERVER_BIN", BIN)
            .stdin(Stdio::null())
            .process_group(0);
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    /// A stage call into `stage(name)` (bin dir `<stage>/.bin`), FAKE_UV_BEHAVIOR `behavior`.
    pub fn stage_call(&self, name: &str, behavior: &str, args: &[&str]) -> (Output, PathBuf) {
        let stage = self.stage(name);
        let bin = stage.join(".bin");
        let mut c = self.command(
            &[("UV_TOOL_DIR", &stage), ("UV_TOOL_BIN_DIR", &bin)],
            &[&["tool", "install"], args].concat(),
        );
        c.env("FAKE_UV_BEHAVIOR", behavior);
        (c.output().unwrap(), stage)
    }

    pub fn install_call(&self, extra_env: &[(&str, &Path)], args: &[&str]) -> Output {
        let mut env = vec![
            ("UV_TOOL_DIR", self.tools.as_path()),
            ("UV_TOOL_BIN_DIR", self.bin.as_path()),
        ];
        env.extend_from_slice(extra_env);
        self.command(&env, &[&["tool", "install"], args].concat())
            .output()
            .unwrap()
    }

    pub fn last_call(&self) -> Value {
        let text = fs::read_to_string(&self.log).unwrap();
        serde_json::from_str(text.lines().last().unwrap()).unwrap()
    }

    /// A file of pids for FAKE_UV_MANAGED_PIDS.
    pub fn managed(&self, pids: &[u32]) -> PathBuf {
        let p = self.dir.path().join("managed");
        fs::write(
            &p,
            pids.iter().map(|p| format!("{p}\n")).collect::<String>(),
        )
        .unwrap();
        p
    }
}

pub fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "fake-uv: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn receipt(env: &Path) -> toml::Table {
    let text = fs::read_to_string(env.join("uv-receipt.toml")).unwrap();
    toml::from_str(&text).unwrap_or_else(|e| panic!("receipt is TOML: {e}\n{text}"))
}

/// The receipt uv writes for these requirements, python, bin dir and options.
pub fn expected_receipt(
    requirements: &str,
    python: Option<&str>,
    bin: &Path,
    compile: bool,
) -> toml::Table {
    let mut text = format!("[tool]\nrequirements = {requirements}\n");
    if let Some(p) = python {
        text.push_str(&format!("python = {p:?}\n"));
    }
    text.push_str("entrypoints = [\n");
    for n in ENTRY_POINTS {
        text.push_str(&format!(
            "  {{ name = {n:?}, install-path = {:?}, from = \"memtomem\" }},\n",
            bin.join(n).display().to_string()
        ));
    }
    text.push_str("]\n");
    if compile {
        text.push_str("[tool.options]\ncompile-bytecode = true\n");
    }
    toml::from_str(&text).unwrap()
}

pub fn run(path: &Path, args: &[&str]) -> Output {
    Command::new(path)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", path.display()))
}

pub fn installed_version(env: &Path) -> Vec<String> {
    list(&env.join("lib/python3.12/site-packages"))
        .into_iter()
        .filter_map(|n| {
            n.strip_prefix("memtomem-")
                .and_then(|v| v.strip_suffix(".dist-info"))
                .map(str::to_string)
        })
        .collect()
}

/// The stand-in interpreter's answer to the upgrader's metadata probe.
pub fn probe(env: &Path) -> Output {
    run(
        &env.join("bin/python"),
        &["-I", "-c", "import json, memtomem; print(...)"],
    )
}

/// Every file of an installation: receipt, venv files, dist-info, package, the python
/// stand-in and its links, the entry scripts (second line names `env`'s python), and the
/// bin dir's links to them.
pub fn assert_layout(env: &Path, bin: &Path, version: &str) {
    for f in [
        "uv-receipt.toml",
        "pyvenv.cfg",
        ".gitignore",
        "CACHEDIR.TAG",
    ] {
        assert!(env.join(f).is_file(), "{f}");
    }
    assert_eq!(fs::read_link(env.join("lib64")).unwrap(), Path::new("lib"));
    let cfg = fs::read_to_string(env.join("pyvenv.cfg")).unwrap();
    assert!(
        cfg.contains("include-system-site-packages = false"),
        "{cfg}"
    );
    assert_eq!(installed_version(env), [version]);
    let site = env.join("lib/python3.12/site-packages");
    let meta =
        fs::read_to_string(site.join(format!("memtomem-{version}.dist-info/METADATA"))).unwrap();
    assert!(
        meta.lines().any(|l| l == "Name: memtomem")
            && meta.lines().any(|l| l == format!("Version: {version}")),
        "{meta}"
    );
    assert!(site.join("memtomem/__init__.py").is_file());
    for alias in ["python3", "python3.12"] {
        assert_eq!(
            fs::read_link(env.join("bin").join(alias)).unwrap(),
            Path::new("python")
        );
    }
    let python = env.join("bin/python");
    assert_eq!(mode_bits(&python) & 0o111, 0o111);
    for n in ENTRY_POINTS {
        let script = env.join("bin").join(n);
        assert_eq!(mode_bits(&script) & 0o111, 0o111, "{n}");
        let text = fs::read_to_string(&script).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "#!/bin/sh", "{n}");
        assert_eq!(lines[1], format!("# python: {}", python.display()), "{n}");
        assert_eq!(fs::read_link(bin.join(n)).unwrap(), script, "{n}");
    }
}

/// Starts an installed `memtomem-server` (the fake server behind fake-uv's entry script)
/// in `sb`'s runtime dir, with `args`, and waits for nothing: the caller does its handshake.
pub fn start_installed_server(server: &Path, sb: &Sandbox, args: &[&str]) -> Proc {
    let mut c = Command::new(server);
    c.args(["--runtime-dir", sb.rt.to_str().unwrap()])
        .args(args)
        .env("HOME", &sb.home)
        .env_remove("MEMTOMEM_STORAGE__SQLITE_PATH")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(sb.path("s.stderr")).unwrap())
        .process_group(0);
    Proc::start(
        c,
        sb.path("s.ready"),
        sb.path("s.events"),
        sb.path("s.stderr"),
    )
}
