//! `pulse`: one binary, one subcommand per deployment.

mod api_cmd;
mod backfill;
mod bench;
mod cli;
mod dataflow_cmd;
mod demo;
mod freshness;
mod ingest_cmd;
mod services;
mod soak;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_tracing(&cli.global.log);
    let result = match cli.command {
        Command::Check(args) => cli::check(&cli.global, &args),
        Command::Backfill(args) => backfill::backfill(&cli.global, &args),
        Command::Topics(args) => services::topics(&cli.global, &args),
        Command::Migrate(args) => services::migrate(&cli.global, &args),
        Command::Sink(args) => services::sink(&cli.global, &args),
        Command::Dataflow(args) => dataflow_cmd::dataflow(&cli.global, &args),
        Command::Demo(args) => demo::demo(&cli.global, &args),
        Command::Bench(args) => bench::run(&cli.global, args),
        Command::Api(args) => api_cmd::api(&cli.global, &args),
        Command::Ingest(args) => ingest_cmd::ingest(&cli.global, &args),
        Command::Loadgen(args) => ingest_cmd::loadgen(&cli.global, &args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
