//! The `svcproxy` command: parse the command line, set up logging, run.

use std::process::ExitCode;

use clap::Parser;
use svcproxy_agent::cli::Cli;
use tracing_subscriber::EnvFilter;

/// glibc's malloc spent over half of a large sync in its own bookkeeping (encoding a
/// 10k-service ruleset: 0.97 s with glibc, see docs/design.md for the figure with this).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_level, cli.log_json);
    let code = cli.execute(&mut std::io::stdout().lock(), &mut std::io::stderr().lock());
    ExitCode::from(code)
}

fn init_logging(level: &str, json: bool) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.without_time().init();
    }
}
