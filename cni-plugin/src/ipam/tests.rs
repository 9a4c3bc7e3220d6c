//! Property tests of the IPAM: random sequences of allocations and releases by random
//! owners against a real [`Store`] in a temporary directory, checked against a model
//! written from the definition (the pod addresses of each subnet in order, handed out
//! round-robin from the last one); and concurrent invocations, each with its own lock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::{Arc, Barrier, Mutex};

use ipnet::{Ipv4Net, Ipv6Net};
use proptest::prelude::*;
use wgmesh::cni::PodSubnets;

use super::*;

const TIMEOUT: Duration = Duration::from_secs(30);

fn config(data_dir: &Path, subnets: PodSubnets) -> NetworkConfig {
    NetworkConfig {
        name: "test".into(),
        bridge: "wgmesh-br".into(),
        mtu: 1420,
        subnets,
        data_dir: data_dir.to_path_buf(),
        ipam_lock_timeout: TIMEOUT,
    }
}

fn owner(i: u8) -> Owner {
    // Two interfaces of one container are two owners.
    Owner {
        container_id: format!("container-{}", i / 2),
        ifname: format!("eth{}", i % 2),
    }
}

/// One CNI invocation: lock, act, unlock.
fn with_store<T>(cfg: &NetworkConfig, f: impl FnOnce(&Store) -> T) -> T {
    let store = Store::lock(&cfg.ipam_dir(), TIMEOUT).expect("lock");
    f(&store)
}

/// Every address of `subnet` a pod may get, in order, from the definition: not the
/// network address, not the gateway (network + 1, on the bridge), not the IPv4 broadcast
/// address (`IpNet::hosts` leaves out network and broadcast for IPv4 and nothing for
/// IPv6, which has no broadcast).
fn pod_addresses(subnet: IpNet) -> Vec<IpAddr> {
    let gateway = gateway(subnet);
    subnet
        .hosts()
        .filter(|a| *a != subnet.network() && *a != gateway)
        .collect()
}

fn gateway(subnet: IpNet) -> IpAddr {
    match subnet {
        IpNet::V4(n) => IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) + 1)),
        IpNet::V6(n) => IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) + 1)),
    }
}

/// The reference: what the store must hold and hand out.
#[derive(Debug)]
struct Model {
    subnets: Vec<IpNet>,
    /// Last address handed out per family (moved even by an ADD that then fails on
    /// the next family, as the store's `last_reserved_ip` files are).
    cursor: Vec<Option<IpAddr>>,
    leases: BTreeMap<IpAddr, Owner>,
}

impl Model {
    fn new(subnets: PodSubnets) -> Self {
        Model {
            subnets: subnets.nets().collect(),
            cursor: vec![None; 2],
            leases: BTreeMap::new(),
        }
    }

    /// One address per family, each the first free one after that family's cursor,
    /// going round; an exhausted family fails the whole ADD (with its capacity).
    fn allocate(&mut self, owner: &Owner) -> Result<Vec<IpAddr>, (IpNet, u128)> {
        let mut got = Vec::new();
        for (family, subnet) in self.subnets.iter().enumerate() {
            let pods = pod_addresses(*subnet);
            let start = self.cursor[family]
                .and_then(|c| pods.iter().position(|p| *p == c))
                .map_or(0, |i| i + 1);
            let found = (0..pods.len())
                .map(|k| pods[(start + k) % pods.len()])
                .find(|a| !self.leases.contains_key(a));
            let Some(ip) = found else {
                for ip in &got {
                    self.leases.remove(ip);
                }
                return Err((*subnet, pods.len() as u128));
            };
            self.leases.insert(ip, owner.clone());
            self.cursor[family] = Some(ip);
            got.push(ip);
        }
        Ok(got)
    }

    fn release(&mut self, owner: &Owner) -> BTreeSet<IpAddr> {
        let gone: BTreeSet<IpAddr> = self
            .leases
            .iter()
            .filter(|(_, o)| *o == owner)
            .map(|(ip, _)| *ip)
            .collect();
        self.leases.retain(|_, o| o != owner);
        gone
    }

    fn free(&self, family: usize) -> Vec<IpAddr> {
        pod_addresses(self.subnets[family])
            .into_iter()
            .filter(|a| !self.leases.contains_key(a))
            .collect()
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Allocate(u8),
    Release(u8),
}

fn ops(max: usize) -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        3 => (0u8..8).prop_map(Op::Allocate),
        2 => (0u8..8).prop_map(Op::Release),
    ];
    prop::collection::vec(op, 0..max)
}

/// IPv4 /27 to /30 (1 to 29 pod addresses), alone or with IPv6 /123 to /126 (2 to 30),
/// or IPv6 alone, anywhere in the address space, its first and last networks included.
fn subnets() -> impl Strategy<Value = PodSubnets> {
    let v4 = (
        prop_oneof![Just(0u32), Just(u32::MAX), any::<u32>()],
        27u8..=30,
    )
        .prop_map(|(a, p)| Ipv4Net::new(a.into(), p).unwrap().trunc());
    let v6 = (
        prop_oneof![Just(0u128), Just(u128::MAX), any::<u128>()],
        123u8..=126,
    )
        .prop_map(|(a, p)| Ipv6Net::new(a.into(), p).unwrap().trunc());
    prop_oneof![
        (v4, prop::option::of(v6.clone())).prop_map(|(v4, v6)| PodSubnets { v4: Some(v4), v6 }),
        v6.prop_map(|v6| PodSubnets {
            v4: None,
            v6: Some(v6)
        }),
    ]
}

/// The store's leases as the model keeps them; every lease has a readable owner.
fn leases(store: &Store) -> BTreeMap<IpAddr, Owner> {
    store
        .leases()
        .unwrap()
        .into_iter()
        .map(|l| (l.ip, l.owner.expect("a lease without owner")))
        .collect()
}

/// Each lease is a pod address of exactly one of the subnets: never a network,
/// gateway or IPv4 broadcast address.
fn check_addresses(
    leases: &BTreeMap<IpAddr, Owner>,
    subnets: &PodSubnets,
) -> Result<(), TestCaseError> {
    for ip in leases.keys() {
        let mut of = subnets.nets().filter(|n| n.contains(ip));
        let subnet = of.next();
        prop_assert!(
            subnet.is_some() && of.next().is_none(),
            "{} is in no subnet",
            ip
        );
        let subnet = subnet.unwrap();
        prop_assert_ne!(*ip, subnet.network(), "network address handed out");
        prop_assert_ne!(*ip, gateway(subnet), "gateway handed out");
        if let IpNet::V4(n) = subnet {
            prop_assert_ne!(*ip, IpAddr::V4(n.broadcast()), "broadcast handed out");
        }
        prop_assert!(allocator::is_pod_address(subnet, *ip));
    }
    Ok(())
}

fn addresses(allocations: &[Allocation]) -> Vec<IpAddr> {
    allocations.iter().map(|a| a.address.addr()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Random ADDs and DELs against the store hand out exactly what the model says:
    /// never an address somebody holds (one owner per address), only pod addresses,
    /// round-robin from the last one, exhaustion exactly when a family is full, and
    /// a DEL frees exactly the owner's addresses for reuse.
    #[test]
    fn allocations_follow_the_model(subnets in subnets(), ops in ops(48)) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), subnets);
        let mut model = Model::new(subnets);
        for op in ops {
            match op {
                Op::Allocate(i) => {
                    let held = with_store(&cfg, leases);
                    let got = with_store(&cfg, |s| allocate(s, &cfg, &owner(i)));
                    let want = model.allocate(&owner(i));
                    match (got, want) {
                        (Ok(allocations), Ok(want)) => {
                            prop_assert_eq!(addresses(&allocations), want);
                            for (a, subnet) in allocations.iter().zip(subnets.nets()) {
                                let ip = a.address.addr();
                                prop_assert!(!held.contains_key(&ip), "{} was held", ip);
                                prop_assert_eq!(a.address.prefix_len(), subnet.prefix_len());
                                prop_assert_eq!(a.gateway, gateway(subnet));
                            }
                        }
                        (Err(Error::Exhausted { subnet, capacity }), Err(want)) => {
                            prop_assert_eq!((subnet, capacity), want);
                        }
                        (got, want) => prop_assert!(false, "{:?}, expected {:?}", got, want),
                    }
                }
                Op::Release(i) => {
                    let got = with_store(&cfg, |s| release(s, &owner(i))).unwrap();
                    let want = model.release(&owner(i));
                    prop_assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), want);
                }
            }
            let now = with_store(&cfg, leases);
            check_addresses(&now, &subnets)?;
            prop_assert_eq!(&now, &model.leases);
            let free = (0..model.subnets.len()).all(|f| !model.free(f).is_empty());
            prop_assert_eq!(with_store(&cfg, |s| has_free_addresses(s, &cfg)).unwrap(), free);
        }
    }

    /// From an empty store, ADDs succeed exactly `capacity` times (of the smaller
    /// family), then fail with `Exhausted` and leave nothing behind; releasing any
    /// owners makes exactly their addresses available again, and nothing more.
    #[test]
    fn exhaustion_at_capacity_and_release_makes_addresses_reusable(
        subnets in subnets(),
        released in prop::collection::btree_set(0usize..30, 1..6),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), subnets);
        let nets: Vec<IpNet> = subnets.nets().collect();
        let capacities: Vec<u128> = nets.iter().map(|n| pod_addresses(*n).len() as u128).collect();
        let capacity = *capacities.iter().min().unwrap();
        let full = nets[capacities.iter().position(|c| *c == capacity).unwrap()];
        let owner_n = |n: usize| Owner { container_id: format!("c{n}"), ifname: "eth0".into() };

        let mut holders = Vec::new();
        loop {
            let n = holders.len();
            match with_store(&cfg, |s| allocate(s, &cfg, &owner_n(n))) {
                Ok(a) => holders.push(addresses(&a)),
                Err(Error::Exhausted { subnet, capacity: c }) => {
                    prop_assert_eq!((subnet, c), (full, capacity));
                    break;
                }
                Err(e) => prop_assert!(false, "{}", e),
            }
            prop_assert!(holders.len() as u128 <= capacity, "over {} ADDs succeeded", capacity);
        }
        prop_assert_eq!(holders.len() as u128, capacity);
        let held = with_store(&cfg, leases);
        let per_family = capacity * nets.len() as u128;
        prop_assert_eq!(held.len() as u128, per_family, "a failed ADD left a lease");
        check_addresses(&held, &subnets)?;
        // The smaller family is full: all its pod addresses are held.
        let all: BTreeSet<IpAddr> = pod_addresses(full).into_iter().collect();
        prop_assert!(all.iter().all(|a| held.contains_key(a)));

        let released: BTreeSet<usize> =
            released.into_iter().filter(|n| *n < holders.len()).collect();
        let mut freed = BTreeSet::new();
        for n in &released {
            let gone = with_store(&cfg, |s| release(s, &owner_n(*n))).unwrap();
            prop_assert_eq!(gone.iter().collect::<BTreeSet<_>>(), holders[*n].iter().collect());
            freed.extend(gone.into_iter().filter(|a| full.contains(a)));
        }
        let mut again = BTreeSet::new();
        for k in 0..released.len() {
            let a = with_store(&cfg, |s| allocate(s, &cfg, &owner_n(1000 + k)));
            let a = a.map_err(|e| TestCaseError::fail(format!("ADD after DEL: {e}")))?;
            again.extend(addresses(&a).into_iter().filter(|a| full.contains(a)));
        }
        prop_assert_eq!(again, freed, "the released addresses are the ones handed out again");
        let last = with_store(&cfg, |s| allocate(s, &cfg, &owner_n(2000)));
        prop_assert!(matches!(last, Err(Error::Exhausted { .. })), "{:?}", last);
    }

    /// Round-robin: a pod that is deleted right after its ADD does not pass its
    /// addresses to the next pod; they come back only after every other free address
    /// of their family has been handed out.
    #[test]
    fn an_address_released_right_away_comes_back_last(subnets in subnets(), ops in ops(24)) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), subnets);
        let mut model = Model::new(subnets);
        for op in ops {
            match op {
                Op::Allocate(i) => {
                    let _ = with_store(&cfg, |s| allocate(s, &cfg, &owner(i)));
                    let _ = model.allocate(&owner(i));
                }
                Op::Release(i) => {
                    with_store(&cfg, |s| release(s, &owner(i))).unwrap();
                    model.release(&owner(i));
                }
            }
        }
        let pod = Owner { container_id: "short-lived".into(), ifname: "eth0".into() };
        let Ok(first) = with_store(&cfg, |s| allocate(s, &cfg, &pod)) else { return Ok(()) };
        let first = addresses(&first);
        with_store(&cfg, |s| release(s, &pod)).unwrap();
        model.release(&pod);
        // Free addresses of each family other than the one just released.
        let mut others: Vec<BTreeSet<IpAddr>> = (0..first.len())
            .map(|f| model.free(f).into_iter().filter(|a| *a != first[f]).collect())
            .collect();
        for k in 0.. {
            let next = Owner { container_id: format!("next-{k}"), ifname: "eth0".into() };
            let Ok(got) = with_store(&cfg, |s| allocate(s, &cfg, &next)) else { break };
            for (f, ip) in addresses(&got).into_iter().enumerate() {
                if ip == first[f] {
                    prop_assert!(others[f].is_empty(), "{} came back before {:?}", ip, others[f]);
                } else {
                    prop_assert!(others[f].remove(&ip), "{} was not free", ip);
                }
            }
        }
    }
}

/// Parallel ADDs, each with its own `Store::lock` on one directory (as separate plugin
/// processes: flock locks belong to the open file, so threads contend like processes):
/// never one address twice, and exactly `capacity` of them succeed.
#[test]
fn concurrent_allocations_never_hand_out_an_address_twice() {
    const THREADS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let subnets = PodSubnets::parse(&["10.244.1.0/27", "fd00:10:244:1::/120"]).unwrap();
    let cfg = Arc::new(config(dir.path(), subnets));
    let capacity = pod_addresses(IpNet::V4(subnets.v4.unwrap())).len();
    let start = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (cfg, start) = (cfg.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                let mut got = Vec::new();
                for k in 0..capacity {
                    let owner = Owner {
                        container_id: format!("t{t}-{k}"),
                        ifname: "eth0".into(),
                    };
                    let store = Store::lock(&cfg.ipam_dir(), TIMEOUT).unwrap();
                    match allocate(&store, &cfg, &owner) {
                        Ok(a) => got.push((owner, addresses(&a))),
                        Err(Error::Exhausted { .. }) => break,
                        Err(e) => panic!("{e}"),
                    }
                }
                got
            })
        })
        .collect();
    let all: Vec<(Owner, Vec<IpAddr>)> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(all.len(), capacity, "ADDs that succeeded");
    let mut by_address: HashMap<IpAddr, &Owner> = HashMap::new();
    for (owner, ips) in &all {
        for ip in ips {
            if let Some(other) = by_address.insert(*ip, owner) {
                panic!("{ip} handed to {owner:?} and {other:?}");
            }
        }
    }
    let store = Store::lock(&cfg.ipam_dir(), TIMEOUT).unwrap();
    let leases = store.leases().unwrap();
    assert_eq!(leases.len(), 2 * capacity);
    for lease in leases {
        assert_eq!(
            lease.owner.as_ref(),
            Some(by_address[&lease.ip]),
            "{}",
            lease.ip
        );
    }
}

/// Parallel ADD/DEL churn: what each thread holds is recorded while it still holds the
/// lock, so two holders of one address at any moment would be seen.
#[test]
fn concurrent_add_and_del_never_share_an_address() {
    const THREADS: usize = 4;
    const ROUNDS: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    // 5 pod addresses for 4 threads holding up to one each: tight, never exhausted.
    let subnets = PodSubnets::parse(&["10.244.2.0/29", "fd00:10:244:2::/125"]).unwrap();
    let cfg = Arc::new(config(dir.path(), subnets));
    let holders: Arc<Mutex<HashMap<IpAddr, String>>> = Arc::default();
    let start = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (cfg, holders, start) = (cfg.clone(), holders.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                for k in 0..ROUNDS {
                    let owner = Owner {
                        container_id: format!("t{t}-{k}"),
                        ifname: "eth0".into(),
                    };
                    {
                        let store = Store::lock(&cfg.ipam_dir(), TIMEOUT).unwrap();
                        let got = allocate(&store, &cfg, &owner).unwrap();
                        let mut h = holders.lock().unwrap();
                        for ip in addresses(&got) {
                            if let Some(other) = h.insert(ip, owner.container_id.clone()) {
                                panic!(
                                    "{ip} handed to {} while {other} holds it",
                                    owner.container_id
                                );
                            }
                        }
                    }
                    std::thread::yield_now();
                    let store = Store::lock(&cfg.ipam_dir(), TIMEOUT).unwrap();
                    let gone = release(&store, &owner).unwrap();
                    assert_eq!(gone.len(), 2);
                    let mut h = holders.lock().unwrap();
                    for ip in gone {
                        assert_eq!(h.remove(&ip).as_deref(), Some(owner.container_id.as_str()));
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert!(holders.lock().unwrap().is_empty());
    let store = Store::lock(&cfg.ipam_dir(), TIMEOUT).unwrap();
    assert!(store.leases().unwrap().is_empty());
}
