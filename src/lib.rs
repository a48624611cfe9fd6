//! `mm-upgrade`: upgrade memtomem without leaving old code running.
//!
//! The pipeline reads like the job: [`discover`] → [`plan`] → [`stop`] →
//! [`clean`] → [`install`] → [`verify`], sequenced by [`run`]. Side effects go
//! through [`sys`] (processes, `/proc`) and [`install::Uv`] (the uv binary), so
//! the logic is testable without real processes.
//!
//! Invariants: a process is signalled only with a proof of [`proof`] (it
//! holds the lock of a memtomem pid file, or runs this installation's
//! interpreter on one of its entry points); never pid ≤ 1, never ourselves
//! or an ancestor, never a process group; files are removed only while we
//! hold their lock.

pub mod clean;
pub mod cli;
pub mod dblock;
pub mod discover;
pub mod error;
pub mod exit;
pub mod foreign;
pub mod hostconfig;
pub mod hosts;
pub mod install;
pub mod interrupt;
pub mod paths;
pub mod pidfile;
pub mod plan;
pub mod platform;
pub mod progress;
pub mod proof;
pub mod reap;
pub mod receipt;
pub mod recover;
pub mod run;
pub mod status;
pub mod stop;
pub mod sys;
#[cfg(test)]
mod testutil;
pub mod txn;
pub mod ui;
pub mod verify;
pub mod version;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::CommandFactory;

/// The whole program: parse, resolve, act, map to an exit code.
pub fn main<I: IntoIterator<Item = OsString>>(args: I) -> ExitCode {
    let parsed = cli::Cli::command()
        .try_get_matches_from(args)
        .and_then(|m| {
            use clap::FromArgMatches;
            cli::reject_upgrade_flags_with_subcommand(&m)?;
            cli::Cli::from_arg_matches(&m)
        });
    let cli = match parsed {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    let code = match &cli.command {
        Some(cli::Command::Completions { shell }) => {
            use clap::CommandFactory;
            // Generated into memory: clap_complete panics on a write error.
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut cli::Cli::command(), "mm-upgrade", &mut script);
            document(&script, "the completion script")
        }
        Some(cli::Command::Man) => {
            use clap::CommandFactory;
            let mut page = Vec::new();
            match clap_mangen::Man::new(cli::Cli::command()).render(&mut page) {
                Ok(()) => document(&page, "the man page"),
                Err(e) => {
                    ui::error_line(format_args!("cannot render the man page: {e}"));
                    exit::INTERNAL
                }
            }
        }
        Some(cli::Command::Status(_)) => status::run(&cli.common),
        Some(cli::Command::Recover) => recover::run(&cli.common),
        Some(cli::Command::Reap(args)) => reap::run(&cli.common, args),
        None => match cli::Settings::resolve(&cli.upgrade, &cli.common) {
            Err(msg) => {
                ui::error_line(msg);
                exit::USAGE
            }
            Ok(settings) => match ui::Ui::new(settings.json, settings.events.as_deref()) {
                Err(e) => {
                    ui::error_line(format_args!("cannot open events file: {e}"));
                    exit::USAGE
                }
                Ok(mut ui) => run::upgrade(&settings, &mut ui),
            },
        },
    };
    ExitCode::from(code)
}

/// Print the output of `man` or `completions`: a closed pipe (`| head -1`)
/// is a quiet success, another write error a message and exit 1.
fn document(bytes: &[u8], what: &str) -> u8 {
    match ui::document(bytes) {
        Ok(()) => exit::OK,
        Err(e) => {
            ui::error_line(format_args!("cannot write {what}: {e}"));
            exit::INTERNAL
        }
    }
}
