//! Applies transactions in the current network namespace, as one netlink
//! batch ([`Writer::Netlink`], the default) or as a script through
//! `nft -f -` ([`Writer::Nft`]), and reads the table back with `nft -j list`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;

use super::TABLE;
use super::ruleset::Tx;
use super::wire;

/// How transactions reach the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Writer {
    /// One nf_tables netlink batch per transaction.
    #[default]
    Netlink,
    /// An nft script piped to `nft -f -` (the `nft` first on PATH).
    Nft,
}

static THROUGH_NFT: AtomicBool = AtomicBool::new(false);

/// Chooses the writer for this process (`--nft-writer`).
pub fn use_writer(w: Writer) {
    THROUGH_NFT.store(w == Writer::Nft, Ordering::Relaxed);
}

/// The writer in use.
pub fn writer() -> Writer {
    if THROUGH_NFT.load(Ordering::Relaxed) {
        Writer::Nft
    } else {
        Writer::Netlink
    }
}

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
    /// The netlink socket failed or the kernel did not answer.
    #[error("{0}")]
    Netlink(String),
}

/// Result with the sink's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs one transaction: all of it applies, or none.
pub fn apply(tx: &Tx) -> Result<()> {
    match writer() {
        Writer::Netlink => wire::send(tx).map_err(|f| match f {
            wire::Failure::Refused(why) => Error::Rejected(why),
            wire::Failure::Io(why) => Error::Netlink(why),
        }),
        Writer::Nft => apply_script(&super::script::script(tx)),
    }
}

/// Runs one transaction written in nft's language through `nft -f -`.
pub fn apply_script(tx: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(Error::Spawn)?;
    if let Some(stdin) = child.stdin.take() {
        let mut w = stdin;
        w.write_all(tx.as_bytes())
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
