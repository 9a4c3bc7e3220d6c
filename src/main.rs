//! `wgmesh`: the node agent and operator CLI. Argument parsing and wiring only.

use clap::{Parser, Subcommand};

/// Kubernetes pod network over an encrypted WireGuard full mesh.
#[derive(Debug, Parser)]
#[command(name = "wgmesh", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the version and exit.
    Version,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => println!("wgmesh {}", env!("CARGO_PKG_VERSION")),
    }
    Ok(())
}
