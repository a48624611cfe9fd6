//! Presence and instance markers: which live process holds each, and which
//! unlocked ones are garbage.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::pidfiles::find_holders;
use super::{list_dir, Cx, Inventory, StaleFile, MARKER_GRACE};
use crate::pidfile;
use crate::proof;
use crate::sys::{FileId, Pid, ProcStat, RunState};

pub(super) fn collect_markers(
    inv: &mut Inventory,
    dir: &Path,
    out: &mut Vec<(Pid, PathBuf)>,
    cx: &Cx,
    table: &mut Option<Vec<ProcStat>>,
) {
    let meta = match fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(_) => return,
    };
    if !meta.is_dir() {
        inv.problems.push(format!(
            "server registry: {} is not a real directory",
            dir.display()
        ));
        return;
    }
    let Ok(names) = list_dir(dir) else {
        inv.problems
            .push(format!("server registry: cannot read {}", dir.display()));
        return;
    };
    for name in names {
        let Some(marker) = pidfile::parse_marker_name(&name) else {
            continue;
        };
        let path = dir.join(&name);
        let Ok(m) = fs::symlink_metadata(&path) else {
            continue;
        };
        if !m.file_type().is_file() {
            continue;
        }
        // A second name for another file (a hard link to some program's
        // lock) proves nothing: never removed, refused if it is held.
        let linked = m.nlink() != 1;
        let Ok(file) = pidfile::open_nofollow(&path) else {
            continue;
        };
        match pidfile::try_flock(&file, libc::LOCK_EX) {
            Ok(true) if linked => pidfile::unlock(&file),
            Ok(false) if linked => inv.problems.push(format!(
                "server registry: marker {} has {} hard links (it may be another program's lock file); unverifiable, stop its holder manually",
                path.display(),
                m.nlink()
            )),
            Ok(true) => {
                pidfile::unlock(&file);
                let age = m
                    .modified()
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok());
                let pid_dead = marker.pid > 0
                    && cx
                        .os
                        .stat(marker.pid as Pid)
                        .is_none_or(|s| s.state == RunState::Zombie);
                // Unlocked and old (or its process is gone): garbage. Young
                // and unlocked: a server may be between create and lock.
                if pid_dead || age.is_some_and(|a| a > MARKER_GRACE) {
                    inv.stale.push(StaleFile {
                        path,
                        pid: Some(marker.pid),
                    });
                }
            }
            Ok(false) => {
                if marker.pid > 1 && marker.pid <= i32::MAX as i64 {
                    // The name is only a claim: require that the named
                    // process really holds the marker's lock.
                    let pid = marker.pid as Pid;
                    let id = FileId {
                        dev: m.dev(),
                        ino: m.ino(),
                    };
                    // Contended, and named by the marker's name.
                    let held_by_named = proof::holds_lock(&cx.os.open_files(pid, id), true, true);
                    if held_by_named {
                        out.push((pid, path));
                        continue;
                    }
                    let named_alive = cx
                        .os
                        .stat(pid)
                        .is_some_and(|s| s.state != RunState::Zombie);
                    let holders: Vec<Pid> = find_holders(id, cx, table)
                        .iter()
                        .map(|h| h.pid)
                        .collect();
                    if !named_alive && !holders.is_empty() {
                        // The named process exited and a child inherited the
                        // marker's lock: the holder is what is alive.
                        for h in holders {
                            out.push((h, path.clone()));
                        }
                    } else {
                        // A marker changing hands (its server in mid-exit, or
                        // a successor starting) settles: looked at again.
                        inv.unsettled = true;
                        let held = match holders.as_slice() {
                            [] => String::new(),
                            hs => format!(
                                "; the lock is held by pid {}",
                                hs.iter()
                                    .map(|h| h.to_string())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        };
                        inv.problems.push(format!(
                            "server registry: marker {} names pid {pid}, which does not hold it{held}",
                            path.display()
                        ));
                    }
                }
            }
            Err(e) => inv.problems.push(format!(
                "server registry: cannot lock {}: {e}",
                path.display()
            )),
        }
    }
}
