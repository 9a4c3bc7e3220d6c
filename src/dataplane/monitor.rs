//! Kernel change notifications that should wake the agent. Adapter over rtnetlink's
//! multicast groups; the loop coalesces bursts, so every relevant message just notifies.
//!
//! - a link or one of wgmesh's routes deleted (by hand, or with its interface): the
//!   reconcile loop repairs it;
//! - an address deleted: the node may have moved to a new underlay address, and the
//!   API connections bound to the old one are dead without knowing it (no RST ever
//!   comes), so the agent reconnects.

use std::sync::Arc;

use futures::StreamExt;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::MulticastGroup;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::routes::PROTO_WGMESH;

/// Who to wake for what.
#[derive(Clone, Default)]
pub struct Wakers {
    /// Something the reconcile loop owns changed.
    pub changed: Arc<Notify>,
    /// A local address went away.
    pub address_removed: Arc<Notify>,
}

/// Starts watching; the task ends when the returned handle is aborted.
pub fn spawn(wakers: Wakers) -> std::io::Result<JoinHandle<()>> {
    let (conn, _handle, mut messages) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
    ])?;
    Ok(tokio::spawn(async move {
        let conn = tokio::spawn(conn);
        while let Some((msg, _)) = messages.next().await {
            match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(_)) => {
                    wakers.changed.notify_one()
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(r))
                    if u8::from(r.header.protocol) == PROTO_WGMESH =>
                {
                    wakers.changed.notify_one()
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelAddress(_)) => {
                    wakers.address_removed.notify_one();
                    wakers.changed.notify_one();
                }
                _ => {}
            }
        }
        conn.abort();
    }))
}
