//! Stage 6: prove the result. Which processes are of the old generation,
//! and does the new entry point start?

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use crate::discover::{Instance, Inventory};
use crate::install::{run_bounded, UvError};

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
    let what = format!("{} --help", exe.display());
    let home = [(OsString::from("HOME"), home.as_os_str().to_os_string())];
    // Held to its end like the install: it only reads.
    match run_bounded(
        &exe,
        false,
        &what,
        &["--help".into()],
        &home,
        Duration::from_secs(60),
    ) {
        Ok(_) => Ok(format!("{what} exited 0")),
        Err(UvError::Failed { code, stderr, .. }) => {
            let last = stderr.lines().last().unwrap_or("");
            Err(format!(
                "the new entry point {} failed to start (exit status: {code}): {last}",
                exe.display()
            ))
        }
        Err(UvError::Timeout { .. }) => Err(format!(
            "the new entry point {} did not finish --help within 60s",
            exe.display()
        )),
        Err(e) => Err(format!(
            "cannot start the new entry point {}: {e}",
            exe.display()
        )),
    }
}
