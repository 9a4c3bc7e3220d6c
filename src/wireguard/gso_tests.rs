use proptest::prelude::*;

use super::*;
use crate::wireguard::testpkt::{self, ACK, FIN, PSH, Spec};
use crate::wireguard::vnet::{F_NEEDS_CSUM, GSO_ECN};

/// A super-packet as the kernel hands it over: the first segment's headers, all the
/// payload, the pseudo-header sum in the checksum field.
fn super_packet(spec: &Spec, payload: &[u8], gso_size: u16) -> (VnetHdr, Vec<u8>) {
    let mut p = spec.build(payload);
    let (ip, l4) = (spec.ip_len(), spec.l4_len());
    let at = ip + if spec.proto == testpkt::TCP { 16 } else { 6 };
    let partial = testpkt::partial_field(&p, spec.proto);
    p[at..at + 2].copy_from_slice(&partial.to_be_bytes());
    let gso_type = match (spec.proto, spec.v6) {
        (testpkt::TCP, false) => GSO_TCPV4,
        (testpkt::TCP, true) => GSO_TCPV6,
        _ => GSO_UDP_L4,
    };
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type,
        // What the kernel really puts there: the linear length, not the headers.
        hdr_len: (ip + l4 + 100) as u16,
        gso_size,
        csum_start: ip as u16,
        csum_offset: (at - ip) as u16,
    };
    (hdr, p)
}

fn segments(hdr: &VnetHdr, packet: &[u8]) -> Vec<Vec<u8>> {
    let mut s = Segmenter::new(hdr, packet).expect("valid");
    let mut out = vec![0u8; s.max_segment()];
    let mut all = Vec::new();
    let n = s.remaining();
    while let Some(len) = s.next_into(&mut out) {
        all.push(out[..len].to_vec());
    }
    assert_eq!(all.len(), n);
    all
}

#[test]
fn super_packets_become_exactly_the_segments_the_kernel_would_send() {
    struct Case {
        name: &'static str,
        spec: Spec,
        payload: usize,
        gso: u16,
    }
    let last_flags = Spec {
        flags: ACK | PSH | FIN,
        ..Spec::tcp4()
    };
    let cases = [
        Case {
            name: "tcp4, 3.5 segments",
            spec: Spec::tcp4(),
            payload: 3500,
            gso: 1000,
        },
        Case {
            name: "tcp6, 3.5 segments",
            spec: Spec::tcp6(),
            payload: 3500,
            gso: 1000,
        },
        Case {
            name: "tcp4, exactly 2",
            spec: Spec::tcp4(),
            payload: 2736,
            gso: 1368,
        },
        Case {
            name: "tcp4, 64 KiB",
            spec: Spec::tcp4(),
            payload: 65535 - 52,
            gso: 1368,
        },
        Case {
            name: "tcp4 PSH FIN last only",
            spec: last_flags,
            payload: 2500,
            gso: 1000,
        },
        Case {
            name: "udp4",
            spec: Spec::udp4(),
            payload: 4000,
            gso: 1400,
        },
        Case {
            name: "udp6",
            spec: Spec::udp6(),
            payload: 2801,
            gso: 1400,
        },
        Case {
            name: "one segment",
            spec: Spec::tcp4(),
            payload: 10,
            gso: 1368,
        },
    ];
    for c in cases {
        let payload = testpkt::payload(c.payload, 7);
        let (hdr, p) = super_packet(&c.spec, &payload, c.gso);
        let got = segments(&hdr, &p);
        let chunks: Vec<&[u8]> = payload.chunks(usize::from(c.gso)).collect();
        assert_eq!(got.len(), chunks.len(), "{}", c.name);
        for (i, (seg, chunk)) in got.iter().zip(&chunks).enumerate() {
            let last = i + 1 == chunks.len();
            let want = Spec {
                seq: c.spec.seq.wrapping_add((i * usize::from(c.gso)) as u32),
                id: c.spec.id.wrapping_add(i as u16),
                flags: if last {
                    c.spec.flags
                } else {
                    c.spec.flags & !(PSH | FIN)
                },
                ..c.spec.clone()
            }
            .build(chunk);
            assert_eq!(seg, &want, "{} segment {i}", c.name);
            assert!(testpkt::checksums_ok(seg), "{} segment {i}", c.name);
        }
    }
}

#[test]
fn cwr_stays_on_the_first_segment_only() {
    let spec = Spec {
        flags: ACK | 0x80,
        ..Spec::tcp4()
    };
    let (mut hdr, p) = super_packet(&spec, &testpkt::payload(3000, 1), 1000);
    hdr.gso_type |= GSO_ECN;
    let segs = segments(&hdr, &p);
    let flags: Vec<u8> = segs.iter().map(|s| s[20 + 13]).collect();
    assert_eq!(flags, [ACK | 0x80, ACK, ACK]);
    assert!(segs.iter().all(|s| testpkt::checksums_ok(s)));
}

#[test]
fn ipv4_ids_wrap_and_sequence_numbers_wrap() {
    let spec = Spec {
        id: 0xffff,
        seq: u32::MAX - 500,
        ..Spec::tcp4()
    };
    let (hdr, p) = super_packet(&spec, &testpkt::payload(2000, 2), 1000);
    let segs = segments(&hdr, &p);
    assert_eq!(&segs[1][4..6], &[0, 0]);
    assert_eq!(&segs[1][24..28], &499u32.to_be_bytes());
    assert!(segs.iter().all(|s| testpkt::checksums_ok(s)));
}

#[test]
fn a_packet_without_gso_is_its_own_segment() {
    let p = Spec::tcp4().build(&testpkt::payload(100, 3));
    assert_eq!(segments(&VnetHdr::default(), &p), vec![p.clone()]);
}

#[test]
fn malformed_super_packets_are_refused_not_panicked_on() {
    let (good, p) = super_packet(&Spec::tcp4(), &testpkt::payload(3000, 4), 1000);
    let (good6, p6) = super_packet(&Spec::tcp6(), &testpkt::payload(3000, 4), 1000);
    let mut short_doff = p.clone();
    short_doff[32] = 0x40;
    let with = |f: &dyn Fn(&mut VnetHdr)| {
        let mut h = good;
        f(&mut h);
        h
    };
    let cases: Vec<(&str, VnetHdr, Vec<u8>, GsoError)> = vec![
        (
            "gso size 0",
            with(&|h| h.gso_size = 0),
            p.clone(),
            GsoError::ZeroSize,
        ),
        (
            "UFO",
            with(&|h| h.gso_type = 3),
            p.clone(),
            GsoError::UnsupportedType(3),
        ),
        (
            "v6 type on v4",
            with(&|h| h.gso_type = GSO_TCPV6),
            p.clone(),
            GsoError::BadIpHeader,
        ),
        (
            "v4 type on v6",
            good6.with_type(GSO_TCPV4),
            p6.clone(),
            GsoError::BadIpHeader,
        ),
        (
            "csum start inside IP",
            with(&|h| h.csum_start = 16),
            p.clone(),
            GsoError::BadIpHeader,
        ),
        (
            "csum offset",
            with(&|h| h.csum_offset = 6),
            p.clone(),
            GsoError::BadChecksumOffset,
        ),
        ("doff 4", good, short_doff, GsoError::BadTransportHeader),
        (
            "headers only",
            good,
            p[..52].to_vec(),
            GsoError::BadTransportHeader,
        ),
        (
            "truncated IP",
            good,
            p[..12].to_vec(),
            GsoError::BadIpHeader,
        ),
        ("empty", good, Vec::new(), GsoError::BadIpHeader),
        (
            "udp type on tcp",
            with(&|h| h.gso_type = GSO_UDP_L4),
            p.clone(),
            GsoError::BadIpHeader,
        ),
    ];
    for (name, hdr, packet, want) in cases {
        assert_eq!(Segmenter::new(&hdr, &packet).err(), Some(want), "{name}");
    }
}

trait WithType {
    fn with_type(self, t: u8) -> Self;
}

impl WithType for VnetHdr {
    fn with_type(mut self, t: u8) -> Self {
        self.gso_type = t;
        self
    }
}

#[test]
fn a_short_output_buffer_yields_nothing() {
    let (hdr, p) = super_packet(&Spec::tcp4(), &testpkt::payload(3000, 5), 1000);
    let mut s = Segmenter::new(&hdr, &p).expect("valid");
    assert_eq!(s.next_into(&mut [0u8; 100]), None);
}

#[test]
fn partial_checksums_are_completed_in_place() {
    for spec in [Spec::tcp4(), Spec::tcp6(), Spec::udp4(), Spec::udp6()] {
        let want = spec.build(&testpkt::payload(333, 6));
        let (mut hdr, mut p) = super_packet(&spec, &testpkt::payload(333, 6), 1400);
        hdr.gso_type = GSO_NONE;
        complete_checksum(&hdr, &mut p).expect("valid");
        assert_eq!(p, want, "{spec:?}");
    }
    let bad = VnetHdr {
        csum_start: 60,
        csum_offset: 16,
        ..VnetHdr::default()
    };
    assert_eq!(
        complete_checksum(&bad, &mut [0u8; 70]),
        Err(GsoError::BadChecksumOffset)
    );
}

proptest! {
    #[test]
    fn segments_carry_the_payload_in_order_with_valid_checksums(
        len in 1usize..20000,
        gso in 1u16..3000,
        v6 in any::<bool>(),
        udp in any::<bool>(),
    ) {
        let spec = match (v6, udp) {
            (false, false) => Spec::tcp4(),
            (true, false) => Spec::tcp6(),
            (false, true) => Spec::udp4(),
            (true, true) => Spec::udp6(),
        };
        let payload = testpkt::payload(len, 9);
        let (hdr, p) = super_packet(&spec, &payload, gso);
        let segs = segments(&hdr, &p);
        let head = spec.ip_len() + spec.l4_len();
        let mut joined = Vec::new();
        for s in &segs {
            prop_assert!(testpkt::checksums_ok(s));
            prop_assert!(s.len() <= head + usize::from(gso));
            joined.extend_from_slice(&s[head..]);
        }
        prop_assert_eq!(joined, payload);
    }
}
