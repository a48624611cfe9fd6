//! uv's `uv-receipt.toml`: what the user asked uv for (requirements, `--with`
//! packages, the Python, index options) and where the entry points live.
//! The staged install is rebuilt from it, so an upgrade keeps the user's
//! choices; everything that reaches uv's argv is validated here first.

use std::fs;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::install::PACKAGE;

pub const FILE: &str = "uv-receipt.toml";
/// A receipt is a few hundred bytes; anything this large is not uv's.
const MAX_BYTES: u64 = 1 << 20;

/// One requirement as uv records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub name: String,
    pub extras: Vec<String>,
    /// PEP 440 specifier set, e.g. `==0.6.11` or `>=0.6,<0.7`; empty if unpinned.
    pub specifier: String,
    pub marker: Option<String>,
}

impl Requirement {
    /// PEP 508 text: `name[extras]specifier ; marker`.
    pub fn pep508(&self) -> String {
        let mut s = self.name.clone();
        if !self.extras.is_empty() {
            s.push('[');
            s.push_str(&self.extras.join(","));
            s.push(']');
        }
        s.push_str(&self.specifier);
        if let Some(m) = &self.marker {
            s.push_str(" ; ");
            s.push_str(m);
        }
        s
    }

    /// An exact pin (`==V`), as `uv tool install memtomem==V` records it.
    pub fn is_exact_pin(&self) -> bool {
        let s = self.specifier.trim();
        s.starts_with("==") && !s.contains(',') && !s.contains('*')
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryPoint {
    pub name: String,
    pub install_path: PathBuf,
}

/// The parts of a receipt the upgrade reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Receipt {
    /// `memtomem` itself.
    pub main: Requirement,
    /// The `--with` requirements, in order.
    pub with: Vec<Requirement>,
    pub python: Option<String>,
    pub entrypoints: Vec<EntryPoint>,
    /// `[tool.options]`, kept as uv wrote it.
    pub options: toml::Table,
}

/// PEP 508 names (also extras): letters, digits, `.`, `_`, `-`, starting and
/// ending alphanumeric. Nothing else may reach uv's argv from a file.
pub fn is_valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// A PEP 440 specifier set: operators, versions, commas. No URL, no `@`, no
/// `;`, no whitespace tricks that could turn it into another requirement.
fn is_valid_specifier(s: &str) -> bool {
    s.len() <= 256
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, '=' | '<' | '>' | '!' | '~' | ',' | '.' | '*' | '+' | ' ')
        })
}

/// A PEP 508 marker: a restricted character set (no `@`, no `/`).
fn is_valid_marker(s: &str) -> bool {
    s.len() <= 512
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    ' ' | '_' | '.' | '-' | '=' | '<' | '>' | '!' | '~' | '(' | ')' | '\'' | '"'
                )
        })
}

/// Read a small text file the upgrade owns or uv wrote: only a regular file
/// (never a FIFO or a device: opened non-blocking, checked before reading),
/// at most 1 MiB.
pub fn read_capped(path: &Path) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind};
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(Error::new(ErrorKind::InvalidData, "not a regular file"));
    }
    if meta.len() > MAX_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("{} bytes, too large", meta.len()),
        ));
    }
    let mut buf = Vec::new();
    file.take(MAX_BYTES + 1).read_to_end(&mut buf)?;
    String::from_utf8(buf).map_err(|_| Error::new(ErrorKind::InvalidData, "not UTF-8"))
}

/// Read `<env>/uv-receipt.toml` (see [`read_capped`]).
pub fn read_text(env_dir: &Path) -> Result<String, String> {
    let path = env_dir.join(FILE);
    read_capped(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Read and parse the receipt of the environment at `env_dir`.
pub fn read(env_dir: &Path) -> Result<Receipt, String> {
    let path = env_dir.join(FILE);
    parse(&read_text(env_dir)?).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn parse(text: &str) -> Result<Receipt, String> {
    let doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("not valid TOML ({})", e.message().trim()))?;
    let tool = doc
        .get("tool")
        .and_then(|t| t.as_table())
        .ok_or("no [tool] table")?;
    let reqs = tool
        .get("requirements")
        .and_then(|r| r.as_array())
        .ok_or("no tool.requirements")?;
    let mut main = None;
    let mut with = Vec::new();
    for r in reqs {
        let req = parse_requirement(r)?;
        if req.name.eq_ignore_ascii_case(PACKAGE) && main.is_none() {
            main = Some(req);
        } else {
            with.push(req);
        }
    }
    let main = main.ok_or("no memtomem requirement")?;
    let python = tool
        .get("python")
        .map(|p| {
            p.as_str()
                .map(str::to_string)
                .ok_or("tool.python is not a string")
        })
        .transpose()?;
    let mut entrypoints = Vec::new();
    for e in tool
        .get("entrypoints")
        .and_then(|e| e.as_array())
        .into_iter()
        .flatten()
    {
        let (Some(name), Some(path)) = (
            e.get("name").and_then(|v| v.as_str()),
            e.get("install-path").and_then(|v| v.as_str()),
        ) else {
            return Err("an entry point without name or install-path".into());
        };
        if name.contains('/') || name.is_empty() || name == "." || name == ".." {
            return Err(format!("entry point name {name:?} is not a file name"));
        }
        entrypoints.push(EntryPoint {
            name: name.to_string(),
            install_path: PathBuf::from(path),
        });
    }
    let options = tool
        .get("options")
        .and_then(|o| o.as_table())
        .cloned()
        .unwrap_or_default();
    Ok(Receipt {
        main,
        with,
        python,
        entrypoints,
        options,
    })
}

fn parse_requirement(v: &toml::Value) -> Result<Requirement, String> {
    let t = match v {
        toml::Value::Table(t) => t,
        // Receipts of old uv releases: a PEP 508 string.
        toml::Value::String(s) => return parse_pep508(s),
        _ => return Err("a requirement that is neither a table nor a string".into()),
    };
    let name = t
        .get("name")
        .and_then(|n| n.as_str())
        .ok_or("a requirement without a name")?;
    if !is_valid_name(name) {
        return Err(format!("requirement name {name:?} is not a PEP 508 name"));
    }
    for source in [
        "url",
        "git",
        "path",
        "directory",
        "editable",
        "index",
        "subdirectory",
    ] {
        if t.contains_key(source) {
            return Err(format!(
                "requirement {name} comes from a {source} source, which mm-upgrade does not reproduce; upgrade it with uv directly"
            ));
        }
    }
    let extras = match t.get("extras") {
        None => vec![],
        Some(e) => e
            .as_array()
            .ok_or("extras is not a list")?
            .iter()
            .map(|x| {
                x.as_str()
                    .filter(|s| is_valid_name(s))
                    .map(str::to_string)
                    .ok_or_else(|| format!("extra {x} of {name} is not a PEP 508 name"))
            })
            .collect::<Result<_, _>>()?,
    };
    let specifier = t
        .get("specifier")
        .and_then(|s| s.as_str())
        .unwrap_or("")
        .trim()
        .to_string();
    if !is_valid_specifier(&specifier) {
        return Err(format!(
            "specifier {specifier:?} of {name} is not a version specifier"
        ));
    }
    let marker = t.get("marker").and_then(|m| m.as_str()).map(str::to_string);
    if let Some(m) = &marker {
        if !is_valid_marker(m) {
            return Err(format!("marker {m:?} of {name} is not a PEP 508 marker"));
        }
    }
    Ok(Requirement {
        name: name.to_string(),
        extras,
        specifier,
        marker,
    })
}

/// `name[extras]specifier` without markers or URLs (old receipts).
fn parse_pep508(s: &str) -> Result<Requirement, String> {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        .unwrap_or(s.len());
    let (name, mut rest) = s.split_at(end);
    if !is_valid_name(name) {
        return Err(format!("requirement {s:?} has no PEP 508 name"));
    }
    let mut extras = vec![];
    if let Some(r) = rest.strip_prefix('[') {
        let (inner, after) = r
            .split_once(']')
            .ok_or_else(|| format!("requirement {s:?}: unclosed ["))?;
        for e in inner.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if !is_valid_name(e) {
                return Err(format!("extra {e:?} of {name} is not a PEP 508 name"));
            }
            extras.push(e.to_string());
        }
        rest = after;
    }
    let specifier = rest.trim().to_string();
    if !is_valid_specifier(&specifier) {
        return Err(format!(
            "requirement {s:?} is not name[extras]specifier (URLs and markers are not reproduced)"
        ));
    }
    Ok(Requirement {
        name: name.to_string(),
        extras,
        specifier,
        marker: None,
    })
}

/// `uv tool install` options recorded in `[tool.options]` that map to a
/// flag; anything else is refused rather than silently dropped.
fn option_args(options: &toml::Table) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let str_of = |k: &str, v: &toml::Value| -> Result<String, String> {
        v.as_str()
            .filter(|s| !s.starts_with('-') && !s.contains('\n'))
            .map(str::to_string)
            .ok_or_else(|| format!("tool.options.{k} is not a plain string"))
    };
    for (k, v) in options {
        match k.as_str() {
            "index" => {
                for idx in v.as_array().ok_or("tool.options.index is not a list")? {
                    let url = idx
                        .get("url")
                        .map(|u| str_of("index.url", u))
                        .transpose()?
                        .ok_or("an index without url")?;
                    let named = match idx.get("name").and_then(|n| n.as_str()) {
                        Some(n) if is_valid_name(n) => format!("{n}={url}"),
                        Some(n) => return Err(format!("index name {n:?} is not a name")),
                        None => url,
                    };
                    let default = idx.get("default").and_then(|d| d.as_bool()) == Some(true);
                    out.push(if default { "--default-index" } else { "--index" }.into());
                    out.push(named);
                }
            }
            "index-url" => {
                out.push("--default-index".into());
                out.push(str_of(k, v)?);
            }
            "extra-index-url" | "find-links" => {
                let flag = if k == "find-links" {
                    "--find-links"
                } else {
                    "--index"
                };
                for u in v.as_array().ok_or(format!("tool.options.{k} is not a list"))? {
                    out.push(flag.into());
                    out.push(str_of(k, u)?);
                }
            }
            "index-strategy" | "prerelease" | "resolution" | "exclude-newer" | "link-mode"
            | "keyring-provider" => {
                out.push(format!("--{k}"));
                out.push(str_of(k, v)?);
            }
            "no-index" | "compile-bytecode" | "no-build-isolation" | "no-sources" => {
                if v.as_bool() == Some(true) {
                    out.push(format!("--{k}"));
                }
            }
            other => {
                return Err(format!(
                    "uv option {other:?} in the receipt is not reproduced by mm-upgrade; upgrade with uv directly"
                ))
            }
        }
    }
    Ok(out)
}

/// The memtomem requirement for the upgrade: `--version V` pins `==V`; an
/// exact pin without `--version` is dropped (the user asked for the latest);
/// a range is the user's intent and is kept; unpinned stays unpinned.
pub fn target_requirement(
    main: &Requirement,
    extras: &[String],
    version: Option<&str>,
) -> Requirement {
    let specifier = match version {
        Some(v) => format!("=={v}"),
        None if main.is_exact_pin() => String::new(),
        None => main.specifier.clone(),
    };
    Requirement {
        name: PACKAGE.to_string(),
        extras: extras.to_vec(),
        specifier,
        marker: main.marker.clone(),
    }
}

/// The argv after `uv` that installs what this receipt describes, with
/// memtomem as `main`: the command the user would type, so uv writes the
/// receipt it would write for them.
pub fn install_args(receipt: Option<&Receipt>, main: &Requirement) -> Result<Vec<String>, String> {
    let mut args: Vec<String> = vec!["tool".into(), "install".into()];
    // Fresh metadata for memtomem only: a stale cached index page would pick
    // an old "latest"; a full --refresh would re-validate every dependency.
    args.push("--refresh-package".into());
    args.push(PACKAGE.into());
    if let Some(r) = receipt {
        if let Some(py) = &r.python {
            if py.starts_with('-') || py.contains('\n') {
                return Err(format!("tool.python {py:?} is not an interpreter request"));
            }
            args.push("--python".into());
            args.push(py.clone());
        }
        args.extend(option_args(&r.options)?);
        for w in &r.with {
            args.push("--with".into());
            args.push(w.pep508());
        }
    }
    args.push(main.pep508());
    Ok(args)
}

/// Extras of memtomem (`--extras` absent): from the receipt.
pub fn extras_of(env_dir: &Path) -> Vec<String> {
    read(env_dir).map(|r| r.main.extras).unwrap_or_default()
}

/// Rewrite a receipt's entry-point paths from `from_bin` to `to_bin`, as
/// text: the rest stays byte for byte what uv wrote.
pub fn relocate_text(text: &str, from_bin: &Path, to_bin: &Path) -> String {
    let from = toml_basic_string_body(&from_bin.to_string_lossy());
    let to = toml_basic_string_body(&to_bin.to_string_lossy());
    text.replace(&format!("\"{from}/"), &format!("\"{to}/"))
}

/// How a path appears inside a TOML basic string.
fn toml_basic_string_body(s: &str) -> String {
    let quoted = toml::Value::String(s.to_string()).to_string();
    quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .map(str::to_string)
        .unwrap_or_else(|| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UV_0_13: &str = r#"[tool]
requirements = [
    { name = "memtomem", extras = ["all"], specifier = "==0.6.11" },
    { name = "packaging" },
]
python = "/root/.pyenv/versions/3.12.1/bin/python3.12"
entrypoints = [
    { name = "memtomem-server", install-path = "/h/.local/bin/memtomem-server", from = "memtomem" },
    { name = "mm", install-path = "/h/.local/bin/mm", from = "memtomem" },
]

[tool.options]
exclude-newer = "2026-01-01T00:00:00Z"
"#;

    #[test]
    fn reads_what_uv_writes() {
        let r = parse(UV_0_13).unwrap();
        assert_eq!(r.main.extras, vec!["all"]);
        assert_eq!(r.main.specifier, "==0.6.11");
        assert!(r.main.is_exact_pin());
        assert_eq!(r.with[0].pep508(), "packaging");
        assert_eq!(r.entrypoints.len(), 2);
        assert_eq!(r.entrypoints[1].install_path, Path::new("/h/.local/bin/mm"));
        let main = target_requirement(&r.main, &r.main.extras, None);
        assert_eq!(main.pep508(), "memtomem[all]", "an exact pin is dropped");
        let args = install_args(Some(&r), &main).unwrap();
        assert_eq!(
            args,
            [
                "tool",
                "install",
                "--refresh-package",
                "memtomem",
                "--python",
                "/root/.pyenv/versions/3.12.1/bin/python3.12",
                "--exclude-newer",
                "2026-01-01T00:00:00Z",
                "--with",
                "packaging",
                "memtomem[all]"
            ]
        );
        let pinned = target_requirement(&r.main, &[], Some("0.6.12"));
        assert_eq!(pinned.pep508(), "memtomem==0.6.12");
    }

    #[test]
    fn a_range_is_kept_and_unpinned_stays_unpinned() {
        let range = Requirement {
            name: "memtomem".into(),
            extras: vec![],
            specifier: ">=0.6,<0.7".into(),
            marker: None,
        };
        assert_eq!(
            target_requirement(&range, &[], None).specifier,
            ">=0.6,<0.7"
        );
        let bare = Requirement {
            specifier: String::new(),
            ..range
        };
        assert_eq!(target_requirement(&bare, &[], None).pep508(), "memtomem");
    }

    #[test]
    fn hostile_receipts_are_refused_not_passed_to_uv() {
        for bad in [
            r#"[tool]
requirements = [{ name = "memtomem", extras = ["all] @ https://evil/x.whl ; x"] }]"#,
            r#"[tool]
requirements = [{ name = "memtomem", specifier = "@ https://evil/x.whl" }]"#,
            r#"[tool]
requirements = [{ name = "memtomem" }, { name = "x", url = "https://evil/x.whl" }]"#,
            r#"[tool]
requirements = [{ name = "--index-url=https://evil" }]"#,
            r#"[tool]
requirements = ["memtomem @ https://evil/x.whl"]"#,
            "[tool]\nrequirements = [{ name = \"memtomem\" }]\nentrypoints = [{ name = \"../x\", install-path = \"/x\" }]",
            "not toml [[[",
        ] {
            assert!(parse(bad).is_err(), "accepted: {bad}");
        }
        let unknown = parse("[tool]\nrequirements = [{ name = \"memtomem\" }]\n[tool.options]\nconfig-settings = 1\n").unwrap();
        let main = target_requirement(&unknown.main, &[], None);
        assert!(install_args(Some(&unknown), &main).is_err());
    }

    #[test]
    fn legacy_string_requirements() {
        let r = parse("[tool]\nrequirements = [\"memtomem[web,onnx]==0.1\"]\n").unwrap();
        assert_eq!(r.main.extras, vec!["web", "onnx"]);
        assert_eq!(r.main.specifier, "==0.1");
    }

    #[test]
    fn only_a_small_regular_file_is_read() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join(FILE);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // A FIFO with no writer would block a plain open or read forever.
        let err = read_text(tmp.path()).unwrap_err();
        assert!(err.contains("not a regular file"), "{err}");
        fs::remove_file(&fifo).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &fifo).unwrap();
        assert!(read_text(tmp.path()).is_err());
        fs::remove_file(&fifo).unwrap();
        fs::write(&fifo, vec![b'#'; (MAX_BYTES + 1) as usize]).unwrap();
        assert!(read_text(tmp.path()).unwrap_err().contains("too large"));
    }

    #[test]
    fn relocation_touches_only_entry_point_paths() {
        let text = "[tool]\nentrypoints = [\n    { name = \"mm\", install-path = \"/t/.mm-upgrade/s/.bin/mm\", from = \"memtomem\" },\n]\n";
        let out = relocate_text(
            text,
            Path::new("/t/.mm-upgrade/s/.bin"),
            Path::new("/h/.local/bin"),
        );
        assert_eq!(
            out,
            text.replace("/t/.mm-upgrade/s/.bin/", "/h/.local/bin/")
        );
    }

    proptest::proptest! {
        #[test]
        fn valid_names_never_carry_argv_or_url_syntax(s in "\\PC{0,20}") {
            if is_valid_name(&s) {
                proptest::prop_assert!(!s.starts_with('-'));
                proptest::prop_assert!(!s.contains(['@', '/', ':', ' ', ';', '[', ']']));
            }
        }
    }
}
