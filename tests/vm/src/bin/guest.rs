//! The guest agent of the test VM (test infrastructure): reads requests from the
//! virtio-serial port named `wgmesh.ctl`, runs each on its own thread, and writes the
//! answers back. Started by the VM's init once the root filesystem is mounted.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use wgmesh_vm::protocol::{Request, Response};

const PORT_NAME: &str = "wgmesh.ctl";

fn port_path() -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir("/sys/class/virtio-ports").ok()?.flatten() {
        let name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if name.trim() == PORT_NAME {
            return Some(std::path::Path::new("/dev").join(entry.file_name()));
        }
    }
    None
}

fn run(req: &Request) -> Response {
    let Some((program, args)) = req.argv.split_first() else {
        return Response {
            id: req.id,
            code: 127,
            stdout: String::new(),
            stderr: "an empty command line".into(),
        };
    };
    let child = Command::new(program)
        .args(args)
        .env("WGMESH_VM", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            return Response {
                id: req.id,
                code: 127,
                stdout: String::new(),
                stderr: format!("cannot start {program}: {e}"),
            };
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let input = req.stdin.clone();
        // A command that does not read its input must not block us.
        std::thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
    }
    match child.wait_with_output() {
        Ok(out) => Response {
            id: req.id,
            code: out
                .status
                .code()
                .unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0)),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        Err(e) => Response {
            id: req.id,
            code: 127,
            stdout: String::new(),
            stderr: format!("waiting for {program}: {e}"),
        },
    }
}

fn main() {
    let path = loop {
        match port_path() {
            Some(p) if p.exists() => break p,
            _ => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    };
    let port = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let writer = Arc::new(Mutex::new(
        port.try_clone().expect("a second handle on the port"),
    ));
    eprintln!("wgmesh-vm-guest: serving {}", path.display());
    loop {
        let reader = BufReader::new(port.try_clone().expect("a reader on the port"));
        for line in reader.lines() {
            let Ok(line) = line else {
                break;
            };
            let Ok(req) = serde_json::from_str::<Request>(&line) else {
                continue;
            };
            let writer = Arc::clone(&writer);
            std::thread::spawn(move || {
                let resp = run(&req);
                let text = serde_json::to_string(&resp).expect("a response serializes");
                let mut w = writer.lock().unwrap_or_else(|e| e.into_inner());
                let _ = writeln!(w, "{text}");
                let _ = w.flush();
            });
        }
        // The host end is not connected (or went away): wait for it.
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
