//! Where memtomem keeps its runtime state (contract §1): the canonical runtime
//! directory, the legacy candidates, its validation rules, and the store digest
//! that names `server-<digest>.pid`.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

/// The canonical rendezvous directory: literally `/tmp/memtomem-<euid>`,
/// whatever `TMPDIR` or `XDG_RUNTIME_DIR` say (#2037).
pub fn canonical_runtime_dir(euid: u32) -> PathBuf {
    PathBuf::from(format!("/tmp/memtomem-{euid}"))
}

/// Why a runtime directory is not trusted. The texts are upstream's stable
/// short reasons.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirProblem {
    #[error("cannot stat ({0})")]
    CannotStat(String),
    #[error("symlink")]
    Symlink,
    #[error("not a directory")]
    NotDirectory,
    #[error("owned by uid {0}")]
    WrongOwner(u32),
    #[error("unsafe permissions 0o{0:o}")]
    UnsafePermissions(u32),
    #[error("missing owner access 0o{0:o}")]
    MissingOwnerAccess(u32),
}

/// Validate an existing runtime directory. `Ok(false)` means it is absent.
pub fn validate_runtime_dir(path: &Path, euid: u32) -> Result<bool, DirProblem> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(DirProblem::CannotStat(format!("{:?}", e.kind()))),
    };
    if meta.file_type().is_symlink() {
        return Err(DirProblem::Symlink);
    }
    if !meta.is_dir() {
        return Err(DirProblem::NotDirectory);
    }
    if meta.uid() != euid {
        return Err(DirProblem::WrongOwner(meta.uid()));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(DirProblem::UnsafePermissions(mode));
    }
    if mode & 0o700 != 0o700 {
        return Err(DirProblem::MissingOwnerAccess(mode));
    }
    Ok(true)
}

/// A runtime directory to inventory, and whether it is the canonical one
/// (which fails closed) or a legacy candidate (skipped with a warning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeDir {
    pub path: PathBuf,
    pub canonical: bool,
}

/// The environment that decides paths, captured once so tests can supply
/// their own instead of the process environment.
#[derive(Debug, Clone, Default)]
pub struct PathEnv {
    pub euid: u32,
    pub home: PathBuf,
    pub xdg_runtime_dir: Option<OsString>,
    pub tmpdir: Option<PathBuf>,
    /// `--runtime-dir`: the only directory inventoried, for tests and sandboxes.
    pub runtime_override: Option<PathBuf>,
    pub store_env: Option<OsString>,
}

impl PathEnv {
    /// The ordered, de-duplicated candidate list (contract §1.3).
    pub fn runtime_dirs(&self) -> Vec<RuntimeDir> {
        if let Some(dir) = &self.runtime_override {
            return vec![RuntimeDir {
                path: dir.clone(),
                canonical: true,
            }];
        }
        let euid = self.euid;
        let mut out = vec![RuntimeDir {
            path: canonical_runtime_dir(euid),
            canonical: true,
        }];
        let tempdir_form = self.tempdir().join(format!("memtomem-{euid}"));
        let env_derived = match &self.xdg_runtime_dir {
            Some(x) if !x.is_empty() && is_safe_dir(Path::new(x), euid) => {
                Path::new(x).join("memtomem")
            }
            _ => tempdir_form.clone(),
        };
        let mut push = |p: PathBuf| {
            if !out.iter().any(|d| d.path == p) {
                out.push(RuntimeDir {
                    path: p,
                    canonical: false,
                });
            }
        };
        push(env_derived);
        push(tempdir_form);
        let run_user = PathBuf::from(format!("/run/user/{euid}"));
        if is_safe_dir(&run_user, euid) {
            push(run_user.join("memtomem"));
        }
        out
    }

    /// Python's `tempfile.gettempdir()` order, without its writability probe.
    fn tempdir(&self) -> PathBuf {
        if let Some(t) = &self.tmpdir {
            if t.is_dir() {
                return t.clone();
            }
        }
        ["/tmp", "/var/tmp", "/usr/tmp"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_dir())
            .unwrap_or_else(|| PathBuf::from("/tmp"))
    }

    /// The directory new runtime files (our serialisation lock) go in.
    pub fn primary_runtime_dir(&self) -> PathBuf {
        self.runtime_override
            .clone()
            .unwrap_or_else(|| canonical_runtime_dir(self.euid))
    }

    /// The configured store path text, before normalisation.
    pub fn store_text(&self) -> String {
        match &self.store_env {
            Some(s) if !s.is_empty() => s.to_string_lossy().into_owned(),
            _ => self
                .home
                .join(".memtomem/memtomem.db")
                .to_string_lossy()
                .into_owned(),
        }
    }

    /// `~/.memtomem/.server.pid`, the pre-#2003 legacy pid path.
    pub fn legacy_pid_path(&self) -> PathBuf {
        self.home.join(".memtomem/.server.pid")
    }

    /// The store database path, `~` expanded, for the write-lock probe.
    pub fn store_path(&self) -> Option<PathBuf> {
        let text = self.store_text();
        if text == ":memory:" || text.starts_with("file:") {
            return None;
        }
        Some(expand_user(&text, &self.home))
    }
}

fn is_safe_dir(path: &Path, euid: u32) -> bool {
    matches!(validate_runtime_dir(path, euid), Ok(true))
}

fn expand_user(text: &str, home: &Path) -> PathBuf {
    if text == "~" {
        home.to_path_buf()
    } else if let Some(rest) = text.strip_prefix("~/") {
        // Python: home + "//x" normalises to home/x; a join would make "/x" absolute.
        home.join(rest.trim_start_matches('/'))
    } else {
        PathBuf::from(text)
    }
}

/// Python's non-strict `Path.resolve()`: absolute, symlinks in the existing
/// prefix resolved, `..` applied to what has been resolved so far, the
/// missing tail kept as written.
pub fn resolve_non_strict(path: &Path) -> io::Result<PathBuf> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    let mut out = PathBuf::from("/");
    let mut pending: Vec<OsString> = abs
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            out.pop();
            continue;
        }
        let candidate = out.join(&part);
        match fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(io::Error::other("symlink loop"));
                }
                let target = fs::read_link(&candidate)?;
                if target.is_absolute() {
                    out = PathBuf::from("/");
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(s) => pending.push(s.to_os_string()),
                        Component::ParentDir => pending.push(OsString::from("..")),
                        _ => {}
                    }
                }
            }
            _ => out = candidate,
        }
    }
    Ok(out)
}

/// `store_pid_digest` (contract §1.5): first 16 hex of SHA-256 over the
/// normalised store path text; `None` for `:memory:`, `file:` URIs and paths
/// that cannot be normalised.
pub fn store_digest(text: &str, home: &Path) -> Option<String> {
    if text == ":memory:" || text.starts_with("file:") {
        return None;
    }
    let resolved = resolve_non_strict(&expand_user(text, home)).ok()?;
    let mut hex = format!("{:x}", Sha256::digest(resolved.to_str()?.as_bytes()));
    hex.truncate(16);
    Some(hex)
}

/// Does `name` look like a store-scoped server pid file?
pub fn is_server_pid_name(name: &str) -> bool {
    name.strip_prefix("server-")
        .and_then(|r| r.strip_suffix(".pid"))
        .is_some_and(|d| d.len() == 16 && d.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// Quote a path for a shell, so messages can be pasted.
pub fn shell_quote(p: &Path) -> String {
    let s = p.to_string_lossy();
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@%".contains(&b))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn canonical_dir_ignores_tmpdir_and_xdg() {
        let env = PathEnv {
            euid: 1234,
            xdg_runtime_dir: Some("/nonexistent-xdg".into()),
            tmpdir: Some("/nonexistent-tmp".into()),
            ..Default::default()
        };
        assert_eq!(
            env.runtime_dirs()[0].path,
            PathBuf::from("/tmp/memtomem-1234")
        );
        assert!(env.runtime_dirs()[0].canonical);
    }

    #[test]
    fn override_is_the_only_candidate() {
        let env = PathEnv {
            runtime_override: Some("/x/y".into()),
            ..Default::default()
        };
        assert_eq!(
            env.runtime_dirs(),
            vec![RuntimeDir {
                path: "/x/y".into(),
                canonical: true
            }]
        );
    }

    #[test]
    fn digest_matches_sha256_of_normalised_path() {
        let home = tempfile::tempdir().unwrap();
        let home = fs::canonicalize(home.path()).unwrap();
        let text = home.join(".memtomem/memtomem.db");
        let expected = format!("{:x}", Sha256::digest(text.to_str().unwrap().as_bytes()));
        assert_eq!(
            store_digest(text.to_str().unwrap(), &home).unwrap(),
            expected[..16]
        );
        // `~`, `..` and absolute spellings name one store.
        assert_eq!(
            store_digest("~/.memtomem/memtomem.db", &home),
            store_digest(text.to_str().unwrap(), &home)
        );
        let dotted = home.join(".memtomem/../.memtomem/memtomem.db");
        assert_eq!(
            store_digest(dotted.to_str().unwrap(), &home),
            store_digest(text.to_str().unwrap(), &home)
        );
    }

    #[test]
    fn digest_resolves_symlinks_in_existing_prefix() {
        let tmp = tempfile::tempdir().unwrap();
        let real = fs::canonicalize(tmp.path()).unwrap().join("real");
        fs::create_dir(&real).unwrap();
        symlink(&real, tmp.path().join("link")).unwrap();
        let via_link = tmp.path().join("link/store.db");
        assert_eq!(
            store_digest(via_link.to_str().unwrap(), Path::new("/")),
            store_digest(real.join("store.db").to_str().unwrap(), Path::new("/"))
        );
    }

    #[test]
    fn memory_and_uri_stores_have_no_digest() {
        assert_eq!(store_digest(":memory:", Path::new("/")), None);
        assert_eq!(store_digest("file:x.db?mode=ro", Path::new("/")), None);
    }

    #[test]
    fn validation_reasons() {
        let euid = nix::unistd::geteuid().as_raw();
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("rt");
        assert_eq!(validate_runtime_dir(&d, euid), Ok(false));
        fs::create_dir(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            validate_runtime_dir(&d, euid),
            Err(DirProblem::UnsafePermissions(0o755))
        );
        fs::set_permissions(&d, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            validate_runtime_dir(&d, euid),
            Err(DirProblem::MissingOwnerAccess(0o600))
        );
        fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(validate_runtime_dir(&d, euid), Ok(true));
        assert_eq!(
            validate_runtime_dir(&d, euid + 1),
            Err(DirProblem::WrongOwner(euid))
        );
        symlink(&d, tmp.path().join("ln")).unwrap();
        assert_eq!(
            validate_runtime_dir(&tmp.path().join("ln"), euid),
            Err(DirProblem::Symlink)
        );
        fs::write(tmp.path().join("f"), b"").unwrap();
        assert_eq!(
            validate_runtime_dir(&tmp.path().join("f"), euid),
            Err(DirProblem::NotDirectory)
        );
    }

    #[test]
    fn server_pid_names() {
        assert!(is_server_pid_name("server-bd489c62ef27560a.pid"));
        assert!(!is_server_pid_name("server-BD489C62EF27560A.pid"));
        assert!(!is_server_pid_name("server-bd489c62ef2756.pid"));
        assert!(!is_server_pid_name("server.pid"));
    }
}
