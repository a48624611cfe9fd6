//! After the switch: which hosts lost their servers, and which already
//! started the new version on their own.

use std::time::{Duration, Instant};

use super::report::{Ctx, Progress};
use crate::hosts::{self, Client, Respawn};
use crate::proof::Origin;
use crate::sys::{self, Pid, Processes, RunState};

/// How long a host's new child, started since our first signal and
/// plausibly a memtomem server still importing, may take to register.
const RESPAWN_SETTLE: Duration = Duration::from_secs(3);

/// The hosts of the stopped servers; a host that started a server of this
/// installation after the switch is reported as respawned (on `version`),
/// with no next step. A host seen respawning during the upgrade, or with a
/// child running memtomem still starting up since our first signal, is
/// waited for, at most [`RESPAWN_SETTLE`]; any other host (Claude Code
/// keeps a failed server) costs no wait.
pub(super) fn settle(
    cx: &mut Ctx,
    progress: &Progress,
    installed_ticks: u64,
    version: &str,
) -> Vec<Client> {
    let os = sys::real();
    let mut clients = progress.hosts.clients(&progress.killed());
    let stopped: Vec<Pid> = progress.records.iter().map(|r| r.pid).collect();
    let deadline = Instant::now() + RESPAWN_SETTLE;
    loop {
        let inv = crate::discover::discover(&cx.scope(true));
        let registered: Vec<Pid> = inv.instances.iter().filter_map(|i| i.pid).collect();
        let fresh: Vec<Pid> = inv
            .instances
            .iter()
            // `>=`: a server started in the switch's own clock tick that
            // the retirement left running began after its last look at the
            // process table, so after the switch (the retirement counts
            // that tick as old and stops what it sees then).
            .filter(|i| i.start_ticks >= installed_ticks)
            .filter(|i| !matches!(i.installation, Origin::Other(_)))
            .filter_map(|i| i.pid)
            .collect();
        let table = os.table();
        let mut waiting = false;
        for c in clients.iter_mut().filter(|c| c.respawned.is_none()) {
            let Some(host) = c.pid else { continue };
            // Still the host we noted, not a recycled pid.
            if !table
                .iter()
                .any(|p| p.pid == host && p.start_ticks == c.start_ticks)
            {
                continue;
            }
            if let Some(&pid) = fresh.iter().find(|p| hosts::descends_from(os, **p, host)) {
                c.set_respawned(Respawn {
                    pid,
                    version: Some(version.to_string()),
                });
                continue;
            }
            // A host seen respawning during the upgrade starts its next
            // server once it sees the last one we stopped exit, which may
            // not have happened yet: worth waiting for, child or not. Any
            // other host only while a child of it that runs memtomem starts.
            let respawner = progress
                .hosts
                .respawned_since(host, progress.first_signal_ticks);
            waiting |= respawner
                || sys::descendants(&table, host).iter().any(|d| {
                    d.start_ticks >= progress.first_signal_ticks
                        && d.state != RunState::Zombie
                        && !registered.contains(&d.pid)
                        && !stopped.contains(&d.pid)
                        && !cx.protected.contains(&d.pid)
                        && os.cmdline(d.pid).iter().any(|a| a.contains("memtomem"))
                });
        }
        if !waiting || Instant::now() >= deadline {
            return clients;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
