//! The node's guard, on its own: the unreachable routes of the guarded prefixes and
//! the nftables table whose drop rule keeps them off every interface but the mesh's.
//! Adapter.
//!
//! Two moments need the guard without a full plan: the agent's start, which installs it
//! before anything else (after a reboot the kernel has nothing while the conflist is
//! still on disk), and every CNI ADD, which refuses to give a pod a network while the
//! guard is missing ([`check`]).

use std::collections::BTreeSet;

use ipnet::IpNet;

use super::{Error, firewall, routes};
use crate::mesh::{FirewallPlan, MeshConfig, MeshPlan};
use crate::netlink::{Netlink, RouteKind};

/// Why the guard is not in place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Missing {
    #[error(
        "no unreachable route of wgmesh (proto {}) covers {subnet}",
        routes::PROTO_WGMESH
    )]
    Route { subnet: IpNet },
    #[error(
        "nftables chain inet {}/{} has no drop rule",
        firewall::TABLE,
        firewall::GUARD_CHAIN
    )]
    Firewall,
    #[error("cannot read the guard: {0}")]
    Unreadable(String),
}

/// Checks that pods with addresses in `subnets` are guarded: an unreachable route of
/// wgmesh covers each subnet (the agent's guard always covers the node's own pod
/// CIDRs, see `mesh::plan`), and the nftables guard chain has its drop rule.
pub async fn check(nl: &Netlink, subnets: impl IntoIterator<Item = IpNet>) -> Result<(), Missing> {
    let unreadable = |e: crate::netlink::Error| Missing::Unreadable(e.to_string());
    let mut have = nl.routes(false).await.map_err(unreadable)?;
    have.extend(nl.routes(true).await.map_err(unreadable)?);
    for subnet in subnets {
        let covered = have.iter().any(|r| {
            r.protocol == routes::PROTO_WGMESH
                && r.kind == RouteKind::Unreachable
                && r.dst.contains(&subnet)
        });
        if !covered {
            return Err(Missing::Route { subnet });
        }
    }
    match crate::netlink::nftables::chain_has_drop_rule(firewall::TABLE, firewall::GUARD_CHAIN) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Missing::Firewall),
        Err(e) => Err(Missing::Unreadable(format!("nftables: {e}"))),
    }
}

/// What a starting agent guards before it knows the cluster: the cluster CIDRs and
/// whatever its last-known-good plan guarded, with that plan's NAT (pods that kept
/// running across an agent restart keep reaching the outside) and NAT for every
/// cluster CIDR.
pub fn early(cfg: &MeshConfig, saved: Option<&MeshPlan>) -> (BTreeSet<IpNet>, FirewallPlan) {
    let mut prefixes: BTreeSet<IpNet> = cfg.cluster_cidrs.iter().copied().collect();
    let mut fw = match saved {
        Some(plan) => {
            prefixes.extend(plan.unreachable.iter().copied());
            plan.firewall.clone()
        }
        None => FirewallPlan {
            allowed_interfaces: [cfg.interface.clone(), cfg.bridge.clone(), "lo".to_string()]
                .into_iter()
                .collect(),
            bridge: cfg.bridge.clone(),
            mesh_interface: cfg.interface.clone(),
            ..FirewallPlan::default()
        },
    };
    fw.guarded.extend(prefixes.iter().copied());
    // A pod that gets a network before the first full plan (its CIDR is only known
    // then) must not reach the outside with its own address: masquerade every pod range.
    fw.masquerade_from.extend(
        cfg.cluster_cidrs
            .iter()
            .filter(|n| cfg.masquerade_ipv6 || n.addr().is_ipv4())
            .copied(),
    );
    (prefixes, fw)
}

/// Installs the early guard: adds the missing unreachable routes (removing none) and
/// applies the table if it differs. Returns the prefixes guarded.
pub async fn install_early(
    cfg: &MeshConfig,
    saved: Option<&MeshPlan>,
) -> Result<Vec<IpNet>, Error> {
    let (prefixes, fw) = early(cfg, saved);
    let prefixes: Vec<IpNet> = prefixes.into_iter().collect();
    let nl = Netlink::connect()?;
    routes::ensure_unreachable(&nl, &prefixes).await?;
    tokio::task::spawn_blocking(move || firewall::ensure(&fw))
        .await
        .map_err(|e| Error::Other(format!("nftables task: {e}")))?
        .map_err(|e| Error::Other(e.to_string()))?;
    Ok(prefixes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(v: &[&str]) -> BTreeSet<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn the_early_guard_covers_the_flag_and_the_saved_plan() {
        let cfg = MeshConfig {
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            ..MeshConfig::default()
        };
        let (prefixes, fw) = early(&cfg, None);
        assert_eq!(prefixes, nets(&["10.244.0.0/16"]));
        assert_eq!(fw.guarded, prefixes);
        assert!(fw.allowed_interfaces.contains("wgmesh0"));
        assert_eq!(
            fw.masquerade_from, prefixes,
            "every pod range leaves masqueraded"
        );

        let saved = MeshPlan {
            unreachable: nets(&["10.96.0.0/16", "10.244.7.0/24"]),
            firewall: FirewallPlan {
                guarded: nets(&["10.96.0.0/16", "10.244.7.0/24", "10.99.0.5/32"]),
                masquerade_from: nets(&["10.244.7.0/24"]),
                ..FirewallPlan::default()
            },
            ..MeshPlan::default()
        };
        let (prefixes, fw) = early(&cfg, Some(&saved));
        assert_eq!(
            prefixes,
            nets(&["10.96.0.0/16", "10.244.0.0/16", "10.244.7.0/24"])
        );
        assert_eq!(
            fw.guarded,
            nets(&[
                "10.96.0.0/16",
                "10.244.0.0/16",
                "10.244.7.0/24",
                "10.99.0.5/32"
            ])
        );
        assert_eq!(
            fw.masquerade_from,
            nets(&["10.244.0.0/16", "10.244.7.0/24"]),
            "pods keep their NAT"
        );

        let (prefixes, fw) = early(&MeshConfig::default(), None);
        assert!(
            prefixes.is_empty() && fw.guarded.is_empty(),
            "nothing known, nothing guarded"
        );
    }
}
