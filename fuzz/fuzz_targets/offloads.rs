//! The fast path's packet logic on packets nobody vouches for: what a peer sends is
//! authenticated but its inner packets are whatever the peer chose, and they go through
//! `gro::Coalescer` on the way to the TUN; what the TUN hands over (a virtio_net_hdr and
//! a possibly huge packet) goes through `gso::Segmenter` and `gso::complete_checksum`.
//!
//! The first byte chooses:
//! - even: a virtio_net_hdr and a packet, as read from the TUN, segmented;
//! - odd: packets as decrypted in one receive (each a 2-byte big-endian length and its
//!   bytes), coalesced, then cut again as the kernel would.
//!
//! Checked: nothing panics; segments are never larger than `max_segment`, their count is
//! what `remaining` said, and their payloads put together are the super-packet's; every
//! packet pushed comes out once (as a head or an appended payload), in order; a plain
//! write is the packet unchanged; a coalesced write is a valid super-packet whose
//! segments carry exactly the payloads and sequence numbers of the packets it took.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wgmesh::wireguard::gro::{Coalescer, Slot};
use wgmesh::wireguard::gso::{Segmenter, complete_checksum};
use wgmesh::wireguard::vnet::{F_NEEDS_CSUM, GSO_NONE, VNET_HDR_LEN, VnetHdr};

/// What a TUN read holds at most after the header.
const MAX_PACKET: usize = 65535;
/// Packets per receive batch: more than the coalescer keeps open.
const MAX_PACKETS: usize = 200;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        segment(rest);
    } else {
        coalesce(rest);
    }
});

fn segment(data: &[u8]) {
    let Some(hdr) = VnetHdr::decode(data) else {
        return;
    };
    let packet = &data[VNET_HDR_LEN..];
    if packet.len() > MAX_PACKET {
        return;
    }
    if hdr.gso_kind() == GSO_NONE && hdr.flags & F_NEEDS_CSUM != 0 {
        let mut copy = packet.to_vec();
        if complete_checksum(&hdr, &mut copy).is_err() {
            assert_eq!(copy, packet, "a refused packet is left as it was");
        }
    }
    let Ok(segments) = cut(&hdr, packet) else {
        return;
    };
    if hdr.gso_kind() == GSO_NONE {
        assert_eq!(segments, [packet.to_vec()]);
        return;
    }
    // The headers are copied in front of each segment, every segment but the last is
    // full; the payloads add up to the super-packet's.
    let (n, gso) = (segments.len(), usize::from(hdr.gso_size));
    if n == 1 {
        assert_eq!(segments[0].len(), packet.len());
    } else {
        let h = segments[0].len() - gso;
        assert!(segments[..n - 1].iter().all(|s| s.len() == h + gso));
        let joined: Vec<u8> = segments.iter().flat_map(|s| s[h..].to_vec()).collect();
        assert_eq!(joined, packet[h..]);
    }
}

/// Every segment of `packet`, with the checks on sizes and counts.
fn cut(hdr: &VnetHdr, packet: &[u8]) -> Result<Vec<Vec<u8>>, ()> {
    let mut s = Segmenter::new(hdr, packet).map_err(|_| ())?;
    let expected = s.remaining();
    let max = s.max_segment();
    let mut out = vec![0u8; max];
    if max > 0 {
        assert_eq!(
            s.next_into(&mut out[..max - 1]),
            None,
            "a short buffer is refused"
        );
    }
    let mut segments = Vec::new();
    while let Some(n) = s.next_into(&mut out) {
        assert!(n <= max, "segment of {n} bytes, max {max}");
        segments.push(out[..n].to_vec());
        assert!(segments.len() <= expected, "more segments than announced");
    }
    assert_eq!(segments.len(), expected);
    assert_eq!(s.remaining(), 0);
    Ok(segments)
}

fn coalesce(data: &[u8]) {
    // Lay the packets out as the receive path does: VNET_HDR_LEN bytes free before each.
    let mut arena = Vec::new();
    let mut slots = Vec::new();
    let mut rest = data;
    while let [a, b, tail @ ..] = rest {
        if slots.len() == MAX_PACKETS {
            break;
        }
        let len = usize::from(u16::from_be_bytes([*a, *b])).min(tail.len());
        arena.extend_from_slice(&[0u8; VNET_HDR_LEN]);
        slots.push(Slot {
            start: arena.len(),
            len,
        });
        arena.extend_from_slice(&tail[..len]);
        rest = &tail[len..];
    }
    let original = arena.clone();
    let packet = |s: &Slot| &original[s.start..s.start + s.len];

    let mut c = Coalescer::default();
    for s in &slots {
        c.push(&arena, *s);
    }
    c.finish(&mut arena);

    // Every packet once, in order of arrival as heads; appended payloads point into
    // packets pushed after their head.
    let mut seen = Vec::new();
    for (head, payloads) in c.writes() {
        let index = slots
            .iter()
            .position(|s| *s == head)
            .expect("a head is a pushed packet");
        seen.push(index);
        let hdr = VnetHdr::decode(&arena[head.start - VNET_HDR_LEN..]).expect("a header");
        let appended: Vec<Slot> = payloads.collect();
        if appended.is_empty() {
            assert_eq!(
                hdr,
                VnetHdr::default(),
                "a plain packet has an empty header"
            );
            assert_eq!(&arena[head.start..head.start + head.len], packet(&head));
            continue;
        }
        // The packets this write took: the head, then each one whose payload was appended.
        let mut taken = vec![head];
        for p in &appended {
            let at = slots
                .iter()
                .position(|s| s.start <= p.start && p.start + p.len == s.start + s.len)
                .expect("an appended payload is the tail of a pushed packet");
            assert!(at > index, "appended before its head");
            seen.push(at);
            taken.push(slots[at]);
        }
        let mut write = arena[head.start..head.start + head.len].to_vec();
        for p in &appended {
            write.extend_from_slice(&arena[p.start..p.start + p.len]);
        }
        let segments = cut(&hdr, &write).expect("a coalesced write is a valid super-packet");
        assert_eq!(segments.len(), taken.len());
        let l4 = usize::from(hdr.csum_start);
        for (seg, orig) in segments.iter().zip(&taken) {
            let orig = packet(orig);
            let h = usize::from(hdr.hdr_len);
            assert_eq!(seg[h..], orig[h..], "payload");
            assert_eq!(seg[l4 + 4..l4 + 8], orig[l4 + 4..l4 + 8], "sequence number");
        }
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..slots.len()).collect::<Vec<_>>(),
        "every packet once"
    );
}
