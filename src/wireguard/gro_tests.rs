use proptest::prelude::*;

use super::*;
use crate::wireguard::gso::Segmenter;
use crate::wireguard::testpkt::{self, ACK, FIN, PSH, Spec};
use crate::wireguard::vnet::{GSO_NONE, GSO_TCPV4, GSO_TCPV6};

/// Lays `packets` out as the receive path does (headroom before each), coalesces them,
/// and returns every write as the TUN would get it: virtio_net_hdr, head, payloads.
fn coalesce(packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut arena = Vec::new();
    let mut slots = Vec::new();
    for p in packets {
        arena.extend_from_slice(&[0xee; VNET_HDR_LEN]);
        slots.push(Slot {
            start: arena.len(),
            len: p.len(),
        });
        arena.extend_from_slice(p);
    }
    let mut c = Coalescer::default();
    for s in slots {
        c.push(&arena, s);
    }
    c.finish(&mut arena);
    let writes = c
        .writes()
        .map(|(head, payloads)| {
            let mut w = arena[head.start - VNET_HDR_LEN..head.start + head.len].to_vec();
            for p in payloads {
                w.extend_from_slice(&arena[p.start..p.start + p.len]);
            }
            w
        })
        .collect();
    c.clear();
    assert!(c.is_empty());
    writes
}

/// What the kernel makes of a write: the packets it stands for.
fn resegment(write: &[u8]) -> Vec<Vec<u8>> {
    let hdr = VnetHdr::decode(write).expect("header");
    let packet = &write[VNET_HDR_LEN..];
    if hdr.gso_type == GSO_NONE {
        assert_eq!(hdr, VnetHdr::default());
        return vec![packet.to_vec()];
    }
    let mut s = Segmenter::new(&hdr, packet).expect("a valid super-packet");
    let mut out = vec![0u8; s.max_segment()];
    let mut all = Vec::new();
    while let Some(n) = s.next_into(&mut out) {
        all.push(out[..n].to_vec());
    }
    all
}

/// `n` consecutive segments of one flow, `size` payload bytes each (the last `last`).
fn stream(spec: &Spec, n: usize, size: usize, last: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let len = if i + 1 == n { last } else { size };
            Spec {
                seq: spec.seq.wrapping_add((i * size) as u32),
                id: spec.id.wrapping_add(i as u16),
                ..spec.clone()
            }
            .build(&testpkt::payload(len, i as u8))
        })
        .collect()
}

fn with(spec: &Spec, f: impl FnOnce(&mut Spec)) -> Spec {
    let mut s = spec.clone();
    f(&mut s);
    s
}

type Packets = Vec<Vec<u8>>;

#[test]
fn coalescing_table() {
    let s4 = Spec::tcp4();
    let s6 = Spec::tcp6();
    let other_flow = with(&s4, |s| s.src_port = 40001);
    let cases: Vec<(&str, Packets, Vec<usize>)> = vec![
        // (name, packets in, packets per write out)
        (
            "one flow, full segments",
            stream(&s4, 5, 1368, 1368),
            vec![5],
        ),
        ("ipv6 flow", stream(&s6, 4, 1348, 1348), vec![4]),
        (
            "a short last segment joins",
            stream(&s4, 3, 1368, 500),
            vec![3],
        ),
        ("single packet", stream(&s4, 1, 1368, 1368), vec![1]),
        (
            "nothing after a short segment",
            {
                let mut p = stream(&s4, 2, 1368, 500);
                p.push(with(&s4, |s| s.seq += 1868).build(&testpkt::payload(1368, 0)));
                p
            },
            vec![2, 1],
        ),
        (
            "PSH ends a run",
            vec![
                s4.build(&testpkt::payload(1000, 0)),
                with(&s4, |s| {
                    s.seq += 1000;
                    s.id += 1;
                    s.flags = ACK | PSH;
                })
                .build(&testpkt::payload(1000, 1)),
                with(&s4, |s| s.seq += 2000).build(&testpkt::payload(1000, 2)),
            ],
            vec![2, 1],
        ),
        (
            "a different ACK starts a new run",
            vec![
                s4.build(&testpkt::payload(1000, 0)),
                with(&s4, |s| {
                    s.seq += 1000;
                    s.ack += 1;
                })
                .build(&testpkt::payload(1000, 1)),
            ],
            vec![1, 1],
        ),
        (
            "a gap in sequence numbers",
            vec![
                s4.build(&testpkt::payload(1000, 0)),
                with(&s4, |s| s.seq += 2000).build(&testpkt::payload(1000, 1)),
            ],
            vec![1, 1],
        ),
        (
            "a larger segment cannot follow",
            vec![
                s4.build(&testpkt::payload(1000, 0)),
                with(&s4, |s| s.seq += 1000).build(&testpkt::payload(1001, 1)),
            ],
            vec![1, 1],
        ),
        (
            "different TTL",
            vec![
                s4.build(&testpkt::payload(1000, 0)),
                with(&s4, |s| {
                    s.seq += 1000;
                    s.ttl = 63;
                })
                .build(&testpkt::payload(1000, 1)),
            ],
            vec![1, 1],
        ),
        (
            "different TCP options",
            vec![
                s4.build(&testpkt::payload(1000, 0)),
                with(&s4, |s| {
                    s.seq += 1000;
                    s.options[11] = 9;
                })
                .build(&testpkt::payload(1000, 1)),
            ],
            vec![1, 1],
        ),
        (
            "two interleaved flows",
            {
                let a = stream(&s4, 3, 1000, 1000);
                let b = stream(&other_flow, 3, 1000, 1000);
                vec![
                    a[0].clone(),
                    b[0].clone(),
                    a[1].clone(),
                    b[1].clone(),
                    a[2].clone(),
                    b[2].clone(),
                ]
            },
            vec![3, 3],
        ),
        (
            "UDP and pure ACKs pass alone, in place",
            {
                let a = stream(&s4, 2, 1000, 1000);
                let reverse = with(&s4, |s| {
                    s.src_port = 5201;
                    s.dst_port = 40000;
                })
                .build(&[]);
                vec![
                    a[0].clone(),
                    Spec::udp4().build(&[1, 2, 3]),
                    reverse,
                    a[1].clone(),
                ]
            },
            vec![2, 1, 1],
        ),
        (
            "a FIN of the flow ends its run",
            {
                let a = stream(&s4, 3, 1000, 1000);
                let fin = with(&s4, |s| {
                    s.seq += 1000;
                    s.flags = ACK | FIN;
                })
                .build(&[]);
                vec![a[0].clone(), fin, a[1].clone()]
            },
            vec![1, 1, 1],
        ),
        (
            "a pure ACK of the flow ends its run",
            {
                let a = stream(&s4, 2, 1000, 1000);
                vec![
                    a[0].clone(),
                    with(&s4, |s| s.seq += 1000).build(&[]),
                    a[1].clone(),
                ]
            },
            vec![1, 1, 1],
        ),
        (
            "64 segments at most",
            stream(&s4, 70, 100, 100),
            vec![64, 6],
        ),
        ("64 KiB at most", stream(&s4, 50, 1368, 1368), vec![47, 3]),
    ];
    for (name, packets, want) in cases {
        let writes = coalesce(&packets);
        let got: Vec<usize> = writes.iter().map(|w| resegment(w).len()).collect();
        assert_eq!(got, want, "{name}");
        for w in &writes {
            assert!(w.len() - VNET_HDR_LEN <= 65535, "{name}");
        }
        let mut out: Vec<Vec<u8>> = writes.iter().flat_map(|w| resegment(w)).collect();
        let mut sorted_in = packets.clone();
        // Writes keep each flow's order; across flows the order may change.
        out.sort();
        sorted_in.sort();
        // (Not assert_eq: the packets are long.)
        assert!(
            out == sorted_in,
            "{name}: the packets the kernel sees are not the ones sent"
        );
    }
}

#[test]
fn a_coalesced_head_carries_the_offload_header_the_kernel_expects() {
    for (spec, gso_type, l4) in [(Spec::tcp4(), GSO_TCPV4, 20), (Spec::tcp6(), GSO_TCPV6, 40)] {
        let packets = stream(&spec, 3, 1000, 600);
        let writes = coalesce(&packets);
        assert_eq!(writes.len(), 1);
        let w = &writes[0];
        let hdr = VnetHdr::decode(w).expect("header");
        assert_eq!(
            hdr,
            VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type,
                hdr_len: (l4 + 32) as u16,
                gso_size: 1000,
                csum_start: l4 as u16,
                csum_offset: 16,
            }
        );
        let p = &w[VNET_HDR_LEN..];
        assert_eq!(p.len(), l4 + 32 + 2600);
        if l4 == 20 {
            assert_eq!(u16::from_be_bytes([p[2], p[3]]) as usize, p.len());
            assert_eq!(checksum::checksum(&p[..20]), 0, "IPv4 header checksum");
        } else {
            assert_eq!(u16::from_be_bytes([p[4], p[5]]) as usize, p.len() - 40);
        }
        let field = u16::from_be_bytes([p[l4 + 16], p[l4 + 17]]);
        assert_eq!(field, testpkt::partial_field(p, testpkt::TCP));
    }
}

#[test]
fn malformed_and_foreign_packets_pass_through_untouched() {
    let good = Spec::tcp4().build(&testpkt::payload(100, 1));
    let mut bad_len = good.clone();
    bad_len[3] ^= 1;
    let mut options = good.clone();
    options[0] = 0x46;
    let mut fragment = good.clone();
    fragment[6] = 0x20;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("one byte", vec![0x45]),
        ("truncated IPv4", good[..15].to_vec()),
        ("truncated TCP", good[..30].to_vec()),
        ("total length mismatch", bad_len),
        ("IPv4 options", options),
        ("fragment", fragment),
        ("version 5", vec![0x50; 60]),
        ("IPv6 truncated", vec![0x60; 39]),
    ];
    for (name, p) in cases {
        let writes = coalesce(&[p.clone(), p.clone()]);
        assert_eq!(writes.len(), 2, "{name}");
        for w in writes {
            assert_eq!(&w[..VNET_HDR_LEN], &[0; VNET_HDR_LEN], "{name}");
            assert_eq!(&w[VNET_HDR_LEN..], &p[..], "{name}");
        }
    }
}

proptest! {
    #[test]
    fn every_flow_arrives_complete_and_in_order(
        sizes in proptest::collection::vec((0usize..3, 1usize..1500, 0u8..10), 1..120),
    ) {
        // Three flows; each packet continues its flow (or, 1 in 10, skips ahead).
        let flows = [Spec::tcp4(), with(&Spec::tcp4(), |s| s.dst_port = 80), Spec::tcp6()];
        let mut next_seq = [1000u32; 3];
        let mut next_id = [0u16; 3];
        let mut per_flow: Vec<Vec<Vec<u8>>> = vec![Vec::new(); 3];
        let mut packets = Vec::new();
        for (f, len, dice) in sizes {
            if dice == 0 {
                next_seq[f] = next_seq[f].wrapping_add(7);
            }
            let p = Spec { seq: next_seq[f], id: next_id[f], ..flows[f].clone() }
                .build(&testpkt::payload(len, dice));
            next_seq[f] = next_seq[f].wrapping_add(len as u32);
            next_id[f] = next_id[f].wrapping_add(1);
            per_flow[f].push(p.clone());
            packets.push(p);
        }
        let mut got: Vec<Vec<Vec<u8>>> = vec![Vec::new(); 3];
        for w in coalesce(&packets) {
            for p in resegment(&w) {
                prop_assert!(testpkt::checksums_ok(&p));
                let f = per_flow.iter().position(|ps| ps.contains(&p)).expect("a sent packet");
                got[f].push(p);
            }
        }
        prop_assert_eq!(got, per_flow);
    }
}
