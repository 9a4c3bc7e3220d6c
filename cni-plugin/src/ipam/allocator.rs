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
}
