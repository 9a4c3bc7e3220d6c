//! The node's mesh routes: each remote pod CIDR via the mesh interface with the local
//! gateway as source, and an unreachable route for each cluster CIDR. Adapter.
//!
//! wgmesh marks its routes with its own routing protocol number, so reconciling lists
//! exactly what it owns, adds what is missing and removes what is no longer planned,
//! and never touches anyone else's routes.

use std::collections::BTreeSet;

use ipnet::IpNet;

use crate::mesh::MeshPlan;
use crate::netlink::{Netlink, Result, Route, RouteKind};

/// RTPROT value of wgmesh's routes (`ip route show proto 87`); unused by iproute2's
/// well-known protocols.
pub const PROTO_WGMESH: u8 = 87;

/// What a reconcile pass changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<IpNet>,
    pub removed: Vec<IpNet>,
}

/// The identity of a route for comparison: the kernel adds details (metrics, flags,
/// `dev lo` on IPv6 unreachable routes) that are not ours to compare.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    dst: IpNet,
    kind: RouteKind,
    oif: Option<u32>,
    src: Option<std::net::IpAddr>,
}

fn key(r: &Route) -> Key {
    match r.kind {
        RouteKind::Unicast => Key {
            dst: r.dst,
            kind: r.kind,
            oif: r.oif,
            src: r.pref_src,
        },
        _ => Key {
            dst: r.dst,
            kind: r.kind,
            oif: None,
            src: None,
        },
    }
}

/// The routes `plan` asks for, with the mesh interface at `mesh_index` (its routes are
/// left out while the interface is missing: the unreachable routes then catch the
/// traffic).
pub fn desired(plan: &MeshPlan, mesh_index: Option<u32>) -> Vec<Route> {
    let mut out = Vec::new();
    if let Some(index) = mesh_index {
        for r in &plan.routes {
            out.push(Route {
                dst: r.dst,
                kind: RouteKind::Unicast,
                gateway: None,
                oif: Some(index),
                pref_src: r.src,
                protocol: PROTO_WGMESH,
                metric: None,
            });
        }
    }
    for dst in &plan.unreachable {
        out.push(Route {
            dst: *dst,
            kind: RouteKind::Unreachable,
            gateway: None,
            oif: None,
            pref_src: None,
            protocol: PROTO_WGMESH,
            metric: None,
        });
    }
    out
}

/// Makes the kernel's wgmesh routes equal to `want`.
pub async fn reconcile(nl: &Netlink, want: &[Route]) -> Result<Changes> {
    let mut have: Vec<Route> = nl.routes(false).await?;
    have.extend(nl.routes(true).await?);
    have.retain(|r| r.protocol == PROTO_WGMESH);
    let want_keys: BTreeSet<Key> = want.iter().map(key).collect();
    let have_keys: BTreeSet<Key> = have.iter().map(key).collect();
    let mut changes = Changes::default();
    for r in have.iter().filter(|r| !want_keys.contains(&key(r))) {
        if nl.delete_route(r).await? {
            changes.removed.push(r.dst);
        }
    }
    for r in want.iter().filter(|r| !have_keys.contains(&key(r))) {
        nl.replace_route(r).await?;
        changes.added.push(r.dst);
    }
    Ok(changes)
}

/// The planned routes the kernel does not have (for readiness).
pub async fn missing(nl: &Netlink, want: &[Route]) -> Result<Vec<IpNet>> {
    let mut have: Vec<Route> = nl.routes(false).await?;
    have.extend(nl.routes(true).await?);
    let have_keys: BTreeSet<Key> = have
        .iter()
        .filter(|r| r.protocol == PROTO_WGMESH)
        .map(key)
        .collect();
    Ok(want
        .iter()
        .filter(|r| !have_keys.contains(&key(r)))
        .map(|r| r.dst)
        .collect())
}

/// Removes every wgmesh route (uninstall).
pub async fn remove_all(nl: &Netlink) -> Result<usize> {
    reconcile(nl, &[]).await.map(|c| c.removed.len())
}
