//! Kernel change notifications that should wake the reconcile loop: a link or one of
//! wgmesh's routes deleted (by hand, or with its interface). Adapter over rtnetlink's
//! multicast groups; the loop coalesces bursts, so every relevant message just
//! notifies.

use std::sync::Arc;

use futures::StreamExt;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::MulticastGroup;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::routes::PROTO_WGMESH;

/// Starts watching; the task ends when the returned handle is aborted or dropped with
/// its owner.
pub fn spawn(changed: Arc<Notify>) -> std::io::Result<JoinHandle<()>> {
    let (conn, _handle, mut messages) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
    ])?;
    Ok(tokio::spawn(async move {
        let conn = tokio::spawn(conn);
        while let Some((msg, _)) = messages.next().await {
            let relevant = match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(_)) => true,
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(r)) => {
                    u8::from(r.header.protocol) == PROTO_WGMESH
                }
                _ => false,
            };
            if relevant {
                changed.notify_one();
            }
        }
        conn.abort();
    }))
}
