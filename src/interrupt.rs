//! Ctrl-C, SIGTERM and SIGHUP: honoured at once before anything has changed,
//! deferred from the first signal to a server until the install is done, so
//! an interrupt never leaves servers stopped and memtomem half-installed.

use std::sync::atomic::{AtomicI32, Ordering};

static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    RECEIVED.store(sig, Ordering::SeqCst);
}

/// Catch SIGINT, SIGTERM and SIGHUP for the rest of the run. No SA_RESTART:
/// a blocking `poll` returns EINTR, so waits notice the interrupt at once.
pub fn install() {
    crate::sys::catch_signals(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP], on_signal);
}

/// The signal received, if any.
pub fn requested() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

pub fn name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}
