//! placeholder
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
pub fn main(_keep: bool, _stop: &AtomicBool) -> ExitCode {
    ExitCode::FAILURE
}
