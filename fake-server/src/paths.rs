//! Runtime-dir rules (contract §1.1–1.2) and the store digest (§1.5).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Where a peer meets its servers: explicit override, then memtomem's own test override
/// (honoured only under pytest, exactly like upstream), then the canonical anchor.
pub fn resolve_runtime_dir(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if std::env::var_os("PYTEST_CURRENT_TEST").is_some() {
        if let Some(p) = std::env::var_os("_MEMTOMEM_TEST_RUNTIME_DIR") {
            if !p.is_empty() {
                return PathBuf::from(p);
            }
        }
    }
    resolve_runtime_dir_canonical()
}

/// Validates an existing directory the way `validate_runtime_dir` does, returning the
/// stable short reason on failure. `Ok(false)` means "absent".
pub fn validate(dir: &Path) -> Result<bool, String> {
    let md = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(format!("cannot stat ({e})")),
    };
    if md.file_type().is_symlink() {
        return Err("symlink".into());
    }
    if !md.is_dir() {
        return Err("not a directory".into());
    }
    if md.uid() != nix::unistd::geteuid().as_raw() {
        return Err(format!("owned by uid {}", md.uid()));
    }
    let mode = md.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!("unsafe permissions 0o{:o}", mode & 0o777));
    }
    if mode & 0o700 != 0o700 {
        return Err(format!("missing owner access 0o{:o}", mode & 0o777));
    }
    Ok(true)
}

/// `ensure_runtime_dir_at` [0.6.12]: create 0700, force 0700 through an O_NOFOLLOW
/// descriptor, check the descriptor still names the path, then re-validate. An existing
/// directory is never chmod-ed.
pub fn ensure(dir: &Path) -> Result<(), String> {
    if validate(dir)? {
        return Ok(());
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {
            use std::os::unix::fs::OpenOptionsExt;
            let f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
                .open(dir)
                .map_err(|e| format!("cannot stat ({e})"))?;
            f.set_permissions(std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("cannot stat ({e})"))?;
            let a = f.metadata().map_err(|e| format!("cannot stat ({e})"))?;
            let b = std::fs::symlink_metadata(dir).map_err(|e| format!("cannot stat ({e})"))?;
            if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
                return Err("cannot stat (identity changed)".into());
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create ({e})")),
    }
    if validate(dir)? {
        Ok(())
    } else {
        Err("cannot stat (vanished)".into())
    }
}

/// The store path the real server would digest: `--store`, else env, else default.
pub fn default_store() -> OsString {
    match std::env::var_os("HOME") {
        Some(h) => {
            let mut s = h;
            s.push("/.memtomem/memtomem.db");
            s
        }
        None => OsString::from("~/.memtomem/memtomem.db"),
    }
}

/// `store_pid_digest`: None for `:memory:` / `file:` URIs and for any normalisation error.
/// The fake's own copy, an independent witness (see `contract`); `tests/contract_witness.rs`
/// proptests it against mm-upgrade's.
pub fn store_digest(store: &OsStr) -> Option<String> {
    let b = store.as_bytes();
    if b == b":memory:" || b.starts_with(b"file:") {
        return None;
    }
    let norm = normalise(store)?;
    let h = Sha256::digest(norm.as_os_str().as_bytes());
    Some(h.iter().take(8).map(|x| format!("{x:02x}")).collect())
}

/// `sha256(str(Path(text).expanduser().resolve()))[:16]`: the wiki commit lock's key.
pub fn path_digest(text: &OsStr) -> Option<String> {
    let norm = normalise(text)?;
    let h = Sha256::digest(norm.as_os_str().as_bytes());
    Some(h.iter().take(8).map(|x| format!("{x:02x}")).collect())
}

/// Whether the runtime dir is an override (the flag, or memtomem's test override) rather
/// than the canonical `/tmp/memtomem-<euid>`.
pub fn runtime_dir_is_override(flag: Option<&Path>) -> bool {
    resolve_runtime_dir(flag) != resolve_runtime_dir_canonical()
}

fn resolve_runtime_dir_canonical() -> PathBuf {
    PathBuf::from(format!("/tmp/memtomem-{}", nix::unistd::geteuid()))
}

/// Python `Path(text).expanduser().resolve(strict=False)` on POSIX.
pub fn normalise(text: &OsStr) -> Option<PathBuf> {
    let expanded = expanduser(text)?;
    let (p, ok) = join_realpath(OsString::new(), expanded.as_bytes(), &mut Vec::new());
    if !ok {
        // pathlib turns a symlink loop into RuntimeError, which the digest maps to None.
        return None;
    }
    Some(abspath(&p))
}

fn expanduser(text: &OsStr) -> Option<OsString> {
    let b = text.as_bytes();
    if !b.starts_with(b"~") {
        return Some(text.to_os_string());
    }
    let end = b.iter().position(|&c| c == b'/').unwrap_or(b.len());
    let home: Vec<u8> = if end == 1 {
        match std::env::var_os("HOME") {
            Some(h) => h.into_vec(),
            None => nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()??
                .dir
                .into_os_string()
                .into_vec(),
        }
    } else {
        let name = std::str::from_utf8(&b[1..end]).ok()?;
        match nix::unistd::User::from_name(name).ok()? {
            Some(u) => u.dir.into_os_string().into_vec(),
            None => return Some(text.to_os_string()),
        }
    };
    let mut home = home;
    while home.len() > 1 && home.ends_with(b"/") {
        home.pop();
    }
    let mut out = home;
    out.extend_from_slice(&b[end..]);
    Some(OsString::from_vec(out))
}

fn pjoin(a: &[u8], b: &[u8]) -> Vec<u8> {
    if a.is_empty() {
        return b.to_vec();
    }
    let mut v = a.to_vec();
    if !v.ends_with(b"/") {
        v.push(b'/');
    }
    v.extend_from_slice(b);
    v
}

fn psplit(p: &[u8]) -> (Vec<u8>, Vec<u8>) {
    // posixpath.split: head keeps its slashes stripped unless it is all slashes.
    let i = p.iter().rposition(|&c| c == b'/').map_or(0, |i| i + 1);
    let (head, tail) = (&p[..i], &p[i..]);
    let mut h = head.to_vec();
    if !h.is_empty() && h.iter().any(|&c| c != b'/') {
        while h.ends_with(b"/") {
            h.pop();
        }
    }
    (h, tail.to_vec())
}

type Seen = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// A port of CPython 3.11 `posixpath._joinrealpath` with strict=False.
fn join_realpath(path: OsString, rest: &[u8], seen: &mut Seen) -> (OsString, bool) {
    let mut path = path.into_vec();
    let mut rest = rest.to_vec();
    if rest.starts_with(b"/") {
        rest.remove(0);
        path = b"/".to_vec();
    }
    while !rest.is_empty() {
        let (name, r) = match rest.iter().position(|&c| c == b'/') {
            Some(i) => (rest[..i].to_vec(), rest[i + 1..].to_vec()),
            None => (rest.clone(), Vec::new()),
        };
        rest = r;
        if name.is_empty() || name == b"." {
            continue;
        }
        if name == b".." {
            if !path.is_empty() {
                let (h, t) = psplit(&path);
                path = h;
                if t == b".." {
                    path = pjoin(&pjoin(&path, b".."), b"..");
                }
            } else {
                path = b"..".to_vec();
            }
            continue;
        }
        let newpath = pjoin(&path, &name);
        let is_link = std::fs::symlink_metadata(OsStr::from_bytes(&newpath))
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false);
        if !is_link {
            path = newpath;
            continue;
        }
        if let Some((_, resolved)) = seen.iter().find(|(k, _)| *k == newpath) {
            match resolved {
                Some(r) => {
                    path = r.clone();
                    continue;
                }
                None => return (OsString::from_vec(pjoin(&newpath, &rest)), false),
            }
        }
        seen.push((newpath.clone(), None));
        let target = match std::fs::read_link(OsStr::from_bytes(&newpath)) {
            Ok(t) => t.into_os_string().into_vec(),
            Err(_) => {
                path = newpath;
                continue;
            }
        };
        let (p, ok) = join_realpath(OsString::from_vec(path), &target, seen);
        if !ok {
            return (OsString::from_vec(pjoin(p.as_bytes(), &rest)), false);
        }
        path = p.into_vec();
        if let Some(e) = seen.iter_mut().find(|(k, _)| *k == newpath) {
            e.1 = Some(path.clone());
        }
    }
    (OsString::from_vec(path), true)
}

/// posixpath.abspath = join with cwd when relative, then normpath.
fn abspath(p: &OsStr) -> PathBuf {
    let mut b = p.as_bytes().to_vec();
    if !b.starts_with(b"/") {
        let cwd = std::env::current_dir()
            .map(|c| c.into_os_string().into_vec())
            .unwrap_or_else(|_| b"/".to_vec());
        b = pjoin(&cwd, &b);
    }
    PathBuf::from(OsString::from_vec(normpath(&b)))
}

fn normpath(p: &[u8]) -> Vec<u8> {
    if p.is_empty() {
        return b".".to_vec();
    }
    // POSIX allows exactly two leading slashes to mean something special; Python keeps them.
    let initial = if p.starts_with(b"//") && !p.starts_with(b"///") {
        2
    } else if p.starts_with(b"/") {
        1
    } else {
        0
    };
    let mut out: Vec<&[u8]> = Vec::new();
    for comp in p.split(|&c| c == b'/') {
        if comp.is_empty() || comp == b"." {
            continue;
        }
        if comp != b".."
            || (initial == 0 && out.is_empty())
            || out.last().is_some_and(|l| *l == b"..")
        {
            out.push(comp);
        } else if !out.is_empty() {
            out.pop();
        }
    }
    let mut v = vec![b'/'; initial];
    v.extend_from_slice(&out.join(&b'/'));
    if v.is_empty() {
        b".".to_vec()
    } else {
        v
    }
}

pub fn pid_file_name(digest: Option<&str>) -> String {
    match digest {
        Some(d) => format!("server-{d}.pid"),
        None => "server.pid".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normpath_like_python() {
        assert_eq!(normpath(b"/a/b/../c"), b"/a/c");
        assert_eq!(normpath(b"/../a"), b"/a");
        assert_eq!(normpath(b"//a//b/"), b"//a/b");
        assert_eq!(normpath(b"///a"), b"/a");
        assert_eq!(normpath(b"a/../../b"), b"../b");
    }

    #[test]
    fn memory_and_uri_have_no_digest() {
        assert_eq!(store_digest(OsStr::new(":memory:")), None);
        assert_eq!(store_digest(OsStr::new("file:x.db?mode=rw")), None);
    }

    #[test]
    fn resolves_symlinked_prefix_and_keeps_missing_rest() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, t.path().join("link")).unwrap();
        let canon = std::fs::canonicalize(t.path()).unwrap();
        let got = normalise(t.path().join("link/x/../y/z.db").as_os_str()).unwrap();
        assert_eq!(got, canon.join("real/y/z.db"));
    }

    #[test]
    fn symlink_loop_gives_no_digest() {
        let t = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(t.path().join("b"), t.path().join("a")).unwrap();
        std::os::unix::fs::symlink(t.path().join("a"), t.path().join("b")).unwrap();
        assert_eq!(store_digest(t.path().join("a/x.db").as_os_str()), None);
    }
}
