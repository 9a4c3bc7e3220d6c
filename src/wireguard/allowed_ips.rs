//! Longest-prefix-match table from IP prefixes to values (WireGuard's AllowedIPs). Pure.
//!
//! One hash map per prefix length and the list of lengths in use, longest first: a lookup
//! probes only the lengths present, so the usual mesh (pod /24s plus node /32s) costs two
//! hash probes per packet whatever the number of peers. Prefixes are stored with their
//! host bits cleared, as the kernel and wireguard-go do (`10.0.0.1/24` is `10.0.0.0/24`).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// A multiplicative hash for integer keys. Keys come from the configuration only (packets
/// look up, never insert), so hash flooding is not a concern and SipHash would be wasted.
#[derive(Default, Clone, Copy)]
pub(crate) struct IntHasher(u64);

const SEED: u64 = 0x9e37_79b9_7f4a_7c15;

impl IntHasher {
    fn mix(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(26) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for IntHasher {
    fn finish(&self) -> u64 {
        // Fold the high bits down: hashbrown takes its control byte from the top 7 bits
        // and its bucket from the low ones.
        self.0 ^ (self.0 >> 29)
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.mix(u64::from(v));
    }
    fn write_u64(&mut self, v: u64) {
        self.mix(v);
    }
    fn write_u128(&mut self, v: u128) {
        self.mix(v as u64);
        self.mix((v >> 64) as u64);
    }
}

pub(crate) type IntMap<K, V> = HashMap<K, V, BuildHasherDefault<IntHasher>>;

/// An address as an unsigned integer, big-endian bit order (bit 0 = most significant).
trait Bits: Copy + Eq + Hash {
    const WIDTH: u8;
    fn masked(self, len: u8) -> Self;
}

impl Bits for u32 {
    const WIDTH: u8 = 32;
    fn masked(self, len: u8) -> Self {
        match len {
            0 => 0,
            l if l >= 32 => self,
            l => self & (u32::MAX << (32 - l)),
        }
    }
}

impl Bits for u128 {
    const WIDTH: u8 = 128;
    fn masked(self, len: u8) -> Self {
        match len {
            0 => 0,
            l if l >= 128 => self,
            l => self & (u128::MAX << (128 - l)),
        }
    }
}

/// The prefixes of one address family.
#[derive(Clone)]
struct Family<K, T> {
    /// `by_len[l]` holds the prefixes of length `l`, keyed by their masked address.
    by_len: Vec<IntMap<K, T>>,
    /// The lengths with at least one prefix, longest first.
    lens: Vec<u8>,
}

impl<K: Bits, T> Family<K, T> {
    fn new() -> Self {
        Family {
            by_len: (0..=K::WIDTH).map(|_| IntMap::default()).collect(),
            lens: Vec::new(),
        }
    }

    fn insert(&mut self, addr: K, len: u8, value: T) -> Option<T> {
        let len = len.min(K::WIDTH);
        let old = self.by_len[usize::from(len)].insert(addr.masked(len), value);
        if old.is_none() && !self.lens.contains(&len) {
            self.lens.push(len);
            self.lens.sort_unstable_by(|a, b| b.cmp(a));
        }
        old
    }

    fn remove(&mut self, addr: K, len: u8) -> Option<T> {
        let len = len.min(K::WIDTH);
        let map = &mut self.by_len[usize::from(len)];
        let old = map.remove(&addr.masked(len));
        if map.is_empty() {
            self.lens.retain(|l| *l != len);
        }
        old
    }

    #[inline]
    fn lookup(&self, addr: K) -> Option<&T> {
        self.lens
            .iter()
            .find_map(|&len| self.by_len[usize::from(len)].get(&addr.masked(len)))
    }

    fn retain(&mut self, mut keep: impl FnMut(K, u8, &T) -> bool) {
        for (len, map) in self.by_len.iter_mut().enumerate() {
            let len = len as u8;
            map.retain(|k, v| keep(*k, len, v));
        }
        let by_len = &self.by_len;
        self.lens.retain(|l| !by_len[usize::from(*l)].is_empty());
    }

    fn iter(&self) -> impl Iterator<Item = (K, u8, &T)> {
        self.by_len
            .iter()
            .enumerate()
            .flat_map(|(len, map)| map.iter().map(move |(k, v)| (*k, len as u8, v)))
    }

    fn len(&self) -> usize {
        self.by_len.iter().map(|m| m.len()).sum()
    }
}

/// Maps IPv4 and IPv6 prefixes to values; a lookup returns the value of the longest
/// prefix containing the address. A prefix has one value: inserting it again replaces it,
/// which is how WireGuard moves an allowed IP from one peer to another.
#[derive(Clone)]
pub struct AllowedIps<T> {
    v4: Family<u32, T>,
    v6: Family<u128, T>,
}

impl<T> Default for AllowedIps<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> AllowedIps<T> {
    pub fn new() -> Self {
        AllowedIps {
            v4: Family::new(),
            v6: Family::new(),
        }
    }

    /// Inserts `net` (host bits cleared) and returns the value it had before, if any.
    pub fn insert(&mut self, net: IpNet, value: T) -> Option<T> {
        match net {
            IpNet::V4(n) => self.v4.insert(u32::from(n.addr()), n.prefix_len(), value),
            IpNet::V6(n) => self.v6.insert(u128::from(n.addr()), n.prefix_len(), value),
        }
    }

    /// Removes exactly `net` (host bits ignored) and returns its value.
    pub fn remove(&mut self, net: IpNet) -> Option<T> {
        match net {
            IpNet::V4(n) => self.v4.remove(u32::from(n.addr()), n.prefix_len()),
            IpNet::V6(n) => self.v6.remove(u128::from(n.addr()), n.prefix_len()),
        }
    }

    /// The value of the longest prefix that contains `addr`.
    #[inline]
    pub fn lookup(&self, addr: IpAddr) -> Option<&T> {
        match addr {
            IpAddr::V4(a) => self.v4.lookup(u32::from(a)),
            IpAddr::V6(a) => self.v6.lookup(u128::from(a)),
        }
    }

    /// Keeps only the entries for which `keep` returns true.
    pub fn retain(&mut self, mut keep: impl FnMut(IpNet, &T) -> bool) {
        self.v4.retain(|k, len, v| keep(v4net(k, len), v));
        self.v6.retain(|k, len, v| keep(v6net(k, len), v));
    }

    /// All entries, IPv4 first, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (IpNet, &T)> {
        let v4 = self.v4.iter().map(|(k, len, v)| (v4net(k, len), v));
        let v6 = self.v6.iter().map(|(k, len, v)| (v6net(k, len), v));
        v4.chain(v6)
    }

    /// A table with the same prefixes and values mapped through `f`.
    pub fn map<U>(&self, mut f: impl FnMut(&T) -> Option<U>) -> AllowedIps<U> {
        let mut out = AllowedIps::new();
        for (net, v) in self.iter() {
            if let Some(u) = f(v) {
                out.insert(net, u);
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn v4net(addr: u32, len: u8) -> IpNet {
    // A length read back from the table is always valid; the fallback never runs.
    IpNet::V4(Ipv4Net::new(Ipv4Addr::from(addr), len).unwrap_or_default())
}

fn v6net(addr: u128, len: u8) -> IpNet {
    IpNet::V6(Ipv6Net::new(Ipv6Addr::from(addr), len).unwrap_or_default())
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

    fn table(entries: &[(&str, &'static str)]) -> AllowedIps<&'static str> {
        let mut t = AllowedIps::new();
        for (n, v) in entries {
            t.insert(net(n), *v);
        }
        t
    }

    #[test]
    fn lookups_return_the_longest_matching_prefix() {
        let t = table(&[
            ("10.244.0.0/16", "cluster"),
            ("10.244.1.0/24", "node-b"),
            ("10.244.1.7/32", "pod"),
            ("0.0.0.0/0", "default"),
            ("fd00::/8", "ula"),
            ("fd00:1::/64", "node-b6"),
            ("::/0", "default6"),
        ]);
        let cases = [
            ("10.244.1.7", Some("pod")),
            ("10.244.1.8", Some("node-b")),
            ("10.244.2.1", Some("cluster")),
            ("192.0.2.1", Some("default")),
            ("fd00:1::5", Some("node-b6")),
            ("fd00:2::5", Some("ula")),
            ("2001:db8::1", Some("default6")),
        ];
        for (addr, want) in cases {
            assert_eq!(t.lookup(ip(addr)).copied(), want, "{addr}");
        }
    }

    #[test]
    fn addresses_outside_every_prefix_have_no_match() {
        let t = table(&[("10.244.1.0/24", "a"), ("fd00::/64", "b")]);
        for addr in ["10.244.2.1", "192.0.2.1", "fd01::1", "::1", "10.244.0.255"] {
            assert_eq!(t.lookup(ip(addr)), None, "{addr}");
        }
    }

    #[test]
    fn host_bits_are_cleared_on_insert() {
        let t = table(&[("10.244.1.9/24", "a")]);
        assert_eq!(t.lookup(ip("10.244.1.200")), Some(&"a"));
        assert_eq!(t.iter().next().map(|(n, _)| n), Some(net("10.244.1.0/24")));
    }

    #[test]
    fn inserting_a_prefix_again_moves_it_to_the_new_value() {
        let mut t = table(&[("10.244.1.0/24", "a")]);
        assert_eq!(t.insert(net("10.244.1.0/24"), "b"), Some("a"));
        assert_eq!(t.lookup(ip("10.244.1.1")), Some(&"b"));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn removing_a_prefix_uncovers_the_shorter_one() {
        let mut t = table(&[("10.244.0.0/16", "wide"), ("10.244.1.0/24", "narrow")]);
        assert_eq!(t.remove(net("10.244.1.0/24")), Some("narrow"));
        assert_eq!(t.lookup(ip("10.244.1.1")), Some(&"wide"));
        assert_eq!(t.remove(net("10.244.1.0/24")), None);
        assert_eq!(t.remove(net("10.244.0.0/16")), Some("wide"));
        assert!(t.is_empty());
        assert_eq!(t.lookup(ip("10.244.1.1")), None);
    }

    #[test]
    fn retain_removes_every_prefix_of_a_value() {
        let mut t = table(&[
            ("10.244.1.0/24", "a"),
            ("10.244.2.0/24", "b"),
            ("10.244.3.0/24", "a"),
            ("fd00::/64", "a"),
        ]);
        t.retain(|_, v| *v != "a");
        assert_eq!(t.len(), 1);
        assert_eq!(t.lookup(ip("10.244.1.1")), None);
        assert_eq!(t.lookup(ip("fd00::1")), None);
        assert_eq!(t.lookup(ip("10.244.2.1")), Some(&"b"));
    }

    #[test]
    fn zero_length_and_full_length_prefixes_work_in_both_families() {
        let t = table(&[
            ("0.0.0.0/0", "any4"),
            ("203.0.113.9/32", "host4"),
            ("::/0", "any6"),
            ("2001:db8::9/128", "host6"),
        ]);
        assert_eq!(t.lookup(ip("203.0.113.9")), Some(&"host4"));
        assert_eq!(t.lookup(ip("203.0.113.8")), Some(&"any4"));
        assert_eq!(t.lookup(ip("2001:db8::9")), Some(&"host6"));
        assert_eq!(t.lookup(ip("2001:db8::8")), Some(&"any6"));
    }

    #[test]
    fn ipv4_and_ipv6_prefixes_do_not_shadow_each_other() {
        let t = table(&[("0.0.0.0/0", "v4")]);
        assert_eq!(t.lookup(ip("::ffff:10.0.0.1")), None);
        assert_eq!(t.lookup(ip("::")), None);
    }

    #[test]
    fn map_keeps_prefixes_and_drops_filtered_values() {
        let t = table(&[("10.244.1.0/24", "a"), ("10.244.2.0/24", "b")]);
        let m = t.map(|v| (*v == "a").then_some(1u8));
        assert_eq!(m.len(), 1);
        assert_eq!(m.lookup(ip("10.244.1.1")), Some(&1));
    }
}
