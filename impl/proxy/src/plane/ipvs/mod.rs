//! The IPVS data plane. The desired table is the oracle's; `plan(desired,
//! observed)` (the model's own reconcile function) turns the difference into
//! ops, and each op is one generic-netlink message: an endpoint change costs
//! O(1) messages. Virtual addresses are bound to the dummy `kube-ipvs0`
//! (rtnetlink), so the node accepts them and a virtual service is Signpost's
//! when its address is bound there (or is a node address, for NodePorts).
//! The observed table is read back from the kernel, so a restart rewrites
//! nothing that is right and removes what is left over.
//!
//! nftables (one `inet signpost-ipvs` table, changed element by element)
//! carries what IPVS does not: a reject for virtual services without
//! endpoints (PXY-3; IPVS alone would drop silently), a reject for whatever
//! reaches a ClusterIP that IPVS did not take (an undeclared port would
//! otherwise reach the node's own sockets, since the address is local), and
//! masquerade for hairpin connections (a Pod reaching itself through its
//! Service).
//!
//! - [`sink`]: [`IpvsSink`], the kernel side: IPVS virtual services and
//!   destinations (one generic-netlink message per op), read back as a table;
//! - [`link`]: `kube-ipvs0` and the ClusterIPs bound to it (rtnetlink);
//! - [`drain`]: graceful termination of removed TCP/SCTP destinations;
//! - [`sets`]: the nft table's sets, worked out per op and sent as one
//!   netlink batch ([`netlink`]) or an `nft` script.
//!
//! Dependencies run one way: `sink` uses `link`, `drain` and `sets`; `sets`
//! uses `netlink`; none of them uses `sink`.

pub mod drain;
mod error;
pub mod link;
pub mod netlink;
pub mod sets;
pub mod sink;

pub use error::Error;
pub use sets::{NftElements, nft_base, nft_delta};
pub use sink::{Applied, IpvsSink, count_ops, service, service_key, sysctls};

/// The dummy interface holding virtual addresses.
pub const DUMMY: &str = "kube-ipvs0";
/// The nftables table of the IPVS mode (family `inet`).
pub const NFT_TABLE: &str = "signpost-ipvs";
/// The IPVS scheduler.
pub const SCHEDULER: &str = "rr";
/// Longest a removed TCP/SCTP destination drains at weight 0.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(900);
