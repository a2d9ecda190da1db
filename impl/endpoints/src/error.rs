//! Errors of the EndpointSlice controller.

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A write lost an optimistic-concurrency race; the Service is requeued.
    #[error("conflict writing EndpointSlice {0}")]
    Conflict(String),
    /// Our view of our own writes is behind; the Service is requeued.
    #[error("cache has not yet caught up with our writes for {0}")]
    StaleCache(String),
    /// This replica stopped being the leader.
    #[error("lost the leader lease {0}")]
    LostLease(String),
    /// A write was about to happen after this replica's renew deadline
    /// (it was frozen, or its renewals are failing): not written.
    #[error("not writing: past the renew deadline of the leader lease")]
    Fenced,
    /// An object could not be built.
    #[error("building {what}: {source}")]
    Build {
        /// What was built.
        what: String,
        /// Why it failed.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// True for a write conflict.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict(_))
    }
}

/// Result with the controller's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
