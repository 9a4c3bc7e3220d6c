//! Which address to hand out next. Pure.
//!
//! Pods get addresses from the subnet minus the network address, the gateway (the
//! first usable address, on the bridge) and, for IPv4, the broadcast address. The
//! search starts after the last address handed out and wraps around (round-robin, as
//! host-local does), so a released address is not reused at once: a new pod does not
//! inherit traffic meant for the one that just left.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::IpNet;

/// The addresses of `subnet` that may be given to pods, as a closed range of integers.
fn pod_range(subnet: IpNet) -> (u128, u128) {
    match subnet {
        IpNet::V4(n) => {
            let net = u32::from(n.network()) as u128;
            let bcast = u32::from(n.broadcast()) as u128;
            (net + 2, bcast - 1)
        }
        IpNet::V6(n) => {
            let net = u128::from(n.network());
            let last = u128::from(n.broadcast());
            (net + 2, last)
        }
    }
}

fn to_ip(subnet: IpNet, v: u128) -> IpAddr {
    match subnet {
        IpNet::V4(_) => IpAddr::V4((v as u32).into()),
        IpNet::V6(_) => IpAddr::V6(v.into()),
    }
}

fn to_int(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

/// True if `ip` may be handed to a pod in `subnet`.
pub fn is_pod_address(subnet: IpNet, ip: IpAddr) -> bool {
    if !subnet.contains(&ip) {
        return false;
    }
    let (first, last) = pod_range(subnet);
    (first..=last).contains(&to_int(ip))
}

/// How many addresses of `subnet` pods can get.
pub fn capacity(subnet: IpNet) -> u128 {
    let (first, last) = pod_range(subnet);
    last - first + 1
}

/// The next free pod address of `subnet` after `last` (wrapping), or `None` when every
/// pod address is in `used`.
pub fn next_free(subnet: IpNet, used: &HashSet<IpAddr>, last: Option<IpAddr>) -> Option<IpAddr> {
    let (first, end) = pod_range(subnet);
    let start = match last {
        Some(l) if is_pod_address(subnet, l) && to_int(l) < end => to_int(l) + 1,
        _ => first,
    };
    // Only pod addresses in `used` count; stray entries cannot make us loop longer.
    let taken = used
        .iter()
        .filter(|ip| is_pod_address(subnet, **ip))
        .count() as u128;
    if taken >= capacity(subnet) {
        return None;
    }
    // At most `taken + 1` candidates are tried before a free one turns up.
    let mut v = start;
    loop {
        let ip = to_ip(subnet, v);
        if !used.contains(&ip) {
            return Some(ip);
        }
        v = if v >= end { first } else { v + 1 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn set(v: &[&str]) -> HashSet<IpAddr> {
        v.iter().map(|s| ip(s)).collect()
    }

    /// subnet, used, last handed out, wanted next
    type Case<'a> = (&'a str, &'a [&'a str], Option<&'a str>, Option<&'a str>);

    #[test]
    fn next_free_is_round_robin_and_skips_reserved_addresses() {
        let cases: &[Case] = &[
            ("10.244.1.0/24", &[], None, Some("10.244.1.2")),
            ("10.244.1.0/24", &["10.244.1.2"], None, Some("10.244.1.3")),
            (
                "10.244.1.0/24",
                &[],
                Some("10.244.1.9"),
                Some("10.244.1.10"),
            ),
            (
                "10.244.1.0/24",
                &[],
                Some("10.244.1.254"),
                Some("10.244.1.2"),
            ),
            (
                "10.244.1.0/24",
                &["10.244.1.2"],
                Some("10.244.1.254"),
                Some("10.244.1.3"),
            ),
            // a last address outside the pod range restarts at the beginning
            ("10.244.1.0/24", &[], Some("10.99.0.1"), Some("10.244.1.2")),
            ("10.244.1.0/24", &[], Some("10.244.1.1"), Some("10.244.1.2")),
            (
                "10.244.1.0/29",
                &["10.244.1.2", "10.244.1.3", "10.244.1.4", "10.244.1.5"],
                None,
                Some("10.244.1.6"),
            ),
            (
                "10.244.1.0/29",
                &[
                    "10.244.1.2",
                    "10.244.1.3",
                    "10.244.1.4",
                    "10.244.1.5",
                    "10.244.1.6",
                ],
                None,
                None,
            ),
            ("10.244.1.0/30", &[], None, Some("10.244.1.2")),
            ("10.244.1.0/30", &["10.244.1.2"], None, None),
            ("fd00:10:244:1::/64", &[], None, Some("fd00:10:244:1::2")),
            (
                "fd00:10:244:1::/126",
                &["fd00:10:244:1::2"],
                None,
                Some("fd00:10:244:1::3"),
            ),
            (
                "fd00:10:244:1::/126",
                &["fd00:10:244:1::2", "fd00:10:244:1::3"],
                None,
                None,
            ),
        ];
        for (subnet, used, last, want) in cases {
            let got = next_free(net(subnet), &set(used), last.map(ip));
            assert_eq!(got, want.map(ip), "{subnet} used={used:?} last={last:?}");
        }
    }

    #[test]
    fn a_slash_29_has_exactly_five_pod_addresses() {
        assert_eq!(capacity(net("10.244.1.0/29")), 5);
        assert_eq!(capacity(net("10.244.1.0/24")), 253);
        for (addr, ok) in [
            ("10.244.1.0", false),
            ("10.244.1.1", false),
            ("10.244.1.2", true),
            ("10.244.1.6", true),
            ("10.244.1.7", false),
            ("10.244.2.2", false),
        ] {
            assert_eq!(is_pod_address(net("10.244.1.0/29"), ip(addr)), ok, "{addr}");
        }
    }

    #[test]
    fn stray_used_entries_do_not_count_towards_exhaustion() {
        let used = set(&["10.9.9.9", "10.244.1.0", "10.244.1.1", "10.244.1.7"]);
        assert_eq!(
            next_free(net("10.244.1.0/29"), &used, None),
            Some(ip("10.244.1.2"))
        );
    }

    /// Property tests of `next_free` against a reference written from the definition:
    /// the pod addresses of a subnet in order (`IpNet::hosts` minus the gateway), the
    /// search going round them from just after `last`.
    mod properties {
        use std::net::{Ipv4Addr, Ipv6Addr};

        use ipnet::{Ipv4Net, Ipv6Net};
        use proptest::prelude::*;

        use super::*;

        /// Every address of `subnet` a pod may get, in order: not the network address,
        /// not the gateway (network + 1), not the IPv4 broadcast address. IPv6 has no
        /// broadcast: its last address is a pod address.
        fn pod_addresses(subnet: IpNet) -> Vec<IpAddr> {
            let gateway = to_ip(subnet, to_int(subnet.network()) + 1);
            subnet
                .hosts()
                .filter(|a| *a != subnet.network() && *a != gateway)
                .collect()
        }

        /// What `next_free` must answer, by going round the list.
        fn reference(
            subnet: IpNet,
            used: &HashSet<IpAddr>,
            last: Option<IpAddr>,
        ) -> Option<IpAddr> {
            let pods = pod_addresses(subnet);
            let start = last
                .and_then(|l| pods.iter().position(|p| *p == l))
                .map_or(0, |i| i + 1);
            (0..pods.len())
                .map(|k| pods[(start + k) % pods.len()])
                .find(|a| !used.contains(a))
        }

        fn v4(addr: u32, prefix: u8) -> IpNet {
            IpNet::V4(Ipv4Net::new(Ipv4Addr::from(addr), prefix).unwrap().trunc())
        }

        fn v6(addr: u128, prefix: u8) -> IpNet {
            IpNet::V6(Ipv6Net::new(Ipv6Addr::from(addr), prefix).unwrap().trunc())
        }

        /// Subnets small enough to enumerate (4 to 256 addresses), anywhere in the
        /// address space, its very first and last networks included.
        fn small_subnet() -> impl Strategy<Value = IpNet> {
            let v4_addr = prop_oneof![Just(0u32), Just(u32::MAX), any::<u32>()];
            let v6_addr = prop_oneof![Just(0u128), Just(u128::MAX), any::<u128>()];
            prop_oneof![
                (v4_addr, 24u8..=30).prop_map(|(a, p)| v4(a, p)),
                (v6_addr, 120u8..=126).prop_map(|(a, p)| v6(a, p)),
            ]
        }

        /// A subnet, a used set (a random share of its addresses, from none to all,
        /// plus strays outside it) and the last address handed out (one of the subnet,
        /// possibly the network, gateway or broadcast address, or a stray).
        fn state() -> impl Strategy<Value = (IpNet, HashSet<IpAddr>, Option<IpAddr>)> {
            (
                small_subnet(),
                prop::sample::select(vec![0.0, 0.2, 0.8, 0.97, 1.0]),
            )
                .prop_flat_map(|(subnet, share)| {
                    let size = 1usize << (subnet.max_prefix_len() - subnet.prefix_len());
                    (
                        Just(subnet),
                        prop::collection::vec(prop::bool::weighted(share), size),
                        prop::collection::vec(any::<u32>(), 0..3),
                        prop_oneof![Just(None), (0..size).prop_map(Some), Just(Some(usize::MAX)),],
                    )
                })
                .prop_map(|(subnet, taken, strays, last)| {
                    let base = to_int(subnet.network());
                    let at = |i: usize| to_ip(subnet, base + i as u128);
                    let mut used: HashSet<IpAddr> =
                        (0..taken.len()).filter(|i| taken[*i]).map(at).collect();
                    used.extend(strays.into_iter().map(|s| IpAddr::V4(s.into())));
                    let last = last.map(|i| {
                        if i == usize::MAX {
                            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))
                        } else {
                            at(i)
                        }
                    });
                    (subnet, used, last)
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// The answer is the first free pod address after `last`, round the subnet:
            /// never the network, gateway or (IPv4) broadcast address, never a used
            /// one; `None` exactly when all `capacity` pod addresses are used.
            #[test]
            fn next_free_is_the_first_free_pod_address_after_the_last(
                (subnet, used, last) in state()
            ) {
                let got = next_free(subnet, &used, last);
                prop_assert_eq!(got, reference(subnet, &used, last));
                let pods = pod_addresses(subnet);
                prop_assert_eq!(capacity(subnet), pods.len() as u128);
                let free = pods.iter().filter(|a| !used.contains(a)).count();
                prop_assert_eq!(got.is_none(), free == 0);
                if let Some(ip) = got {
                    prop_assert!(is_pod_address(subnet, ip));
                    prop_assert!(pods.contains(&ip) && !used.contains(&ip));
                }
                for ip in pods {
                    prop_assert!(is_pod_address(subnet, ip));
                }
            }

            /// Handing out addresses one after the other from any state goes round the
            /// free addresses once each, in order, then stops: exhaustion at capacity.
            #[test]
            fn repeated_allocation_takes_every_free_address_once((subnet, used, last) in state()) {
                let free: Vec<IpAddr> = pod_addresses(subnet)
                    .into_iter()
                    .filter(|a| !used.contains(a))
                    .collect();
                let (mut used, mut last) = (used, last);
                let mut got = Vec::new();
                while let Some(ip) = next_free(subnet, &used, last) {
                    prop_assert!(used.insert(ip), "{} handed out twice", ip);
                    got.push(ip);
                    last = Some(ip);
                    prop_assert!(got.len() <= free.len());
                }
                got.sort();
                prop_assert_eq!(got, free);
            }

            /// Round-robin: the address handed out last, once released, comes back only
            /// after every other free address has been handed out.
            #[test]
            fn a_released_address_is_handed_out_last((subnet, used, last) in state()) {
                let Some(ip) = next_free(subnet, &used, last) else { return Ok(()) };
                let mut used = used;
                let others = pod_addresses(subnet)
                    .iter()
                    .filter(|a| !used.contains(a) && **a != ip)
                    .count();
                let mut last = Some(ip);
                for _ in 0..others {
                    let next = next_free(subnet, &used, last).unwrap();
                    prop_assert_ne!(next, ip);
                    used.insert(next);
                    last = Some(next);
                }
                prop_assert_eq!(next_free(subnet, &used, last), Some(ip));
            }

            /// Large subnets (not enumerable): the answer is a free pod address, and
            /// only used addresses were skipped to reach it.
            #[test]
            fn large_subnets_answer_a_free_pod_address(
                subnet in prop_oneof![
                    (any::<u32>(), 0u8..24).prop_map(|(a, p)| v4(a, p)),
                    (any::<u128>(), 0u8..120).prop_map(|(a, p)| v6(a, p)),
                ],
                offsets in prop::collection::vec(0u128..64, 0..40),
                last in prop::option::of(0u128..64),
            ) {
                let base = to_int(subnet.network());
                let at = |o: u128| to_ip(subnet, base + o);
                let used: HashSet<IpAddr> = offsets.into_iter().map(at).collect();
                let last = last.map(at);
                let ip = next_free(subnet, &used, last).expect("a large subnet is never full");
                prop_assert!(subnet.contains(&ip) && !used.contains(&ip));
                let v = to_int(ip);
                prop_assert!(v >= base + 2, "{} is the network or gateway address", ip);
                if let IpNet::V4(n) = subnet {
                    prop_assert_ne!(ip, IpAddr::V4(n.broadcast()));
                }
                let start = match last {
                    Some(l) if is_pod_address(subnet, l) => to_int(l) + 1,
                    _ => base + 2,
                };
                // No wrap-around: fewer than 64 + 40 addresses from the start.
                prop_assert!(v >= start);
                for skipped in start..v {
                    prop_assert!(used.contains(&to_ip(subnet, skipped)));
                }
            }
        }
    }
}
