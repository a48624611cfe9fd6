//! Reading memtomem pid files safely (contract §3): no links followed, only
//! regular files, a 4 KiB payload cap, identity checks around the lock, and a
//! payload parser that never lets 0, -1 or 1 become a signal target.
//!
//! One job per file: `payload.rs` parses what a pid file says, `probe.rs`
//! checks the file itself and its lock (and removes it only while holding
//! that lock), `marker.rs` reads presence-marker names.

mod marker;
mod payload;
mod probe;

use std::path::Path;

pub use marker::{parse_marker_name, MarkerName};
pub use payload::{format_stamp, parse_payload, parse_stamp, Payload, PAYLOAD_CAP};
#[cfg(test)]
pub(crate) use probe::probe_with;
pub use probe::{
    classify_legacy, open_nofollow, probe, try_flock, unlink_if_stale, unlock, LegacyMode, Probe,
    Unlink,
};

/// Shorten a path under HOME to `~/…` for human output.
pub fn tilde(path: &Path, home: &Path) -> String {
    match path.strip_prefix(home) {
        Ok(rest) if !home.as_os_str().is_empty() && home != Path::new("/") => {
            format!("~/{}", rest.display())
        }
        _ => path.display().to_string(),
    }
}
