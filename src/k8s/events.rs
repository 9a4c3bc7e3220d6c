//! Kubernetes Events about other nodes' problems. Adapter.
//!
//! Events are core/v1 (what `kubectl get events` and `kubectl describe node` show),
//! in the `default` namespace as the kubelet does for Node events. Each distinct
//! message about a node is reported once while it lasts; when the problem clears and
//! comes back, it is reported again.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;

use super::Error;

const COMPONENT: &str = "wgmesh-agent";
const EVENT_NAMESPACE: &str = "default";

/// What to report about one node: (type, reason, message) triples.
pub type Findings = BTreeSet<(EventType, &'static str, String)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// Reports findings about nodes, each once while it persists.
pub struct Reporter {
    api: Api<Event>,
    local_node: String,
    reported: BTreeMap<String, Findings>,
}

impl Reporter {
    pub fn new(client: kube::Client, local_node: &str) -> Self {
        Reporter {
            api: Api::namespaced(client, EVENT_NAMESPACE),
            local_node: local_node.to_string(),
            reported: BTreeMap::new(),
        }
    }

    /// Uses a new API client; what was reported is kept.
    pub fn set_client(&mut self, client: kube::Client) {
        self.api = Api::namespaced(client, EVENT_NAMESPACE);
    }

    /// Brings the reported set in line with `current` (node -> findings): new findings
    /// become Events; findings that are gone are forgotten. `uids` gives each node's UID
    /// for the Event's involvedObject.
    pub async fn sync(
        &mut self,
        current: &BTreeMap<String, Findings>,
        uids: &BTreeMap<String, String>,
    ) -> Result<(), Error> {
        self.reported.retain(|node, _| current.contains_key(node));
        for (node, findings) in current {
            let mut done = self.reported.remove(node).unwrap_or_default();
            done.retain(|f| findings.contains(f));
            let mut result = Ok(());
            let new: Vec<_> = findings.iter().filter(|f| !done.contains(*f)).collect();
            for f in new {
                let (kind, reason, message) = f;
                let event = self.event(node, uids.get(node), *kind, reason, message);
                if let Err(source) = self.api.create(&PostParams::default(), &event).await {
                    result = Err(Error::Api {
                        op: "create event about node",
                        target: node.clone(),
                        source,
                    });
                    break;
                }
                tracing::warn!(node = %node, reason = %reason, "{message}");
                done.insert(f.clone());
            }
            self.reported.insert(node.clone(), done);
            result?;
        }
        Ok(())
    }

    fn event(
        &self,
        node: &str,
        uid: Option<&String>,
        kind: EventType,
        reason: &str,
        message: &str,
    ) -> Event {
        let now = Timestamp::now();
        Event {
            metadata: ObjectMeta {
                // Unique per event, like the kubelet's `<object>.<hex time>`.
                name: Some(format!(
                    "{}.{:x}",
                    node.replace('/', "-"),
                    now.as_nanosecond()
                )),
                namespace: Some(EVENT_NAMESPACE.to_string()),
                ..ObjectMeta::default()
            },
            involved_object: match node.strip_prefix(crate::mesh::peer::PEER_PREFIX) {
                Some(peer) => ObjectReference {
                    api_version: Some(format!("{}/{}", super::peers::GROUP, super::peers::VERSION)),
                    kind: Some(super::peers::KIND.into()),
                    name: Some(peer.to_string()),
                    uid: uid.cloned(),
                    ..ObjectReference::default()
                },
                None => ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Node".into()),
                    name: Some(node.to_string()),
                    uid: uid.cloned(),
                    ..ObjectReference::default()
                },
            },
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            type_: Some(kind.as_str().to_string()),
            source: Some(EventSource {
                component: Some(COMPONENT.into()),
                host: Some(self.local_node.clone()),
            }),
            reporting_component: Some(format!("wgmesh.io/{COMPONENT}")),
            reporting_instance: Some(self.local_node.clone()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            action: Some("Peering".into()),
            count: Some(1),
            ..Event::default()
        }
    }
}
