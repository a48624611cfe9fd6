//! Command-line definition. clap stays here; the engine takes [`Settings`].

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::exit;
use crate::paths::PathEnv;

#[derive(Debug, Parser)]
#[command(
    name = "mm-upgrade",
    version,
    about = "Upgrade memtomem safely: stop every live server, reinstall with uv, prove nothing old is left.",
    long_about = "Upgrade memtomem safely.\n\nFinds every live memtomem-server and `mm web` (by their pid-file locks, \
verified in /proc), installs the target release beside the current one and proves it runs (an MCP initialize) while \
the servers still serve, stops the servers (SIGTERM, grace, SIGKILL), removes stale pid files without touching live ones, \
switches the two installations in one atomic rename (an interrupted switch is finished or undone by the next run), \
then retires any process of the old generation that a client respawned meanwhile.",
    after_help = exit::TABLE,
    // `--version` is the memtomem version to install (upstream's flag).
    disable_version_flag = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub common: Common,
    /// Print mm-upgrade's own version.
    #[arg(short = 'V', long = "self-version", action = clap::ArgAction::Version)]
    pub self_version: Option<bool>,
    #[command(flatten)]
    pub upgrade: UpgradeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List memtomem processes and whether each runs current or stale code.
    Status(StatusArgs),
    /// Finish or undo an upgrade that was interrupted (killed, power cut); a normal run does this first.
    Recover,
    /// Stop orphaned servers (their MCP host is gone), with the upgrade's proofs: a plan, then a prompt or -y.
    Reap(ReapArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) generated from this command line.
    Man,
}

#[derive(Debug, Args)]
pub struct Common {
    /// Inventory only this runtime directory instead of /tmp/memtomem-<euid> and the legacy candidates (for tests and sandboxes).
    #[arg(
        long,
        value_name = "DIR",
        env = "MM_UPGRADE_RUNTIME_DIR",
        global = true,
        help_heading = "Sandbox"
    )]
    pub runtime_dir: Option<PathBuf>,
    /// Home directory for ~/.memtomem (legacy pid file, default store) [default: $HOME].
    #[arg(
        long,
        value_name = "DIR",
        env = "MM_UPGRADE_HOME",
        global = true,
        help_heading = "Sandbox"
    )]
    pub home: Option<PathBuf>,
    /// The uv executable [default: `uv` on PATH].
    #[arg(
        long,
        value_name = "PATH",
        env = "MM_UPGRADE_UV",
        global = true,
        help_heading = "Sandbox"
    )]
    pub uv: Option<PathBuf>,
    /// Print one JSON document on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// Install this exact version (a bare PEP 440 release such as 0.6.12 or 0.7.0rc1) [default: latest].
    #[arg(long = "version", value_name = "X.Y.Z")]
    pub target_version: Option<String>,
    /// Seconds between SIGTERM and SIGKILL (accepts 5, 0.5, 500ms; at most 3600).
    #[arg(
        long,
        value_name = "SECONDS",
        default_value = "5",
        value_parser = parse_grace,
        allow_negative_numbers = true
    )]
    pub grace: Duration,
    /// Extras to install, comma-separated, or `none` [default: read from uv's receipt].
    #[arg(long, value_name = "LIST|none")]
    pub extras: Option<String>,
    /// Do not ask for confirmation.
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// Print the plan (what would be stopped, removed, installed) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Reinstall only; list the live processes that will keep running old code.
    #[arg(long)]
    pub skip_pkill: bool,
    /// No effect (kept for scripts): the new release is always staged and proven before anything stops.
    #[arg(long, hide = true)]
    pub no_prepare: bool,
    /// Seconds uv may take per call before it is stopped (more than 0, at most 3600).
    #[arg(
        long,
        value_name = "SECONDS",
        default_value = "600",
        value_parser = parse_uv_timeout,
        allow_negative_numbers = true
    )]
    pub uv_timeout: Duration,
    /// Also write JSON-lines progress events (discovered, signalled, exited, installed…) to FILE (`-` for stderr).
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// Reinstall even when the target version is the installed one (otherwise that is a no-op that stops nothing).
    #[arg(long)]
    pub reinstall: bool,
    /// Skip the MCP `initialize` handshake with the staged server (its metadata and entry points are still checked).
    #[arg(long)]
    pub no_verify: bool,
    /// No effect (kept for scripts): the rollback is the exchange back, nothing is copied.
    #[arg(long, hide = true)]
    pub no_rollback: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {}

#[derive(Debug, Args)]
pub struct ReapArgs {
    /// Do not ask for confirmation.
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// Print the plan (the orphans that would be stopped) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Seconds between SIGTERM and SIGKILL (accepts 5, 0.5, 500ms; at most 3600).
    #[arg(
        long,
        value_name = "SECONDS",
        default_value = "5",
        value_parser = parse_grace,
        allow_negative_numbers = true
    )]
    pub grace: Duration,
}

/// Upgrade-only flags make no sense with a subcommand (`--dry-run status`):
/// a usage error rather than a silently ignored flag. The shared options
/// (`--json`, `--runtime-dir`, `--home`, `--uv`) go before or after it.
pub fn reject_upgrade_flags_with_subcommand(m: &clap::ArgMatches) -> Result<(), clap::Error> {
    let Some((sub, _)) = m.subcommand() else {
        return Ok(());
    };
    let upgrade_only = [
        ("target_version", "--version"),
        ("grace", "--grace"),
        ("extras", "--extras"),
        ("yes", "--yes"),
        ("dry_run", "--dry-run"),
        ("skip_pkill", "--skip-pkill"),
        ("no_prepare", "--no-prepare"),
        ("uv_timeout", "--uv-timeout"),
        ("events", "--events"),
        ("no_verify", "--no-verify"),
        ("reinstall", "--reinstall"),
        ("no_rollback", "--no-rollback"),
    ];
    for (id, flag) in upgrade_only {
        if m.value_source(id) == Some(clap::parser::ValueSource::CommandLine) {
            return Err(<Cli as clap::CommandFactory>::command().error(
                clap::error::ErrorKind::ArgumentConflict,
                format!("{flag} applies to the upgrade, not to `{sub}`"),
            ));
        }
    }
    Ok(())
}

/// The longest `--grace` and `--uv-timeout`: an hour. A stop that waits
/// longer keeps the servers down for longer than any SIGTERM handler needs,
/// and a uv call that resolves and downloads for longer is hung (the default
/// is 600 s). The bound also keeps deadline arithmetic (`Instant` plus the
/// duration) far from overflowing.
pub const MAX_SECONDS: u64 = 3600;

/// `5`, `0.5`, `1.5s`, `500ms`: from 0 to [`MAX_SECONDS`] seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    bounded_seconds(s, true)
}

/// `--grace`: 0 (SIGKILL at once) to [`MAX_SECONDS`].
pub fn parse_grace(s: &str) -> Result<Duration, String> {
    bounded_seconds(s, true)
}

/// `--uv-timeout`: more than 0 (a zero timeout fails every uv call) and at
/// most [`MAX_SECONDS`].
pub fn parse_uv_timeout(s: &str) -> Result<Duration, String> {
    bounded_seconds(s, false)
}

fn bounded_seconds(s: &str, zero_ok: bool) -> Result<Duration, String> {
    let t = s.trim();
    let (num, per_second) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1000.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    let secs = v / per_second;
    // NaN is in no range; negative, infinite and huge values are out of it.
    (0.0..=MAX_SECONDS as f64)
        .contains(&secs)
        .then(|| Duration::from_secs_f64(secs))
        .filter(|d| zero_ok || !d.is_zero())
        .ok_or_else(|| {
            if zero_ok {
                format!("'{s}' must be from 0 to {MAX_SECONDS} seconds")
            } else {
                format!("'{s}' must be more than 0 and at most {MAX_SECONDS} seconds")
            }
        })
}

/// Everything the engine needs, resolved and validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub version: Option<String>,
    pub grace: Duration,
    pub extras: Option<Vec<String>>,
    pub yes: bool,
    pub json: bool,
    pub dry_run: bool,
    pub skip_pkill: bool,
    pub no_prepare: bool,
    pub no_verify: bool,
    pub reinstall: bool,
    pub no_rollback: bool,
    pub uv: Option<PathBuf>,
    pub uv_timeout: Duration,
    pub events: Option<PathBuf>,
    pub paths: PathEnv,
    pub path_var: Option<OsString>,
}

pub fn path_env(common: &Common) -> PathEnv {
    let home = common
        .home
        .clone()
        .or_else(|| std::env::var_os("HOME").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/"));
    PathEnv {
        euid: crate::sys::euid(),
        home,
        xdg_runtime_dir: std::env::var_os("XDG_RUNTIME_DIR"),
        tmpdir: std::env::var_os("TMPDIR").map(PathBuf::from),
        runtime_override: common.runtime_dir.clone(),
        store_env: std::env::var_os("MEMTOMEM_STORAGE__SQLITE_PATH"),
    }
}

impl Settings {
    /// Validate before anything touches the system; errors are usage errors.
    pub fn resolve(a: &UpgradeArgs, common: &Common) -> Result<Settings, String> {
        let version = a
            .target_version
            .as_deref()
            .map(crate::version::validate)
            .transpose()?;
        if let Some(dir) = &common.runtime_dir {
            if !dir.is_absolute() {
                return Err(format!(
                    "--runtime-dir {} must be an absolute path",
                    dir.display()
                ));
            }
        }
        Ok(Settings {
            version,
            grace: a.grace,
            extras: a.extras.as_deref().map(crate::install::parse_extras_flag),
            yes: a.yes,
            json: common.json,
            dry_run: a.dry_run,
            skip_pkill: a.skip_pkill,
            no_prepare: a.no_prepare,
            no_verify: a.no_verify,
            reinstall: a.reinstall,
            no_rollback: a.no_rollback,
            uv: common.uv.clone(),
            uv_timeout: a.uv_timeout,
            events: a.events.clone(),
            paths: path_env(common),
            path_var: std::env::var_os("PATH"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("400ms"), Ok(Duration::from_millis(400)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("inf").is_err());
        assert!(parse_duration("NaN").is_err());
        assert_eq!(parse_grace("0"), Ok(Duration::ZERO));
        assert_eq!(parse_grace("3600"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_grace("3600000ms"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_uv_timeout("0.001"), Ok(Duration::from_millis(1)));
        for bad in [
            "0",
            "-0",
            "0ms",
            "1e-12",
            "3601",
            "3600001ms",
            "1e19",
            "-1",
            "NaN",
            "inf",
        ] {
            let e = parse_uv_timeout(bad).unwrap_err();
            assert!(e.contains(&format!("'{bad}'")), "{e}");
        }
        for bad in ["3601", "1e19", "-1", "NaN", "-inf", "1e400"] {
            assert!(parse_grace(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
