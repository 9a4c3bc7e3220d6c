//! The swarm: a 1,000-node wgmesh cluster on one machine, for measuring one real agent
//! (test infrastructure; needs root).
//!
//! One real `wgmesh agent` runs on a testbed node (`wgmesh-testbed`); every other node
//! is emulated in this process ([`emulated`]): a WireGuard identity on boringtun's
//! `noise::Tunn` with its own UDP port on the testbed's "internet" host and its own pod
//! CIDR, a Node object in the testbed's API server carrying the key, endpoint and pod
//! CIDR a real agent would publish ([`nodes`]). Emulated nodes answer and start
//! handshakes, answer pings and UDP echo for their pods, ping the agent's node, and count
//! what they saw ([`swarm`]). A pod on the agent's node probes every emulated pod at once
//! ([`probe`]). [`scale::Scale`] puts it together; [`bench`] runs the scenarios of the
//! scale benchmark (`hack/bench-scale.sh`); `tests/` runs scaled-down ones as e2e tests.
//!
//! ```no_run
//! use std::time::Duration;
//! use wgmesh_swarm::scale::Scale;
//! let mut scale = Scale::start(1, &[]);
//! scale.grow(200);
//! scale.wait_for_peers(scale.expected_peers(), Duration::from_secs(60));
//! let answers = scale.probe_all(Duration::from_secs(30), Duration::from_millis(500));
//! assert!(answers.iter().all(Option::is_some));
//! ```

pub mod bench;
pub mod emulated;
pub mod measure;
pub mod nodes;
pub mod packet;
pub mod probe;
pub mod scale;
pub mod swarm;
pub mod watchers;
