//! `wgmesh-wg`: the wgmesh WireGuard data plane as a standalone userspace implementation,
//! with wireguard-go's command line (usable as `WG_QUICK_USERSPACE_IMPLEMENTATION`).
//! Argument parsing and wiring only; the logic is in `wgmesh::wireguard::daemon`.

use clap::Parser;
use wgmesh::wireguard::daemon::{self, Options};

/// Userspace WireGuard: creates TUN interface IFNAME, configured with wg(8) over
/// /var/run/wireguard/IFNAME.sock.
#[derive(Debug, Parser)]
#[command(name = "wgmesh-wg", version, about, long_about = None)]
struct Cli {
    /// Stay in the foreground (also WG_PROCESS_FOREGROUND=1).
    #[arg(short, long)]
    foreground: bool,
    /// The interface to create.
    #[arg(value_name = "IFNAME")]
    interface: String,
}

fn main() {
    let cli = Cli::parse();
    daemon::init_logging();
    let code = daemon::run(&Options {
        interface: cli.interface,
        foreground: cli.foreground,
    });
    std::process::exit(code);
}
