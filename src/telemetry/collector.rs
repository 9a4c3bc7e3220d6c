//! Per-peer, per-drop-reason and per-thread-kind metrics, read from the WireGuard device at scrape time.
//! Adapter.

use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::{Observed, read};
use crate::k8s::watch::UpdateCounts;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    node: String,
    endpoint: String,
    /// Where the planned endpoint came from: private, public, forced, observed,
    /// discovered; or `relay` when the peer's traffic goes through `via`.
    source: &'static str,
    via: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ThreadLabel {
    thread: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RelevantLabel {
    relevant: &'static str,
}

#[derive(Debug)]
pub(super) struct MeshCollector {
    observed: Arc<RwLock<Observed>>,
    node_updates: UpdateCounts,
}

impl std::fmt::Debug for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observed")
    }
}

impl MeshCollector {
    pub(super) fn new(observed: Arc<RwLock<Observed>>, node_updates: UpdateCounts) -> Self {
        MeshCollector {
            observed,
            node_updates,
        }
    }
}

/// One metric family: a descriptor, then a value per label set.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for MeshCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let observed = read(&self.observed);
        let peers = observed
            .plan
            .as_ref()
            .map(|p| p.peers.clone())
            .unwrap_or_default();
        let metric = encoder.encode_descriptor(
            "peers",
            "WireGuard peers configured (other nodes)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(peers.len() as i64).encode(metric)?;
        family(
            &mut encoder,
            "kernel_writes",
            "Changes requested of the kernel (routes, links, addresses, nftables, sysctls) and of the WireGuard device (peers), by kind",
            MetricType::Counter,
            crate::kernel_writes::Kind::ALL.iter().map(|k| {
                (
                    KindLabel { kind: k.as_str() },
                    ConstCounter::new(crate::kernel_writes::count(*k)),
                )
            }),
        )?;
        let updates = [
            ("true", &self.node_updates.relevant),
            ("false", &self.node_updates.ignored),
        ];
        family(
            &mut encoder,
            "node_updates",
            "Node updates seen by the watch, by whether they changed anything wgmesh reads (only those wake the reconcile loop)",
            MetricType::Counter,
            updates.map(|(relevant, n)| {
                (
                    RelevantLabel { relevant },
                    ConstCounter::new(n.load(std::sync::atomic::Ordering::Relaxed)),
                )
            }),
        )?;
        let Some(device) = observed.device.as_ref() else {
            return Ok(());
        };
        let now = SystemTime::now();
        // One read of the device (a netlink dump on the kernel backend) per scrape.
        let mut all = device.peer_stats();
        let stats: Vec<_> = peers
            .iter()
            .map(|(node, p)| {
                (
                    NodeLabel { node: node.clone() },
                    all.remove(&p.public_key).unwrap_or_default(),
                )
            })
            .collect();
        family(
            &mut encoder,
            "peer_last_handshake_age_seconds",
            "Seconds since the last WireGuard handshake with the peer (peers with a handshake only)",
            MetricType::Gauge,
            stats.iter().filter_map(|(l, s)| {
                let at = s.last_handshake?;
                Some((
                    l.clone(),
                    ConstGauge::new(now.duration_since(at).unwrap_or_default().as_secs_f64()),
                ))
            }),
        )?;
        family(
            &mut encoder,
            "peer_receive_bytes",
            "Bytes received from the peer",
            MetricType::Counter,
            stats
                .iter()
                .map(|(l, s)| (l.clone(), ConstCounter::new(s.rx_bytes))),
        )?;
        family(
            &mut encoder,
            "peer_transmit_bytes",
            "Bytes sent to the peer",
            MetricType::Counter,
            stats
                .iter()
                .map(|(l, s)| (l.clone(), ConstCounter::new(s.tx_bytes))),
        )?;
        family(
            &mut encoder,
            "peer_endpoint_info",
            "The peer's current endpoint (configured or roamed), where it came from, and the relay its traffic goes through",
            MetricType::Gauge,
            stats.iter().filter_map(|(l, s)| {
                let plan = peers.get(&l.node)?;
                Some((
                    EndpointLabels {
                        node: l.node.clone(),
                        endpoint: s.endpoint?.to_string(),
                        source: if plan.via.is_some() {
                            "relay"
                        } else {
                            plan.endpoint_source.as_str()
                        },
                        via: plan.via.clone().unwrap_or_default(),
                    },
                    ConstGauge::new(1i64),
                ))
            }),
        )?;
        family(
            &mut encoder,
            "dataplane_packets_dropped",
            "Packets the WireGuard data plane dropped, by reason",
            MetricType::Counter,
            device
                .drops()
                .map(|d| d.snapshot())
                .unwrap_or_default()
                .into_iter()
                .map(|(r, n)| {
                    (
                        ReasonLabel {
                            reason: r.as_str().to_string(),
                        },
                        ConstCounter::new(n),
                    )
                }),
        )?;
        family(
            &mut encoder,
            "dataplane_thread_restarts",
            "WireGuard data-plane threads restarted after a panic or an unexpected exit, by thread kind",
            MetricType::Counter,
            device
                .threads()
                .map(|t| t.snapshot())
                .unwrap_or_default()
                .into_iter()
                .map(|(kind, n)| {
                    (
                        ThreadLabel {
                            thread: kind.as_str(),
                        },
                        ConstCounter::new(n),
                    )
                }),
        )?;
        Ok(())
    }
}
