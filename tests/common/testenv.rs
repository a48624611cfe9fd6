//! The uv/Python test environment of `scripts/memtomem-env.sh` (cached,
//! idempotent): taken from our own environment when the caller already ran
//! the script (`.ci/run`), otherwise by running it once per test binary, so
//! the README's test command needs no separate setup on a fresh machine.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Variables `scripts/memtomem-env.sh` exports.
const ENV_KEYS: &[&str] = &[
    "MM_TEST_CACHE",
    "MM_TEST_UV",
    "MM_TEST_UV_VERSION",
    "MM_TEST_INSTALL_MEMTOMEM",
    "MM_TEST_MEMTOMEM_VERSIONS",
    "MM_TEST_PYTEST_VERSION",
    "UV_CACHE_DIR",
    "UV_PYTHON",
    "UV_PYTHON_DOWNLOADS",
    "UV_NO_PROGRESS",
    "UV_NO_CONFIG",
    "SSL_CERT_FILE",
];

/// The setup's variables: from our own environment when the caller already
/// ran the script (`eval "$(bash scripts/memtomem-env.sh)"`, `.ci/run`),
/// otherwise by running it once for this test binary.
pub fn setup() -> &'static [(String, String)] {
    static SETUP: OnceLock<Result<Vec<(String, String)>, String>> = OnceLock::new();
    match SETUP.get_or_init(load_setup) {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

fn load_setup() -> Result<Vec<(String, String)>, String> {
    let have = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    if have("MM_TEST_UV") && have("UV_CACHE_DIR") && have("UV_PYTHON") {
        let vars: Vec<(String, String)> = ENV_KEYS
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
            .collect();
        if !Path::new(&std::env::var("MM_TEST_UV").unwrap()).is_file() {
            return Err(format!(
                "MM_TEST_UV={} is not a file; unset it (the tests then run scripts/memtomem-env.sh) or rerun the script",
                std::env::var("MM_TEST_UV").unwrap()
            ));
        }
        return Ok(vars);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/memtomem-env.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run bash {}: {e}", script.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!(
            "the real-memtomem tests need uv, Python 3.12 and a warm uv cache; \
             `bash {}` failed ({}):\n{stderr}",
            script.display(),
            out.status
        ));
    }
    parse_exports(&String::from_utf8_lossy(&out.stdout))
}

/// `export NAME=VALUE` lines as printed by bash's `printf %q`: evaluated by
/// bash itself (the quoting is bash's), names taken from the lines.
pub fn parse_exports(text: &str) -> Result<Vec<(String, String)>, String> {
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('=').map(|(n, _)| n))
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .collect();
    if !names.contains(&"MM_TEST_UV") {
        return Err(format!(
            "scripts/memtomem-env.sh printed no MM_TEST_UV export:\n{text}"
        ));
    }
    let out = Command::new("bash")
        .args([
            "-c",
            r#"eval "$1"; shift; for k in "$@"; do printf '%s=%s\0' "$k" "${!k}"; done"#,
            "bash",
            text,
        ])
        .args(&names)
        .output()
        .map_err(|e| format!("cannot run bash: {e}"))?;
    if !out.status.success() {
        return Err(format!("evaluating the export lines failed:\n{text}"));
    }
    Ok(out
        .stdout
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect())
}

pub fn setup_var(k: &str) -> String {
    setup()
        .iter()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("the test setup exports no {k}"))
}

pub fn uv() -> PathBuf {
    PathBuf::from(setup_var("MM_TEST_UV"))
}

/// Apply the environment to a command (uv cache, python, certificates).
pub fn apply(cmd: &mut Command) -> &mut Command {
    for (k, v) in setup() {
        cmd.env(k, v);
    }
    cmd
}
