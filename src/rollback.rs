//! A rollback copy of the installation, taken before anything is stopped, so
//! a failed install leaves a working memtomem at the same paths (venvs embed
//! absolute paths in shebangs and `pyvenv.cfg`, so restoring elsewhere would
//! not work).
//!
//! Large files are hard-linked (fast; uv replaces package files by unlinking
//! them and linking new ones from its cache), small ones are copied: uv
//! rewrites some files in place (measured: `uv-receipt.toml` keeps its inode
//! across a reinstall), and a hard link would share the new content.

use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::install::PACKAGE;

#[derive(Debug)]
pub struct Backup {
    env_dir: PathBuf,
    copy: PathBuf,
    /// Entry points in uv's bin dir that point into the environment.
    links: Vec<(PathBuf, PathBuf)>,
    root: PathBuf,
}

impl Backup {
    /// Copy `<tool_dir>/memtomem` aside (same filesystem, next to the tool dir).
    pub fn take(tool_dir: &Path, bin_dir: Option<&Path>) -> io::Result<Option<Backup>> {
        let env_dir = tool_dir.join(PACKAGE);
        if !env_dir.is_dir() {
            return Ok(None);
        }
        let parent = tool_dir.parent().unwrap_or(tool_dir);
        let root = tempfile::Builder::new()
            .prefix(".mm-upgrade-rollback-")
            .tempdir_in(parent)?
            .keep();
        let copy = root.join(PACKAGE);
        if let Err(e) = link_tree(&env_dir, &copy, false) {
            let _ = fs::remove_dir_all(&root);
            return Err(e);
        }
        let mut links = Vec::new();
        if let Some(bin) = bin_dir {
            if let Ok(entries) = fs::read_dir(bin) {
                for e in entries.flatten() {
                    if let Ok(target) = fs::read_link(e.path()) {
                        if target.starts_with(&env_dir) {
                            links.push((e.path(), target));
                        }
                    }
                }
            }
        }
        Ok(Some(Backup {
            env_dir,
            copy,
            links,
            root,
        }))
    }

    /// Put the previous installation back exactly where it was.
    pub fn restore(&self) -> io::Result<()> {
        if self.env_dir.exists() || self.env_dir.symlink_metadata().is_ok() {
            fs::remove_dir_all(&self.env_dir)?;
        }
        fs::rename(&self.copy, &self.env_dir)?;
        for (link, target) in &self.links {
            if link.symlink_metadata().is_ok() {
                fs::remove_file(link)?;
            }
            symlink(target, link)?;
        }
        Ok(())
    }
}

impl Backup {
    /// The install succeeded: delete the copy on a thread, so the deletion
    /// overlaps the post-install checks. The returned guard joins on drop,
    /// so the process never exits with a half-deleted copy.
    pub fn discard_in_background(mut self) -> Discard {
        let root = std::mem::take(&mut self.root);
        Discard(Some(std::thread::spawn(move || {
            let _ = fs::remove_dir_all(root);
        })))
    }
}

/// A rollback copy being made on another thread. Dropping it waits for the
/// copy and deletes it, so no early return leaves a half-made copy behind.
pub struct Pending(Option<std::thread::JoinHandle<io::Result<Option<Backup>>>>);

impl Pending {
    pub fn start(tool_dir: PathBuf, bin_dir: Option<PathBuf>) -> Pending {
        Pending(Some(std::thread::spawn(move || {
            Backup::take(&tool_dir, bin_dir.as_deref())
        })))
    }

    /// Wait for the copy.
    pub fn finish(mut self) -> io::Result<Option<Backup>> {
        match self.0.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("the copying thread panicked")),
            None => Ok(None),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            let _ = h.join();
        }
    }
}

/// Joins the background deletion when dropped.
pub struct Discard(Option<std::thread::JoinHandle<()>>);

impl Drop for Discard {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Backup {
    fn drop(&mut self) {
        if !self.root.as_os_str().is_empty() {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

/// Recreate `src` at `dst`: directories made, symlinks recreated; files under
/// `lib/` (package files, which uv replaces by unlink-and-link) hard-linked,
/// every other file (receipt, `pyvenv.cfg`, scripts: few, and some rewritten
/// in place) copied. A file that cannot be linked is copied.
fn link_tree(src: &Path, dst: &Path, under_lib: bool) -> io::Result<()> {
    fs::create_dir(dst)?;
    fs::set_permissions(dst, fs::metadata(src)?.permissions())?;
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        let to = dst.join(entry.file_name());
        if ft.is_dir() {
            let lib = under_lib || entry.file_name() == "lib";
            link_tree(&entry.path(), &to, lib)?;
        } else if ft.is_symlink() {
            symlink(fs::read_link(entry.path())?, &to)?;
        } else if !under_lib || fs::hard_link(entry.path(), &to).is_err() {
            fs::copy(entry.path(), &to)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_brings_back_env_and_entry_points_after_the_env_is_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let tools = tmp.path().join("tools");
        let bin = tmp.path().join("bin");
        let env = tools.join("memtomem");
        fs::create_dir_all(env.join("bin")).unwrap();
        fs::create_dir_all(&bin).unwrap();
        fs::write(env.join("bin/memtomem-server"), "#!/bin/sh\necho old\n").unwrap();
        fs::write(env.join("uv-receipt.toml"), "[tool]\n").unwrap();
        symlink(env.join("bin/memtomem-server"), bin.join("memtomem-server")).unwrap();
        let b = Backup::take(&tools, Some(&bin)).unwrap().unwrap();
        // A package file is linked; the receipt is rewritten in place by uv.
        fs::create_dir_all(env.join("lib")).unwrap();
        fs::write(env.join("lib/big.so"), vec![7u8; 100_000]).unwrap();
        let b2 = Backup::take(&tools, Some(&bin)).unwrap().unwrap();
        fs::write(env.join("uv-receipt.toml"), "[tool]\nnew = true\n").unwrap();
        b2.restore().unwrap();
        assert_eq!(
            fs::read_to_string(env.join("uv-receipt.toml")).unwrap(),
            "[tool]\n"
        );
        assert_eq!(fs::read(env.join("lib/big.so")).unwrap().len(), 100_000);
        drop(b2);
        // The worst moment: uv deleted the environment and its links, then failed.
        fs::remove_dir_all(&env).unwrap();
        fs::remove_file(bin.join("memtomem-server")).unwrap();
        fs::create_dir_all(env.join("half-built")).unwrap();
        b.restore().unwrap();
        assert_eq!(
            fs::read_to_string(bin.join("memtomem-server")).unwrap(),
            "#!/bin/sh\necho old\n"
        );
        assert!(!env.join("half-built").exists());
        let root = b.root.clone();
        drop(b);
        assert!(!root.exists());
        let b3 = Backup::take(&tools, Some(&bin)).unwrap().unwrap();
        let root = b3.root.clone();
        drop(b3.discard_in_background());
        assert!(!root.exists(), "the guard joins the deletion");
    }

    #[test]
    fn no_installation_means_no_backup() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(Backup::take(tmp.path(), None).unwrap().is_none());
    }
}
