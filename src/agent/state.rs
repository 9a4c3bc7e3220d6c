//! The last-known-good mesh, kept in `<state-dir>/mesh.json` so a restarted agent can
//! bring the data plane back before the API server answers. Adapter.

use std::path::{Path, PathBuf};

use crate::fsutil::write_atomic;
use crate::mesh::MeshPlan;

pub const STATE_FILE: &str = "mesh.json";

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATE_FILE)
}

/// The saved plan, if there is a readable one (a damaged file is ignored with a log
/// line: the API server will provide the truth).
pub fn load(state_dir: &Path) -> Option<MeshPlan> {
    let p = path(state_dir);
    let text = std::fs::read(&p).ok()?;
    match serde_json::from_slice(&text) {
        Ok(plan) => Some(plan),
        Err(e) => {
            tracing::warn!(path = %p.display(), error = %e, "ignoring unreadable saved mesh");
            None
        }
    }
}

pub fn save(state_dir: &Path, plan: &MeshPlan) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(plan).map_err(std::io::Error::other)?;
    write_atomic(&path(state_dir), &text, 0o600)
}
