//! The control channel between the test process and the VM's guest agent: one JSON
//! object per line each way, answers matched to requests by id (test infrastructure).

use serde::{Deserialize, Serialize};

/// Run `argv` in the VM and answer with its output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    pub argv: Vec<String>,
    /// Given to the command on its standard input.
    #[serde(default)]
    pub stdin: String,
}

/// How a command ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub id: u64,
    /// The exit code; 128 + the signal for a command killed by one; 127 when it could
    /// not be started (the reason is in `stderr`).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}
