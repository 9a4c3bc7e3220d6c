//! Kubernetes Events about other nodes' problems. Adapter.
//!
//! Events are core/v1 (what `kubectl get events` and `kubectl describe node` show),
//! in the `default` namespace as the kubelet does for Node events. Each distinct
//! message about a node is reported once while it lasts; when the problem clears and
//! comes back, it is reported again. Any Node writer chooses what the messages quote,
//! so a node that keeps changing its garbage gets at most [`EventBudget::BURST`]
//! Events and then one per [`EventBudget::REFILL`] (as client-go's spam filter does).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

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

/// The longest Event message sent (kubectl and the events API show up to 1 KiB).
const MESSAGE_LIMIT: usize = 1024;

fn bounded_message(message: &str) -> String {
    if message.len() <= MESSAGE_LIMIT {
        return message.to_string();
    }
    let mut end = MESSAGE_LIMIT;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &message[..end])
}

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

/// A token bucket per node: how many Events it may still cause. Pure.
#[derive(Debug, Default)]
pub struct EventBudget {
    /// Tokens left and when they were last counted, by node.
    buckets: BTreeMap<String, (u32, Instant)>,
}

impl EventBudget {
    /// Events a node may cause at once.
    pub const BURST: u32 = 10;
    /// One more Event per node after this long.
    pub const REFILL: Duration = Duration::from_secs(60);

    /// Takes a token for an Event about `node` at `now`; false when none is left.
    pub fn allow(&mut self, node: &str, now: Instant) -> bool {
        let (tokens, since) = self
            .buckets
            .entry(node.to_string())
            .or_insert((Self::BURST, now));
        let earned =
            (now.saturating_duration_since(*since).as_secs() / Self::REFILL.as_secs()) as u32;
        if earned > 0 {
            *tokens = (*tokens + earned).min(Self::BURST);
            *since += Self::REFILL * earned;
        }
        if *tokens == 0 {
            return false;
        }
        *tokens -= 1;
        true
    }

    /// Forgets nodes that are gone.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.buckets.retain(|n, _| keep(n));
    }
}

/// Reports findings about nodes, each once while it persists.
pub struct Reporter {
    api: Api<Event>,
    local_node: String,
    reported: BTreeMap<String, Findings>,
    budget: EventBudget,
}

impl Reporter {
    pub fn new(client: kube::Client, local_node: &str) -> Self {
        Reporter {
            api: Api::namespaced(client, EVENT_NAMESPACE),
            local_node: local_node.to_string(),
            reported: BTreeMap::new(),
            budget: EventBudget::default(),
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
        self.budget
            .retain(|node| uids.contains_key(node) || current.contains_key(node));
        let now = Instant::now();
        for (node, findings) in current {
            let mut done = self.reported.remove(node).unwrap_or_default();
            done.retain(|f| findings.contains(f));
            let mut result = Ok(());
            let new: Vec<_> = findings.iter().filter(|f| !done.contains(*f)).collect();
            for f in new {
                let (kind, reason, message) = f;
                if !self.budget.allow(node, now) {
                    // Not marked done: reported once the budget allows, if it lasts.
                    tracing::debug!(node = %node, reason = %reason, "event held back: too many about this node");
                    continue;
                }
                let event = self.event(node, uids.get(node), *kind, reason, message);
                if let Err(source) = self.api.create(&PostParams::default(), &event).await {
                    result = Err(Error::Api {
                        op: "create event about node",
                        target: node.clone(),
                        source,
                    });
                    break;
                }
                tracing::warn!(node = %node, reason = %reason, "{}", crate::mesh::bounded(message));
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
            // Quoted values are bounded already; the whole message is bounded too.
            message: Some(bounded_message(message)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_gets_a_burst_of_events_then_one_per_refill() {
        let mut b = EventBudget::default();
        let t0 = Instant::now();
        let allowed = (0..1000).filter(|_| b.allow("x", t0)).count();
        assert_eq!(allowed, EventBudget::BURST as usize);
        assert!(b.allow("y", t0), "another node has its own budget");
        assert!(!b.allow("x", t0 + EventBudget::REFILL / 2));
        assert!(b.allow("x", t0 + EventBudget::REFILL));
        assert!(!b.allow("x", t0 + EventBudget::REFILL));
        // 1,000 distinct findings within a minute: a bounded number of Events.
        let mut b = EventBudget::default();
        let minute = (0..1000u64)
            .filter(|i| b.allow("x", t0 + Duration::from_millis(i * 60)))
            .count();
        assert!(minute <= EventBudget::BURST as usize + 1, "{minute}");
        // A long quiet time refills the burst, no more.
        let later = t0 + EventBudget::REFILL * 100;
        assert_eq!(
            (0..100).filter(|_| b.allow("x", later)).count(),
            EventBudget::BURST as usize
        );
    }

    #[test]
    fn messages_are_bounded() {
        assert_eq!(bounded_message("short"), "short");
        let long = "é".repeat(2000);
        let m = bounded_message(&long);
        assert!(m.len() <= MESSAGE_LIMIT + 3 && m.ends_with("..."));
    }
}
