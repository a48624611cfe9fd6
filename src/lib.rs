//! `mm-upgrade`: upgrade memtomem without leaving old code running.
//!
//! The pipeline reads like the job: [`discover`] → [`plan`] → [`stop`] →
//! [`clean`] → [`install`] → [`verify`], sequenced by [`run`]. Side effects go
//! through [`sys`] (processes, `/proc`) and [`install::Uv`] (the uv binary), so
//! the logic is testable without real processes.
//!
//! Invariants: a process is signalled only when `/proc` proves it holds the
//! lock of a memtomem pid file (or runs code of this tool's installation);
//! never pid ≤ 1, never ourselves or an ancestor, never a process group;
//! files are removed only while we hold their lock.

pub mod clean;
pub mod cli;
pub mod dblock;
pub mod discover;
pub mod exit;
pub mod install;
pub mod interrupt;
pub mod lock;
pub mod paths;
pub mod pidfile;
pub mod plan;
pub mod receipt;
pub mod rollback;
pub mod run;
pub mod status;
pub mod stop;
pub mod sys;
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
            clap_complete::generate(
                *shell,
                &mut cli::Cli::command(),
                "mm-upgrade",
                &mut std::io::stdout(),
            );
            exit::OK
        }
        Some(cli::Command::Man) => {
            use clap::CommandFactory;
            match clap_mangen::Man::new(cli::Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => exit::OK,
                Err(e) => {
                    eprintln!("error: cannot write the man page: {e}");
                    exit::INTERNAL
                }
            }
        }
        Some(cli::Command::Status(_)) => status::run(&cli.common),
        None => match cli::Settings::resolve(&cli.upgrade, &cli.common) {
            Err(msg) => {
                eprintln!("error: {msg}");
                exit::USAGE
            }
            Ok(settings) => match ui::Ui::new(settings.json, settings.events.as_deref()) {
                Err(e) => {
                    eprintln!("error: cannot open events file: {e}");
                    exit::USAGE
                }
                Ok(mut ui) => run::upgrade(&settings, &mut ui),
            },
        },
    };
    ExitCode::from(code)
}
