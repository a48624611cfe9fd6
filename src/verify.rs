//! After the switch: which processes are of the old generation? (The new
//! release was proven before anything stopped: [`crate::txn::prove`].)

use crate::discover::{Instance, Inventory};
use crate::proof;

/// Split live targets into old (started no later than the install finished)
/// and new generation. Start times come from `/proc` in boot-clock ticks, not
/// from payload stamps, so a file cannot make an old process look new. A
/// process that started within the install's own tick counts as old.
pub fn split_generations(inv: &Inventory, installed_ticks: u64) -> (Vec<Instance>, Vec<Instance>) {
    inv.instances
        .iter()
        .filter(|i| proof::proven(i))
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
