//! Exit codes: the public contract, one per class of outcome.

/// Success, a clean dry-run, or a cancel at the prompt.
pub const OK: u8 = 0;
/// An unexpected internal error.
pub const INTERNAL: u8 = 1;
/// Bad flags or values (clap's convention).
pub const USAGE: u8 = 2;
/// Refused before anything changed: incomplete or unsafe inventory, no
/// confirmation, another mm-upgrade running. Nothing was signalled or removed.
pub const REFUSED: u8 = 3;
/// Failed after something changed: a stop failed or the pre-install check
/// refused; the report says which processes were stopped and files removed.
pub const PARTIAL: u8 = 4;
/// uv is missing, timed out or failed, or the version could not be prepared.
/// When preparation fails nothing was stopped; after a failed install the
/// previous installation is restored when possible ("rolled back").
pub const INSTALL_FAILED: u8 = 5;
/// Installed, but proof failed: an old-generation process is still running,
/// a server of another installation (a plugin's pinned `uvx`, another venv)
/// runs an older version than the one installed, or the new entry point does
/// not start. `status` also uses this code when it finds stale processes or
/// such a server.
pub const VERIFY_FAILED: u8 = 6;

/// Interrupted (Ctrl-C, SIGTERM, SIGHUP) before anything changed. From the
/// first signal to a server until the install is done, an interrupt is
/// deferred, so this code never means "half-upgraded".
pub const INTERRUPTED: u8 = 130;

/// The table printed in `--help` and the README.
pub const TABLE: &str = "\
Exit codes:
  0  success, a clean dry run, or cancelled at the prompt
  2  usage error (bad flag or value); nothing was touched
  3  refused before anything changed (unverifiable or unsafe state, no confirmation, another run)
  4  failed after something changed (a stop failed); the output says what was stopped and removed
  5  install failed (uv missing, timed out or failed; or the version cannot be prepared, in which case nothing was stopped)
  6  installed, but old code remains (old-generation processes, or another installation's server on an older version) or the new version does not start (status: the same found)
  130  interrupted before anything changed (an interrupt after the first stop waits until the install is done)
`reap`: 0 the orphans were stopped (or there were none, or a dry run), 3 refused (no confirmation, another run), 4 a stop failed, 130 interrupted before anything was stopped";
