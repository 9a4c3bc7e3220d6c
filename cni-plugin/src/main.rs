//! `wgmesh-cni`: the CNI plugin of wgmesh. Dispatch on CNI_COMMAND only; each command
//! lives in its own module.
//!
//! One binary does what the reference `bridge` + `host-local` plugins do together:
//! a veth pair per pod, its host end on the node bridge, an address from the node's pod
//! subnet(s) with built-in file-backed IPAM, and a default route via the bridge.

mod add;
mod check;
mod config;
mod del;
mod error;
mod gc;
mod ipam;
mod names;
mod reap;
mod status;

use async_trait::async_trait;
use rscni_plugin::async_cni::{Cni, Plugin};
use rscni_plugin::error::Error as CniError;
use rscni_plugin::types::{Args, CNIResult};
use rscni_plugin::version::SpecVersion;

struct WgmeshCni;

#[async_trait]
impl Cni for WgmeshCni {
    async fn add(&self, args: Args) -> Result<CNIResult, CniError> {
        add::run(&args).await.map_err(Into::into)
    }

    async fn del(&self, args: Args) -> Result<(), CniError> {
        del::run(&args).await.map_err(Into::into)
    }

    async fn check(&self, args: Args) -> Result<(), CniError> {
        check::run(&args).await.map_err(Into::into)
    }

    async fn status(&self, args: Args) -> Result<(), CniError> {
        status::run(&args).await.map_err(Into::into)
    }

    async fn gc(&self, args: Args) -> Result<(), CniError> {
        gc::run(&args).await.map_err(Into::into)
    }
}

fn main() {
    // One short-lived invocation: a single-threaded runtime is all rtnetlink needs.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wgmesh-cni: cannot start: {e}");
            std::process::exit(1);
        }
    };
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(reap::FLAG) {
        // Not a CNI invocation: the detached helper of an earlier DEL.
        if let (Some(index), Some(name)) = (args.get(2).and_then(|i| i.parse().ok()), args.get(3)) {
            let _ = runtime.block_on(reap::run(index, name));
        }
        return;
    }
    let plugin = Plugin::new(
        SpecVersion::new(1, 1, 0),
        vec![SpecVersion::new(1, 0, 0), SpecVersion::new(1, 1, 0)],
    )
    .msg(concat!(
        "wgmesh-cni ",
        env!("CARGO_PKG_VERSION"),
        ": wgmesh pod network plugin (bridge + veth + IPAM)"
    ));
    // The error JSON is already on stdout; the exit status tells the runtime it failed.
    if runtime.block_on(plugin.run(&WgmeshCni)).is_err() {
        std::process::exit(1);
    }
}
