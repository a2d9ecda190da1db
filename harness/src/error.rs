//! The harness's error type.

use std::path::PathBuf;

/// What went wrong while setting up or driving a test cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A binary the rig needs is not where it should be.
    #[error("binary {name} not found in {dir} (run ci/upstream, or set SIGNPOST_UPSTREAM_BIN)")]
    MissingBinary {
        /// The binary's name.
        name: String,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// A program from a Debian package the rig needs is missing.
    #[error("{what} not found at {path} (ci/bootstrap installs it)")]
    MissingPackage {
        /// The program and its package.
        what: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A process exited while it should be running.
    #[error("{name} exited ({status}) while starting; see its log {log}:\n{tail}")]
    ProcessExited {
        /// The process's name.
        name: String,
        /// How it exited.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of the log.
        tail: String,
    },
    /// Something did not become ready in time.
    #[error("{what} not ready after {secs}s; logs in {logs}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// The deadline.
        secs: u64,
        /// The log directory.
        logs: PathBuf,
    },
    /// A command failed.
    #[error("command `{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its standard error.
        stderr: String,
    },
    /// An I/O error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("certificates: {0}")]
    Pki(#[from] rcgen::Error),
    /// The Kubernetes client failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The kubeconfig could not be loaded.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    /// A manifest of `deploy/` did not parse or was refused.
    #[error("manifest: {0}")]
    Manifest(String),
    /// A DNS exchange failed or its reply did not parse.
    #[error("dns: {0}")]
    Dns(String),
    /// A kernel call failed.
    #[error("{context}: {source}")]
    Sys {
        /// What was being done.
        context: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },
}

impl Error {
    /// True when a binary is missing.
    pub fn is_missing_binary(&self) -> bool {
        matches!(self, Error::MissingBinary { .. })
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

/// Result with the harness error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
