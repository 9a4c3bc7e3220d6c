//! The node's mesh routes: each remote pod CIDR via the mesh interface with the local
//! gateway as source, and an unreachable route for each guarded prefix (the cluster
//! CIDRs and every known pod range, see `mesh::plan`). Adapter.
//!
//! Unreachable routes carry [`GUARD_METRIC`]: a guarded prefix may equal a node's pod
//! CIDR, and then the route through the mesh (metric 0, or IPv6's 1024) must win while
//! it exists and the unreachable one must stay beneath it for when it does not.
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

/// Metric of the unreachable routes: above the kernel's defaults for unicast routes
/// (IPv4 0, IPv6 1024), so they never displace a route of the same prefix.
pub const GUARD_METRIC: u32 = 4096;

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
    metric: u32,
}

fn key(r: &Route) -> Key {
    match r.kind {
        RouteKind::Unicast => Key {
            dst: r.dst,
            kind: r.kind,
            oif: r.oif,
            src: r.pref_src,
            // The kernel numbers unicast routes as it likes (IPv6: 1024).
            metric: 0,
        },
        _ => Key {
            dst: r.dst,
            kind: r.kind,
            oif: None,
            src: None,
            metric: r.metric.unwrap_or(0),
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
    out.extend(unreachable(&plan.unreachable));
    out
}

/// The guard's unreachable routes for `prefixes`.
pub fn unreachable<'a>(prefixes: impl IntoIterator<Item = &'a IpNet>) -> Vec<Route> {
    prefixes
        .into_iter()
        .map(|dst| Route {
            dst: *dst,
            kind: RouteKind::Unreachable,
            gateway: None,
            oif: None,
            pref_src: None,
            protocol: PROTO_WGMESH,
            metric: Some(GUARD_METRIC),
        })
        .collect()
}

/// Makes the kernel's wgmesh routes equal to `want`.
pub async fn reconcile(nl: &Netlink, want: &[Route]) -> Result<Changes> {
    let mut have: Vec<Route> = nl.routes(false).await?;
    have.extend(nl.routes(true).await?);
    have.retain(|r| r.protocol == PROTO_WGMESH);
    let want_keys: BTreeSet<Key> = want.iter().map(key).collect();
    let have_keys: BTreeSet<Key> = have.iter().map(key).collect();
    let mut changes = Changes::default();
    let have_keys = &have_keys;
    let missing = |kind: RouteKind| {
        want.iter()
            .filter(move |r| r.kind == kind && !have_keys.contains(&key(r)))
    };
    // Fail closed at every step: new unreachable routes go in before anything is
    // removed (an old guard route is replaced only once its successor is there), and
    // a unicast route is removed before its replacement is added, over the guard.
    for r in missing(RouteKind::Unreachable) {
        nl.ensure_route(r).await?;
        changes.added.push(r.dst);
    }
    for r in have.iter().filter(|r| !want_keys.contains(&key(r))) {
        if nl.delete_route(r).await? {
            changes.removed.push(r.dst);
        }
    }
    for r in missing(RouteKind::Unicast) {
        nl.replace_route(r).await?;
        changes.added.push(r.dst);
    }
    Ok(changes)
}

/// Adds the unreachable routes for `prefixes` that are missing, removing nothing: the
/// guard a starting agent puts in place before anything else.
pub async fn ensure_unreachable(nl: &Netlink, prefixes: &[IpNet]) -> Result<Vec<IpNet>> {
    let want = unreachable(prefixes);
    let have_keys = installed(nl).await?;
    let mut added = Vec::new();
    for r in want.iter().filter(|r| !have_keys.contains(&key(r))) {
        nl.ensure_route(r).await?;
        added.push(r.dst);
    }
    Ok(added)
}

/// The planned routes the kernel does not have (for readiness).
pub async fn missing(nl: &Netlink, want: &[Route]) -> Result<Vec<IpNet>> {
    let have_keys = installed(nl).await?;
    Ok(want
        .iter()
        .filter(|r| !have_keys.contains(&key(r)))
        .map(|r| r.dst)
        .collect())
}

/// The keys of wgmesh's routes in the kernel, both families.
async fn installed(nl: &Netlink) -> Result<BTreeSet<Key>> {
    let mut have: Vec<Route> = nl.routes(false).await?;
    have.extend(nl.routes(true).await?);
    Ok(have
        .iter()
        .filter(|r| r.protocol == PROTO_WGMESH)
        .map(key)
        .collect())
}

/// Removes every wgmesh route (uninstall).
pub async fn remove_all(nl: &Netlink) -> Result<usize> {
    reconcile(nl, &[]).await.map(|c| c.removed.len())
}
