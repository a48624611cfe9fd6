//! Stage 4: remove pid files and markers, only while holding their lock and
//! only when nobody else holds it (a respawned server keeps its file).

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::discover::{Instance, StaleFile};
use crate::pidfile::{self, Unlink};
use crate::stop::StopRecord;
use crate::ui::Ui;

fn note(path: &Path, removed: &mut Vec<PathBuf>) {
    if !removed.iter().any(|p| p == path) {
        removed.push(path.to_path_buf());
    }
}

/// After stopping `targets`: remove each stopped instance's pid file (a file
/// the server already removed itself is reported as removed, as upstream
/// does) and the markers a SIGKILLed server left behind.
pub fn after_stop(
    targets: &[Instance],
    records: &[StopRecord],
    removed: &mut Vec<PathBuf>,
    warnings: &mut Vec<String>,
    ui: &mut Ui,
) {
    for inst in targets {
        let Some(pid) = inst.pid else { continue };
        let stopped = records.iter().any(|r| r.pid == pid && r.stopped());
        if !stopped {
            continue;
        }
        if let Some(src) = &inst.source {
            unlink_one(src, removed, warnings, ui, true);
            remove_markers_of(runtime_dir_of(src), pid, removed, warnings, ui);
        }
    }
}

fn remove_markers_of(
    runtime: &Path,
    pid: i32,
    removed: &mut Vec<PathBuf>,
    warnings: &mut Vec<String>,
    ui: &mut Ui,
) {
    for sub in ["presence", "instances"] {
        let dir = runtime.join(sub);
        let Ok(meta) = fs::symlink_metadata(&dir) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if pidfile::parse_marker_name(&name).is_some_and(|m| m.pid == pid as i64) {
                unlink_one(&e.path(), removed, warnings, ui, false);
            }
        }
    }
}

fn unlink_one(
    path: &Path,
    removed: &mut Vec<PathBuf>,
    warnings: &mut Vec<String>,
    ui: &mut Ui,
    report_missing: bool,
) {
    // Like upstream's stale unlink (#2595), under the lifecycle barrier held
    // shared: `mm uninstall`/`mm reset` hold it exclusive while they work.
    let _barrier = match lifecycle_shared(path) {
        Ok(b) => b,
        Err(e) => {
            warnings.push(format!("left {} in place: {e}", path.display()));
            return;
        }
    };
    match pidfile::unlink_if_stale(path) {
        Ok(Unlink::Removed) => {
            ui.event("unlinked", json!({"path": path, "how": "lock-then-unlink"}));
            note(path, removed);
        }
        Ok(Unlink::Missing) => {
            if report_missing {
                ui.event("unlinked", json!({"path": path, "how": "removed by its owner"}));
                note(path, removed);
            }
        }
        Ok(Unlink::Held) => warnings.push(format!(
            "Skipping pid-file unlink — {} is now held by a freshly started writer (likely an auto-restart from your MCP client). Leaving its live lock intact.",
            path.display()
        )),
        Ok(Unlink::Replaced) => warnings.push(format!(
            "Skipping pid-file unlink — {} was replaced after the re-probe. Leaving it intact.",
            path.display()
        )),
        Err(e) => warnings.push(format!("failed to remove stale pid file {}: {e}", path.display())),
    }
}

/// The runtime dir a pid file or marker belongs to: its parent, or for a
/// marker in `<runtime>/presence` or `<runtime>/instances`, the one above.
fn runtime_dir_of(path: &Path) -> &Path {
    let dir = path.parent().unwrap_or(Path::new("/"));
    if dir.ends_with("presence") || dir.ends_with("instances") {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    }
}

/// Hold `<runtime>/lifecycle.lock` shared (if it exists; it is never
/// created here), waiting at most 2 s as upstream does.
fn lifecycle_shared(path: &Path) -> Result<Option<fs::File>, String> {
    let lock = runtime_dir_of(path).join("lifecycle.lock");
    match fs::symlink_metadata(&lock) {
        Err(_) => return Ok(None),
        Ok(m) if !m.file_type().is_file() => {
            return Err(format!("{} is not a regular file", lock.display()))
        }
        Ok(_) => {}
    }
    let file = pidfile::open_nofollow(&lock)
        .map_err(|e| format!("cannot open {}: {e}", lock.display()))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match pidfile::try_flock(&file, libc::LOCK_SH) {
            Ok(true) => return Ok(Some(file)),
            Ok(false) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Ok(false) => {
                return Err(format!(
                    "{} is held exclusively (mm uninstall or mm reset is running)",
                    lock.display()
                ))
            }
            Err(e) => return Err(format!("cannot lock {}: {e}", lock.display())),
        }
    }
}

/// Remove stale (unheld) memtomem files found by discovery.
pub fn stale_files(
    stale: &[StaleFile],
    removed: &mut Vec<PathBuf>,
    warnings: &mut Vec<String>,
    ui: &mut Ui,
) {
    for s in stale {
        unlink_one(&s.path, removed, warnings, ui, false);
    }
}
