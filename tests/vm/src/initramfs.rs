//! The VM's initramfs: a `newc` cpio archive (the format the kernel unpacks, see the
//! kernel's `Documentation/driver-api/early-userspace/buffer-format.rst`) holding
//! busybox, the few modules needed to mount the host's root over 9p, and the init
//! scripts (test infrastructure). Pure but for reading the files it packs.

/// One entry of the archive.
pub enum Entry {
    Dir(&'static str),
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
}

/// The archive of `entries`, in order, with the trailer.
pub fn newc(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (ino, e) in entries.iter().enumerate() {
        let (name, mode, data): (&str, u32, &[u8]) = match e {
            Entry::Dir(p) => (p, 0o040755, &[]),
            Entry::File { path, mode, data } => (path, 0o100000 | mode, data),
        };
        header(&mut out, ino as u32 + 1, mode, name, data.len());
        out.extend_from_slice(data);
        pad4(&mut out);
    }
    header(&mut out, 0, 0, "TRAILER!!!", 0);
    out
}

fn header(out: &mut Vec<u8>, ino: u32, mode: u32, name: &str, size: usize) {
    let nlink = if mode & 0o040000 != 0 { 2 } else { 1 };
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        size as u32,
        0,
        0,
        0,
        0,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_newc_records_padded_to_four_bytes_and_end_with_the_trailer() {
        let a = newc(&[
            Entry::Dir("bin"),
            Entry::File {
                path: "init".into(),
                mode: 0o755,
                data: b"#!/bin/sh\n".to_vec(),
            },
        ]);
        assert_eq!(a.len() % 4, 0);
        assert_eq!(&a[..6], b"070701");
        // Mode field (second) of the directory, then its name after the 110-byte header.
        assert_eq!(&a[14..22], b"000041ed");
        assert_eq!(&a[110..114], b"bin\0");
        let file = a.windows(5).position(|w| w == b"init\0").unwrap();
        assert_eq!(&a[file - 110 + 14..file - 110 + 22], b"000081ed");
        assert_eq!(
            &a[file - 110 + 54..file - 110 + 62],
            b"0000000a",
            "file size"
        );
        assert!(a.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
