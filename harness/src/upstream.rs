//! Where the pinned upstream binaries are: `$SIGNPOST_UPSTREAM_BIN`, or the
//! directory `ci/upstream` recorded in `$SIGNPOST_CACHE/upstream/current`
//! (default cache `~/.cache/signpost`); the e2e suite and what it needs
//! beside the cluster (kube-scheduler, kubectl, agnhost) in
//! `$SIGNPOST_UPSTREAM_E2E_BIN` or where `ci/upstream-e2e` recorded them.

use std::path::PathBuf;

use crate::{Error, Result};

/// The directory holding the upstream binaries.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SIGNPOST_UPSTREAM_BIN") {
        return PathBuf::from(dir);
    }
    recorded("upstream")
}

/// The directory `ci/upstream-e2e` built into.
pub fn e2e_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SIGNPOST_UPSTREAM_E2E_BIN") {
        return PathBuf::from(dir);
    }
    recorded("upstream-e2e")
}

/// The path of one binary `ci/upstream-e2e` builds.
pub fn e2e_binary(name: &str) -> Result<PathBuf> {
    binary_in(&e2e_bin_dir(), name)
}

/// The bin directory a build script recorded in `$SIGNPOST_CACHE/<what>/current`.
fn recorded(what: &str) -> PathBuf {
    let cache = std::env::var_os("SIGNPOST_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/signpost")))
        .unwrap_or_else(|| PathBuf::from("/root/.cache/signpost"));
    match std::fs::read_to_string(cache.join(what).join("current")) {
        Ok(s) => PathBuf::from(s.trim()),
        Err(_) => cache.join(what).join("not-built"),
    }
}

/// The path of one upstream binary, or an error naming it and where it was looked for.
pub fn binary(name: &str) -> Result<PathBuf> {
    binary_in(&bin_dir(), name)
}

/// The path of `name` in `dir`, or an error naming both.
pub fn binary_in(dir: &std::path::Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingBinary {
            name: name.to_owned(),
            dir: dir.to_owned(),
        })
    }
}

/// Whether this machine can run the rig (root for network namespaces, the
/// upstream binaries); `Err` says why not. With `CI=true` a missing
/// capability panics: in CI it is a failure, never a skip.
pub fn rig_available() -> Result<(), String> {
    let root = nix::unistd::geteuid().is_root();
    let why = match (root, binary("kube-apiserver")) {
        (true, Ok(_)) => return Ok(()),
        (false, _) => "needs root for network namespaces".to_owned(),
        (true, Err(e)) => e.to_string(),
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but the cluster rig cannot run: {why}");
    }
    Err(why)
}
