//! Stage 6: prove the result. Which processes are of the old generation,
//! and does the new entry point start?

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::discover::{Instance, Inventory};

/// Split live targets into old (started no later than the install finished)
/// and new generation. Start times come from `/proc` in boot-clock ticks, not
/// from payload stamps, so a file cannot make an old process look new. A
/// process that started within the install's own tick counts as old.
pub fn split_generations(inv: &Inventory, installed_ticks: u64) -> (Vec<Instance>, Vec<Instance>) {
    inv.targets()
        .cloned()
        .partition(|i| i.start_ticks <= installed_ticks)
}

/// Inventory problems that concern the old generation (or cannot be dated).
/// A lock whose holder started after the install is new code, and is not a
/// reason to call the cleanup incomplete.
pub fn old_generation_problems(inv: &Inventory, installed_ticks: u64) -> Vec<String> {
    let mut out: Vec<String> = inv.problems.clone();
    for i in &inv.instances {
        let Some(p) = &i.problem else { continue };
        let new_gen = i.pid.is_some() && i.start_ticks > installed_ticks;
        if !new_gen && !out.contains(p) {
            out.push(p.clone());
        }
    }
    out
}

/// Run the new `memtomem-server --help` (bounded, stdin closed): it imports
/// the package, so it fails if the new installation is broken. It opens no
/// store and writes no pid file.
pub fn entry_point_starts(bin_dir: &Path, home: &Path) -> Result<String, String> {
    let exe = bin_dir.join("memtomem-server");
    if !exe.exists() {
        return Err(format!(
            "the new entry point {} does not exist after the install",
            exe.display()
        ));
    }
    let mut child = Command::new(&exe)
        .arg("--help")
        .env("HOME", home)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the new entry point {}: {e}", exe.display()))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => {
                return Ok(format!("{} --help exited 0", exe.display()))
            }
            Ok(Some(status)) => {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                let last = err.lines().last().unwrap_or("").to_string();
                return Err(format!(
                    "the new entry point {} failed to start ({status}): {last}",
                    exe.display()
                ));
            }
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the new entry point {} did not finish --help within 60s",
                    exe.display()
                ));
            }
        }
    }
}
