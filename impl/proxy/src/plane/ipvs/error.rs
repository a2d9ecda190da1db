//! Errors of the IPVS data plane.

/// Errors of the IPVS data plane.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// IPVS refused or failed.
    #[error("ipvs: {0}")]
    Ipvs(#[from] ipvs_genl::Error),
    /// rtnetlink (the dummy interface and its addresses) failed.
    #[error("rtnetlink: {0}")]
    Link(String),
    /// nft failed.
    #[error("nft: {0}")]
    Nft(String),
    /// A sysctl could not be written.
    #[error("sysctl {key}: {source}")]
    Sysctl {
        /// The key.
        key: String,
        /// The error.
        source: std::io::Error,
    },
}
