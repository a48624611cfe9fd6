//! The runner's own look at /proc while the upgrader runs, independent of the
//! upgrader's account: when each old-generation process was last seen alive and first
//! seen gone, and what ran right after `switched` appeared in mm-upgrade's `--events`.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::Managed;
use crate::sys;

/// The process table as the watcher saw it right after mm-upgrade logged `switched`.
#[derive(Clone, Debug, Default)]
pub(super) struct SwitchSnapshot {
    /// mono_ns of the `switched` record, and of the moment the watcher looked.
    pub switched: u64,
    pub seen: u64,
    /// Every live descendant of the runner then (pid, command line).
    pub alive: Vec<(i32, String)>,
}

/// Watches the old generation and mm-upgrade's `--events` file while the upgrader runs
/// (every millisecond): when each managed process was last seen alive and first seen
/// gone in /proc (the runner's own view, independent of the upgrader's, as the fake uv's
/// check at install time was), and what ran right after the `switched` record appeared.
/// "Seen alive after `switched` was logged" means alive at the switch (the record is
/// written after the exchange): never a false alarm.
pub(super) struct SwitchWatch {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<Watched>>,
}

#[derive(Clone, Debug, Default)]
pub(super) struct Watched {
    /// pid -> mono_ns just before the last look that found it alive.
    pub last_alive: HashMap<i32, u64>,
    /// pid -> mono_ns just after the first look that found it gone.
    pub first_gone: HashMap<i32, u64>,
    pub at_switch: Option<SwitchSnapshot>,
}

impl SwitchWatch {
    pub(super) fn start(events: PathBuf, managed: Vec<Managed>) -> SwitchWatch {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("switch-watch".into())
            .spawn(move || {
                let mut w = Watched::default();
                let mut offset = 0usize;
                let mut pending = String::new();
                loop {
                    // Read the flag first: after it is set, one last look.
                    let last = flag.load(std::sync::atomic::Ordering::SeqCst);
                    for m in &managed {
                        if w.first_gone.contains_key(&m.pid) {
                            continue;
                        }
                        let before = sys::mono_ns();
                        if testkit::proc::live_start(m.pid) == Some(m.start) {
                            w.last_alive.insert(m.pid, before);
                        } else {
                            w.first_gone.insert(m.pid, sys::mono_ns());
                        }
                    }
                    if w.at_switch.is_none() {
                        if let Ok(bytes) = fs::read(&events) {
                            if bytes.len() > offset {
                                pending.push_str(&String::from_utf8_lossy(&bytes[offset..]));
                                offset = bytes.len();
                            }
                        }
                        while let Some(nl) = pending.find('\n') {
                            let line: String = pending.drain(..=nl).collect();
                            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                                continue;
                            };
                            if v.get("event").and_then(Value::as_str) == Some("switched") {
                                w.at_switch = Some(SwitchSnapshot::take(
                                    v.get("mono_ns").and_then(Value::as_u64).unwrap_or(0),
                                ));
                                break;
                            }
                        }
                    }
                    if last {
                        return w;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
            .ok();
        SwitchWatch { stop, handle }
    }

    /// Stop watching (the upgrader has exited) and return what was seen.
    pub(super) fn finish(mut self) -> Watched {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for SwitchWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl SwitchSnapshot {
    fn take(switched: u64) -> SwitchSnapshot {
        let seen = sys::mono_ns();
        let me = std::process::id() as i32;
        let alive = sys::descendants(me)
            .into_iter()
            .map(|d| (d.pid, sys::cmdline(d.pid)))
            .collect();
        SwitchSnapshot {
            switched,
            seen,
            alive,
        }
    }
}
