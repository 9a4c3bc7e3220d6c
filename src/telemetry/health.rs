//! Is the data plane in place right now? Read live from the kernel on every probe.
//! Adapter.

use crate::dataplane::{firewall, routes};
use crate::mesh::MeshPlan;
use crate::netlink::Netlink;

/// Ok when the mesh interface is up, every planned route is installed and the nftables
/// table is the planned one.
pub(super) async fn data_plane(interface: &str, plan: &MeshPlan) -> Result<(), String> {
    let nl = Netlink::connect().map_err(|e| e.to_string())?;
    let link = match nl.link_by_name(interface).await {
        Ok(Some(l)) if l.up => l,
        Ok(Some(_)) => return Err(format!("{interface} is down")),
        Ok(None) => return Err(format!("{interface} does not exist")),
        Err(e) => return Err(e.to_string()),
    };
    let missing = routes::missing(&nl, &routes::desired(plan, Some(link.index)))
        .await
        .map_err(|e| e.to_string())?;
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(ToString::to_string).collect();
        return Err(format!("routes missing: {}", list.join(", ")));
    }
    let want = firewall::fingerprint(&plan.firewall);
    let have = tokio::task::spawn_blocking(firewall::installed_fingerprint)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    if have.as_deref() != Some(want.as_str()) {
        return Err(format!(
            "nftables table {} missing or outdated",
            firewall::TABLE
        ));
    }
    Ok(())
}
