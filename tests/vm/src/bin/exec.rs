//! `wgmesh-vm-exec SOCKET PROGRAM [ARGS...]`: runs a command in the test VM through the
//! harness's relay socket, with this process's standard input, and exits with the
//! command's status, its output on ours (test infrastructure). What `Exec` for the VM
//! runs, and what a person uses to look inside the VM while a test keeps it up.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;

use wgmesh_vm::protocol::{Request, Response};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(socket) = args.next() else {
        eprintln!("usage: wgmesh-vm-exec SOCKET PROGRAM [ARGS...]");
        std::process::exit(2);
    };
    let argv: Vec<String> = args.collect();
    let mut stdin = String::new();
    let _ = std::io::stdin().read_to_string(&mut stdin);
    let mut stream = UnixStream::connect(&socket).unwrap_or_else(|e| {
        eprintln!("wgmesh-vm-exec: cannot reach the VM at {socket}: {e}");
        std::process::exit(255);
    });
    let req = Request { id: 0, argv, stdin };
    let text = serde_json::to_string(&req).expect("a request serializes");
    if writeln!(stream, "{text}").is_err() {
        eprintln!("wgmesh-vm-exec: the VM relay closed the connection");
        std::process::exit(255);
    }
    let mut line = String::new();
    let _ = BufReader::new(stream).read_line(&mut line);
    let Ok(resp) = serde_json::from_str::<Response>(&line) else {
        eprintln!("wgmesh-vm-exec: no answer from the VM (it stopped?): {line:?}");
        std::process::exit(255);
    };
    let _ = std::io::stdout().write_all(resp.stdout.as_bytes());
    let _ = std::io::stderr().write_all(resp.stderr.as_bytes());
    std::process::exit(resp.code);
}
