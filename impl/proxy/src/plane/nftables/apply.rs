//! Applies nftables JSON transactions with `nft -j -f -` in the current
//! network namespace, and reads the table back.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use super::TABLE;

/// A kernel refusal or a missing `nft`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `nft` could not be run.
    #[error("running nft: {0}")]
    Spawn(#[source] std::io::Error),
    /// `nft` rejected the transaction (nothing of it was applied).
    #[error("nft rejected the transaction: {0}")]
    Rejected(String),
    /// `nft` printed something that is not JSON.
    #[error("nft output: {0}")]
    Output(#[source] serde_json::Error),
}

/// Result with the sink's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs one transaction: all of it applies, or none.
pub fn apply(tx: &Value) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-j", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(Error::Spawn)?;
    if let Some(stdin) = child.stdin.take() {
        // Streamed: a full sync's transaction is megabytes of JSON.
        let mut w = std::io::BufWriter::with_capacity(1 << 16, stdin);
        serde_json::to_writer(&mut w, tx)
            .map_err(std::io::Error::from)
            .and_then(|()| w.flush())
            .map_err(Error::Spawn)?;
    }
    let out = child.wait_with_output().map_err(Error::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Rejected(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}

/// The table as `nft -j list table inet signpost` prints it; `None` if absent.
pub fn list() -> Result<Option<Value>> {
    let out = Command::new("nft")
        .args(["-j", "list", "table", "inet", TABLE])
        .output()
        .map_err(Error::Spawn)?;
    if !out.status.success() {
        return Ok(None);
    }
    serde_json::from_slice(&out.stdout)
        .map(Some)
        .map_err(Error::Output)
}
