//! Command-line surface: global options (each with its PULSE_* variable) and subcommands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use pulse_model::Spec;

#[derive(Parser)]
#[command(name = "pulse", version, about = "Real-time event analytics: HTTP/Kafka in, windowed metrics and raw events out to ClickHouse")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand understands.
#[derive(Args, Clone, Debug)]
pub struct Global {
    /// Pipeline spec file.
    #[arg(long, global = true, env = "PULSE_SPEC", default_value = "pulse.toml")]
    pub spec: PathBuf,
    /// Log filter (tracing EnvFilter syntax), e.g. `info,pulse_dataflow=debug`.
    #[arg(long, global = true, env = "PULSE_LOG", default_value = "info")]
    pub log: String,
}

impl Global {
    pub fn load_spec(&self) -> anyhow::Result<Spec> {
        load_spec(&self.spec)
    }
}

pub fn load_spec(path: &Path) -> anyhow::Result<Spec> {
    Spec::load(path).map_err(|e| anyhow::anyhow!("invalid spec:\n{e}"))
}

#[derive(Subcommand)]
pub enum Command {
    /// Validate a spec; prints every error as FILE:LINE: message.
    Check(CheckArgs),
    /// Measure Pulse's throughput.
    Bench(crate::bench::BenchArgs),
}

#[derive(Args)]
pub struct CheckArgs {
    /// Spec file to check (defaults to --spec / PULSE_SPEC).
    #[arg(env = "PULSE_SPEC", default_value = "pulse.toml")]
    pub file: PathBuf,
}

pub fn check(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    match Spec::load(&args.file) {
        Ok(spec) => {
            println!(
                "{}: ok ({} domains, {} metrics)",
                args.file.display(),
                spec.domains.len(),
                spec.metrics.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

pub fn init_tracing(filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true)
        .try_init();
}
