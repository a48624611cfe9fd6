//! After uv installed at the staging path, rewrite the absolute references
//! it wrote there to name the real path: console-script shebangs and the
//! activate scripts in `bin/`, `.pth` files, and the receipt's entry points
//! (measured with uv 0.13.9 and memtomem 0.6.12: 21 files, all in `bin/`,
//! plus the receipt). Bytecode is compiled for the real path directly
//! (`compileall -s/-p`), so no `.pyc` needs rewriting.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::receipt;

/// Largest file rewritten; a console script is a few hundred bytes.
const MAX_BYTES: u64 = 1 << 20;

/// Replace `from` by `to` in one file, atomically (a sibling written and
/// renamed over, permissions kept). Returns whether the file changed.
fn rewrite(path: &Path, from: &[u8], to: &[u8]) -> Result<bool, String> {
    let meta = fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() || meta.len() > MAX_BYTES {
        return Ok(false);
    }
    let bytes = fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !contains(&bytes, from) {
        return Ok(false);
    }
    let out = replace_all(&bytes, from, to);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.relocating"));
    fs::write(&tmp, &out)
        .and_then(|()| {
            fs::set_permissions(&tmp, fs::Permissions::from_mode(meta.permissions().mode()))
        })
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|e| format!("cannot rewrite {}: {e}", path.display()))?;
    Ok(true)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fn replace_all(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

/// Make the environment at `stage_env` name `real_env` (and uv's bin dir
/// `real_bin` instead of `stage_bin`). Returns the files rewritten.
pub fn relocate(
    stage_env: &Path,
    real_env: &Path,
    stage_bin: &Path,
    real_bin: &Path,
) -> Result<Vec<String>, String> {
    use std::os::unix::ffi::OsStrExt;
    let from = stage_env.as_os_str().as_bytes();
    let to = real_env.as_os_str().as_bytes();
    let mut changed = Vec::new();
    let mut candidates: Vec<std::path::PathBuf> = Vec::new();
    for dir in [stage_env.join("bin"), stage_env.to_path_buf()] {
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            candidates.push(e.path());
        }
    }
    // Top-level .pth files of each site-packages.
    for py in fs::read_dir(stage_env.join("lib"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let site = py.path().join("site-packages");
        for e in fs::read_dir(&site).into_iter().flatten().flatten() {
            if e.path().extension().is_some_and(|x| x == "pth") {
                candidates.push(e.path());
            }
        }
    }
    let receipt_path = stage_env.join(receipt::FILE);
    for p in candidates.iter().filter(|p| **p != receipt_path) {
        if rewrite(p, from, to)? {
            changed.push(p.display().to_string());
        }
    }
    let text = receipt::read_text(stage_env)?;
    let moved = receipt::relocate_text(&text, stage_bin, real_bin);
    if moved != text {
        let tmp = stage_env.join(".uv-receipt.toml.relocating");
        fs::write(&tmp, moved)
            .and_then(|()| fs::rename(&tmp, &receipt_path))
            .map_err(|e| format!("cannot rewrite {}: {e}", receipt_path.display()))?;
        changed.push(receipt_path.display().to_string());
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shebangs_and_receipt_name_the_real_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let stage = tmp.path().join("t/.mm-upgrade/stage-1/memtomem");
        let real = tmp.path().join("t/memtomem");
        let sbin = tmp.path().join("t/.mm-upgrade/stage-1/.bin");
        let rbin = tmp.path().join("bin");
        fs::create_dir_all(stage.join("bin")).unwrap();
        fs::create_dir_all(stage.join("lib/python3.12/site-packages")).unwrap();
        let script = format!("#!{}/bin/python\nimport sys\n", stage.display());
        fs::write(stage.join("bin/mm"), &script).unwrap();
        fs::set_permissions(stage.join("bin/mm"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(stage.join("bin/plain"), "#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("/usr/bin/python3", stage.join("bin/python")).unwrap();
        fs::write(
            stage.join("uv-receipt.toml"),
            format!(
                "[tool]\nrequirements = [{{ name = \"memtomem\" }}]\nentrypoints = [{{ name = \"mm\", install-path = \"{}/mm\", from = \"memtomem\" }}]\n",
                sbin.display()
            ),
        )
        .unwrap();
        let changed = relocate(&stage, &real, &sbin, &rbin).unwrap();
        assert_eq!(changed.len(), 2, "{changed:?}");
        let mm = fs::read_to_string(stage.join("bin/mm")).unwrap();
        assert_eq!(mm, format!("#!{}/bin/python\nimport sys\n", real.display()));
        let mode = fs::metadata(stage.join("bin/mm"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            fs::read_link(stage.join("bin/python")).unwrap(),
            Path::new("/usr/bin/python3")
        );
        let r = receipt::read(&stage).unwrap();
        assert_eq!(r.entrypoints[0].install_path, rbin.join("mm"));
        // Nothing names the staging dir any more.
        for e in fs::read_dir(stage.join("bin")).unwrap().flatten() {
            if let Ok(t) = fs::read_to_string(e.path()) {
                assert!(!t.contains(".mm-upgrade"), "{}", e.path().display());
            }
        }
    }

    #[test]
    fn replace_all_handles_overlaps_and_growth() {
        assert_eq!(replace_all(b"aXaXa", b"X", b"YY"), b"aYYaYYa");
        assert_eq!(replace_all(b"abc", b"abcd", b"z"), b"abc");
    }
}
