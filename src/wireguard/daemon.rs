//! The `wgmesh-wg` process: wireguard-go's command-line contract around a [`Device`].
//! Adapter.
//!
//! `wgmesh-wg [-f|--foreground] IFNAME` creates the interface, serves the UAPI, and unless
//! in the foreground (or `WG_PROCESS_FOREGROUND=1`) daemonizes: the parent exits 0 only
//! once the interface exists and the UAPI socket accepts connections (wg-quick runs
//! `wg setconf` right after), non-zero with the error otherwise. It exits, removing its
//! socket, on SIGTERM/SIGINT, when the interface is deleted, or when the socket is.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use nix::unistd::{ForkResult, fork, pipe2, setsid};

use super::dataplane::CloseReason;
use super::device::{Device, DeviceConfig, UAPI_DIR};

/// What the command line asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub interface: String,
    pub foreground: bool,
}

/// Runs the process contract and returns the exit code.
pub fn run(opts: &Options) -> i32 {
    if opts.foreground || std::env::var("WG_PROCESS_FOREGROUND").is_ok_and(|v| v == "1") {
        return serve(&opts.interface, None);
    }
    let (read_end, write_end) = match pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("wgmesh-wg: cannot create a pipe: {e}");
            return 1;
        }
    };
    // SAFETY: no thread has been started yet (the caller only parsed arguments and set
    // up logging), so the child is a complete copy of a single-threaded process.
    match unsafe { fork() } {
        Err(e) => {
            eprintln!("wgmesh-wg: cannot fork: {e}");
            1
        }
        Ok(ForkResult::Parent { .. }) => {
            drop(write_end);
            wait_for_daemon(read_end)
        }
        Ok(ForkResult::Child) => {
            drop(read_end);
            detach();
            serve(&opts.interface, Some(write_end))
        }
    }
}

/// The parent side: the daemon writes "ok" when ready, or the error.
fn wait_for_daemon(read_end: OwnedFd) -> i32 {
    let mut status = String::new();
    let _ = std::fs::File::from(read_end).read_to_string(&mut status);
    match status.strip_prefix("ok") {
        Some(_) => 0,
        None if status.is_empty() => {
            eprintln!("wgmesh-wg: the daemon exited before the interface was ready");
            1
        }
        None => {
            eprintln!("wgmesh-wg: {}", status.trim_end());
            1
        }
    }
}

/// A new session, `/` as working directory, standard streams on /dev/null (stderr kept
/// when LOG_LEVEL asks for logs, as wireguard-go does).
fn detach() {
    let _ = setsid();
    let _ = std::env::set_current_dir("/");
    let keep_stderr = std::env::var("LOG_LEVEL").is_ok_and(|l| l != "silent");
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let targets: &[i32] = if keep_stderr { &[0, 1] } else { &[0, 1, 2] };
        for fd in targets {
            // SAFETY: dup2 onto the standard descriptors of our own process.
            unsafe {
                libc::dup2(null.as_raw_fd(), *fd);
            }
        }
    }
}

/// Creates the device and serves until it closes. `ready` gets "ok" or the error.
fn serve(interface: &str, ready: Option<OwnedFd>) -> i32 {
    // Block the stop signals before any thread exists, so every thread inherits the mask
    // and only the waiter below receives them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    if let Err(e) = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&signals), None) {
        return fail(ready, &format!("cannot block signals: {e}"));
    }
    let device = match start(interface) {
        Ok(d) => d,
        Err(msg) => return fail(ready, &msg),
    };
    if let Some(fd) = ready {
        let _ = std::fs::File::from(fd).write_all(b"ok\n");
    }
    let closer = device.closer();
    let waiter = std::thread::Builder::new()
        .name("wg-signals".into())
        .spawn(move || {
            if let Ok(sig) = signals.wait() {
                tracing::info!(signal = %sig, "stopping");
                closer.close();
            }
        });
    if let Err(e) = waiter {
        tracing::warn!(error = %e, "no signal thread: stop by deleting the interface");
    }
    let reason = device.wait();
    if reason != CloseReason::Requested {
        tracing::info!(?reason, "stopping");
    }
    drop(device);
    0
}

fn start(interface: &str) -> Result<Device, String> {
    let device = Device::start(DeviceConfig::new(interface)).map_err(|e| e.to_string())?;
    device
        .serve_uapi(Path::new(UAPI_DIR), true)
        .map_err(|e| e.to_string())?;
    Ok(device)
}

fn fail(ready: Option<OwnedFd>, msg: &str) -> i32 {
    tracing::error!("{msg}");
    match ready {
        Some(fd) => {
            let _ = std::fs::File::from(fd).write_all(msg.as_bytes());
        }
        None => eprintln!("wgmesh-wg: {msg}"),
    }
    1
}

/// Logs to stderr: RUST_LOG if set, else wireguard-go's LOG_LEVEL (verbose/debug, error,
/// silent), else info.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if !f.is_empty() => EnvFilter::new(f),
        _ => EnvFilter::new(match std::env::var("LOG_LEVEL").as_deref() {
            Ok("verbose") | Ok("debug") => "debug",
            Ok("error") => "error",
            Ok("silent") => "off",
            _ => "info",
        }),
    };
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .try_init();
}
