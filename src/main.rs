//! arborist: command-line dispatch only.

mod check;
mod cli;
mod config;
mod logs;
mod plan;
mod process;
mod report;
mod signals;
mod supervisor;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};
use supervisor::tree::RunOptions;

const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "__guardian")
    {
        process::guardian::run_guardian();
    }
    let cli = Cli::parse();
    if let Err(e) = logs::init(cli.log_format, cli.log_level.as_deref()) {
        eprintln!("arborist: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    match cli.command {
        Command::Check {
            config,
            plan,
            budget,
        } => check(&config, plan, budget),
        Command::Run {
            config,
            shutdown_report,
        } => run(
            config.unwrap_or_else(cli::default_config),
            RunOptions { shutdown_report },
        ),
    }
}

fn check(path: &std::path::Path, plan: bool, budget: Option<std::time::Duration>) -> ExitCode {
    let tree = match config::load(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    print!("{}", check::render_tree(&tree));
    if plan || budget.is_some() {
        let (text, worst) = check::render_plan(&tree);
        print!("{text}");
        if let Some(budget) = budget {
            if worst > budget {
                println!(
                    "over budget: the worst-case shutdown {} exceeds the budget {}",
                    humantime::format_duration(worst),
                    humantime::format_duration(budget)
                );
                return ExitCode::from(1);
            }
            println!(
                "within budget: worst case {} <= {}",
                humantime::format_duration(worst),
                humantime::format_duration(budget)
            );
        }
    }
    ExitCode::SUCCESS
}

fn run(path: std::path::PathBuf, options: RunOptions) -> ExitCode {
    let tree = match config::load(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("arborist: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(async {
        // Signal handlers first: nothing may start before a SIGTERM can be received.
        let signals = match signals::SignalStream::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("arborist: cannot install signal handlers: {e}");
                return 1;
            }
        };
        if let Err(e) = process::spawn::raise_nofile_limit() {
            tracing::warn!("cannot raise RLIMIT_NOFILE: {e}");
        }
        let child_events = match process::reap::start() {
            Ok(rx) => rx,
            Err(e) => {
                eprintln!("arborist: cannot become a child subreaper: {e}");
                return 1;
            }
        };
        if let Err(e) = process::guardian::start() {
            tracing::warn!("cannot start the guardian process (grandchildren may outlive a SIGKILLed arborist): {e}");
        }
        supervisor::tree::run(tree, signals, child_events, options).await
    });
    process::guardian::stop();
    // Do not wait for the runtime's idle blocking threads.
    runtime.shutdown_background();
    ExitCode::from(code.clamp(0, 255) as u8)
}
