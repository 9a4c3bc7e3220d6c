//! Which offloads a device asks for ([`Offloads`], from `DeviceConfig` or the
//! `WGMESH_OFFLOADS` environment variable) and how the TUN's are negotiated with the
//! kernel ([`negotiate_tun`]). Pure, apart from reading the variable.
//!
//! Each offload falls back on its own: a kernel without USO still gets TSO, one refusing
//! TSO still gets the virtio_net_hdr (and coalesced writes), a socket without UDP GSO or
//! GRO sends and receives datagram by datagram in batches. Nothing is required: with
//! everything off the data path is the plain one, a packet per read and write.

use std::io;

/// The environment variable: `on` (the default), `off`, or a comma-separated list of
/// the offloads to use among `tun`, `gso`, `gro`.
pub const ENV: &str = "WGMESH_OFFLOADS";

pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;
pub const TUN_F_USO4: u32 = 0x20;
pub const TUN_F_USO6: u32 = 0x40;

/// The offloads a device may use, if the kernel has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offloads {
    /// TUN with virtio_net_hdr: TCP/UDP super-packets in, coalesced TCP out.
    pub tun: bool,
    /// UDP GSO (`UDP_SEGMENT`): one send for a run of datagrams to one endpoint.
    pub udp_gso: bool,
    /// UDP GRO (`UDP_GRO`): one receive for a run of datagrams from one endpoint.
    pub udp_gro: bool,
}

/// A `WGMESH_OFFLOADS` value that is none of the accepted ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{ENV}={0:?}: expected on, off, or a list of tun, gso, gro")]
pub struct ParseError(String);

impl Offloads {
    pub const ALL: Offloads = Offloads {
        tun: true,
        udp_gso: true,
        udp_gro: true,
    };
    pub const NONE: Offloads = Offloads {
        tun: false,
        udp_gso: false,
        udp_gro: false,
    };

    pub fn parse(value: &str) -> Result<Offloads, ParseError> {
        match value.trim() {
            "" | "on" | "all" => return Ok(Offloads::ALL),
            "off" | "none" => return Ok(Offloads::NONE),
            _ => {}
        }
        let mut o = Offloads::NONE;
        for part in value.split(',').map(str::trim) {
            match part {
                "tun" => o.tun = true,
                "gso" => o.udp_gso = true,
                "gro" => o.udp_gro = true,
                _ => return Err(ParseError(value.to_string())),
            }
        }
        Ok(o)
    }

    /// From `WGMESH_OFFLOADS`; see [`Offloads::from_var`].
    pub fn from_env() -> Offloads {
        Offloads::from_var(std::env::var(ENV).ok().as_deref())
    }

    /// From the variable's value: all when unset; an invalid value is logged and means
    /// all.
    pub fn from_var(value: Option<&str>) -> Offloads {
        match value {
            Some(v) => Offloads::parse(v).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "ignored; using every offload available");
                Offloads::ALL
            }),
            None => Offloads::ALL,
        }
    }
}

impl Default for Offloads {
    fn default() -> Self {
        Offloads::ALL
    }
}

/// The TUN offload sets tried, richest first: USO needs Linux 6.2, TSO and checksum
/// offload are much older.
pub const TUN_ATTEMPTS: [u32; 3] = [
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6,
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
    TUN_F_CSUM,
];

/// What TUNSETOFFLOAD granted, and the errors of the richer sets refused before.
#[derive(Debug)]
pub struct TunGrant {
    pub flags: u32,
    pub refused: Vec<(u32, io::Error)>,
}

impl TunGrant {
    pub fn tso(&self) -> bool {
        self.flags & TUN_F_TSO4 != 0
    }

    pub fn uso(&self) -> bool {
        self.flags & TUN_F_USO4 != 0
    }
}

/// Tries [`TUN_ATTEMPTS`] in order with `set` (TUNSETOFFLOAD) and keeps the first the
/// kernel accepts; if it accepts none, clears the flags (0) and grants nothing.
pub fn negotiate_tun(mut set: impl FnMut(u32) -> io::Result<()>) -> TunGrant {
    let mut refused = Vec::new();
    for flags in TUN_ATTEMPTS {
        match set(flags) {
            Ok(()) => return TunGrant { flags, refused },
            Err(e) => refused.push((flags, e)),
        }
    }
    if let Err(e) = set(0) {
        refused.push((0, e));
    }
    TunGrant { flags: 0, refused }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_takes_on_off_or_a_list() {
        let cases: &[(&str, Option<Offloads>)] = &[
            ("", Some(Offloads::ALL)),
            ("on", Some(Offloads::ALL)),
            ("off", Some(Offloads::NONE)),
            ("none", Some(Offloads::NONE)),
            (
                "tun",
                Some(Offloads {
                    tun: true,
                    ..Offloads::NONE
                }),
            ),
            (
                "gso, gro",
                Some(Offloads {
                    udp_gso: true,
                    udp_gro: true,
                    ..Offloads::NONE
                }),
            ),
            ("tun,gso,gro", Some(Offloads::ALL)),
            ("tso", None),
            ("on,tun", None),
        ];
        for (value, want) in cases {
            assert_eq!(Offloads::parse(value).ok(), *want, "{value:?}");
        }
        assert_eq!(Offloads::default(), Offloads::ALL);
    }

    #[test]
    fn unset_means_every_offload_and_an_invalid_value_too() {
        let gro = Offloads {
            udp_gro: true,
            ..Offloads::NONE
        };
        let cases: &[(Option<&str>, Offloads)] = &[
            (None, Offloads::ALL),
            (Some("off"), Offloads::NONE),
            (Some("gro"), gro),
            (Some("turbo"), Offloads::ALL),
        ];
        for (value, want) in cases {
            assert_eq!(Offloads::from_var(*value), *want, "{value:?}");
        }
    }

    /// A fake TUNSETOFFLOAD accepting only flag sets within `supported`.
    fn kernel(supported: Option<u32>) -> impl FnMut(u32) -> io::Result<()> {
        move |flags| match supported {
            Some(s) if flags & !s == 0 => Ok(()),
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }

    #[test]
    fn tun_offloads_fall_back_one_step_at_a_time() {
        let all = TUN_ATTEMPTS[0];
        let cases: &[(&str, Option<u32>, u32, usize)] = &[
            ("6.2+: everything", Some(all), all, 0),
            (
                "before 6.2: no USO",
                Some(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | 0x08),
                TUN_ATTEMPTS[1],
                1,
            ),
            ("checksum only", Some(TUN_F_CSUM), TUN_F_CSUM, 2),
            ("nothing but clearing", Some(0), 0, 3),
            ("the ioctl always fails", None, 0, 4),
        ];
        for (name, supported, flags, refused) in cases {
            let g = negotiate_tun(kernel(*supported));
            assert_eq!(g.flags, *flags, "{name}");
            assert_eq!(g.refused.len(), *refused, "{name}");
        }
        let g = negotiate_tun(kernel(Some(TUN_ATTEMPTS[1])));
        assert!(g.tso() && !g.uso());
    }
}
