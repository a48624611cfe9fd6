//! The uv/Python test environment from `scripts/memtomem-env.sh` (cached,
//! idempotent), loaded once per test binary, so the README's test command
//! works on a fresh machine without a separate setup step.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

static ENV: OnceLock<Result<HashMap<String, String>, String>> = OnceLock::new();

/// Parse `export K=V` lines as printed by the setup script (values may use
/// backslash escapes, as bash's `printf %q` writes them).
pub fn parse_exports(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let mut out = String::new();
            let mut chars = v.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.extend(chars.next()),
                    '\'' | '"' => {}
                    c => out.push(c),
                }
            }
            (k.to_string(), out)
        })
        .collect()
}

/// The environment (uv path, cache, python), or a message saying why not.
pub fn test_env() -> Result<&'static HashMap<String, String>, String> {
    ENV.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let script = root.join("scripts/memtomem-env.sh");
        let out = Command::new("bash")
            .arg(&script)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed ({}); it needs Python 3.12 and PyPI:\n{}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(parse_exports(&String::from_utf8_lossy(&out.stdout)))
    })
    .as_ref()
    .map_err(Clone::clone)
}

pub fn uv() -> PathBuf {
    PathBuf::from(&test_env().expect("test environment")["MM_TEST_UV"])
}

/// Apply the environment to a command (uv cache, python, certificates).
pub fn apply(cmd: &mut Command) -> &mut Command {
    for (k, v) in test_env().expect("test environment") {
        cmd.env(k, v);
    }
    cmd
}
