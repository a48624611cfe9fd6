//! What a `uv tool install` argv asks for: the requirement grammar of uv's receipt, the
//! options that take a value, and which calls are stage calls.

use std::path::Path;

use crate::PACKAGE;

/// One requirement, as uv's receipt records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub name: String,
    pub extras: Vec<String>,
    pub specifier: Option<String>,
}

impl Requirement {
    /// `name[extra,...]specifier` (an environment marker after `;` is dropped).
    pub fn parse(s: &str) -> Requirement {
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
    pub fn pinned(&self) -> Option<&str> {
        let v = self.specifier.as_deref()?.strip_prefix("==")?;
        (!v.contains([',', '*']) && !v.starts_with('=')).then_some(v)
    }
}

/// What an argv after `uv tool install` asks for.
#[derive(Debug, Default)]
pub struct InstallArgs {
    pub spec: Option<Requirement>,
    pub python: Option<String>,
    pub with: Vec<String>,
    pub compile_bytecode: bool,
    pub offline: bool,
    pub refresh: bool,
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

pub fn parse_install(args: &[String]) -> InstallArgs {
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

/// A stage call: `UV_TOOL_DIR` strictly inside `$FAKE_UV_TOOL_DIR/.mm-upgrade/`.
pub fn is_stage(tool_dir: &str, real_tool_dir: &str) -> bool {
    Path::new(tool_dir)
        .strip_prefix(Path::new(real_tool_dir).join(".mm-upgrade"))
        .is_ok_and(|rest| rest.components().next().is_some())
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
