//! Routes. Adapter.

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};

use super::{Netlink, Result, errno, nl_err};
use crate::kernel_writes as writes;

/// The route types wgmesh creates and reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteKind {
    Unicast,
    /// Packets to the destination are dropped with ICMP "network unreachable".
    Unreachable,
    /// Anything else (local, broadcast, blackhole, ...), listed but never created here.
    Other,
}

/// A route in the main table, as wgmesh needs to know it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    pub dst: IpNet,
    pub kind: RouteKind,
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// Preferred source address for locally originated packets.
    pub pref_src: Option<IpAddr>,
    /// Routing protocol id (RTPROT_*): who installed the route.
    pub protocol: u8,
    pub metric: Option<u32>,
}

/// RTPROT_BOOT: what `ip route add` uses; the CNI plugin's pod routes.
pub const PROTO_BOOT: u8 = 3;
/// RTPROT_KERNEL: routes the kernel derives from addresses.
pub const PROTO_KERNEL: u8 = 2;

impl Route {
    /// A unicast route, optionally via a gateway.
    pub fn unicast(dst: IpNet, gateway: Option<IpAddr>, oif: Option<u32>, protocol: u8) -> Self {
        Self {
            dst,
            kind: RouteKind::Unicast,
            gateway,
            oif,
            pref_src: None,
            protocol,
            metric: None,
        }
    }

    fn to_message(&self) -> RouteMessage {
        let mut msg = RouteMessage::default();
        let h = &mut msg.header;
        h.address_family = match self.dst {
            IpNet::V4(_) => AddressFamily::Inet,
            IpNet::V6(_) => AddressFamily::Inet6,
        };
        h.destination_prefix_length = self.dst.prefix_len();
        h.table = RouteHeader::RT_TABLE_MAIN;
        h.protocol = RouteProtocol::from(self.protocol);
        h.kind = match self.kind {
            RouteKind::Unreachable => RouteType::Unreachable,
            _ => RouteType::Unicast,
        };
        // Scope link for directly connected destinations (no gateway, an interface),
        // universe otherwise: what `ip route` picks.
        h.scope = if self.kind == RouteKind::Unicast && self.gateway.is_none() && self.oif.is_some()
        {
            RouteScope::Link
        } else {
            RouteScope::Universe
        };
        if self.dst.prefix_len() > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(
                    self.dst.network(),
                )));
        }
        if let Some(gw) = self.gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        if let Some(oif) = self.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        if let Some(src) = self.pref_src {
            msg.attributes
                .push(RouteAttribute::PrefSource(RouteAddress::from(src)));
        }
        if let Some(metric) = self.metric {
            msg.attributes.push(RouteAttribute::Priority(metric));
        }
        msg
    }

    fn from_message(msg: &RouteMessage) -> Option<Self> {
        let h = &msg.header;
        let mut dst: Option<IpAddr> = None;
        let mut route = Route {
            dst: IpNet::default(),
            kind: match h.kind {
                RouteType::Unicast => RouteKind::Unicast,
                RouteType::Unreachable => RouteKind::Unreachable,
                _ => RouteKind::Other,
            },
            gateway: None,
            oif: None,
            pref_src: None,
            protocol: u8::from(h.protocol),
            metric: None,
        };
        let mut table = u32::from(h.table);
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(a) => dst = ip_of(a),
                RouteAttribute::Gateway(a) => route.gateway = ip_of(a),
                RouteAttribute::Oif(i) => route.oif = Some(*i),
                RouteAttribute::PrefSource(a) => route.pref_src = ip_of(a),
                RouteAttribute::Priority(p) => route.metric = Some(*p),
                RouteAttribute::Table(t) => table = *t,
                _ => {}
            }
        }
        if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
            return None;
        }
        let dst = dst.unwrap_or(match h.address_family {
            AddressFamily::Inet6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            _ => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        });
        route.dst = IpNet::new(dst, h.destination_prefix_length).ok()?;
        Some(route)
    }
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

impl Netlink {
    /// Routes of the main table for one address family (`v6 = false` for IPv4).
    pub async fn routes(&self, v6: bool) -> Result<Vec<Route>> {
        let mut query = RouteMessage::default();
        query.header.address_family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let msgs: Vec<RouteMessage> = self
            .handle()
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(nl_err("list routes", if v6 { "inet6" } else { "inet" }))?;
        Ok(msgs.iter().filter_map(Route::from_message).collect())
    }

    /// Adds a route unless an identical one exists (EEXIST is success).
    pub async fn ensure_route(&self, route: &Route) -> Result<()> {
        writes::record(writes::Kind::Route, 1);
        match self
            .handle()
            .route()
            .add(route.to_message())
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(nl_err("add route", route.dst.to_string())(e)),
        }
    }

    /// Adds or replaces the route to `route.dst` (same destination, table and metric).
    pub async fn replace_route(&self, route: &Route) -> Result<()> {
        writes::record(writes::Kind::Route, 1);
        self.handle()
            .route()
            .add(route.to_message())
            .replace()
            .execute()
            .await
            .map_err(nl_err("replace route", route.dst.to_string()))
    }

    /// Deletes a route; `Ok(false)` when it was not there.
    pub async fn delete_route(&self, route: &Route) -> Result<bool> {
        writes::record(writes::Kind::Route, 1);
        match self
            .handle()
            .route()
            .del(route.to_message())
            .execute()
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::ESRCH) => Ok(false),
            Err(e) => Err(nl_err("delete route", route.dst.to_string())(e)),
        }
    }
}
