//! The `switchboard` binary: parses the command line, starts logging and the
//! runtime, and runs the chosen subcommand until it ends or a signal stops it.

use std::process::ExitCode;

use clap::Parser;
use switchboard::cli::{Cli, Command};
use switchboard::{allocator, app, logging};

fn main() -> ExitCode {
    allocator::cap_arenas();
    let cli = Cli::parse();
    // The command-line client reports a failure as one line, not a log record,
    // and logs only warnings unless asked for more.
    let client = matches!(
        cli.command,
        Command::Tail(_) | Command::Publish(_) | Command::Health(_)
    );
    let level = cli.log_filter(std::env::var("RUST_LOG").ok());
    if let Err(e) = logging::init(cli.log_format, &level) {
        eprintln!("switchboard: {e}");
        return ExitCode::from(2);
    }
    let workers = match &cli.command {
        Command::Standalone(a) => a.server.workers(),
        Command::Gateway(a) => a.server.workers(),
        Command::Collector(_) | Command::Token(_) | Command::DemoData(_) => 2,
        Command::Bench(a) => a.workers(),
        Command::BenchWorker(a) => a.workers(),
        Command::Tail(_) | Command::Publish(_) | Command::Health(_) => 1,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchboard: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app::run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !client {
                tracing::error!(error = format!("{e:#}"), "exiting");
            }
            eprintln!("switchboard: {e:#}");
            ExitCode::FAILURE
        }
    }
}
