//! Signpost's service proxy. The desired table is the oracle's
//! [`proxy_table`](signpost_model::spec::proxy_table) over the proxy's
//! caches; [`nft`] turns tables and table changes into nftables JSON
//! transactions (pure, unit-tested without root), [`tracer`] interprets
//! exactly those transactions to answer "where does this packet go", and
//! [`sink`] applies them to the kernel and reads them back. [`ipvs`] is the
//! IPVS data plane: the model's `plan` ops as generic-netlink messages.

pub mod conntrack;
pub mod controller;
pub mod ipvs;
pub mod metrics;
pub mod nft;
pub mod nftnl;
pub mod observed;
pub mod sink;
pub mod tracer;

/// The table Signpost owns (family `inet`).
pub const TABLE: &str = "signpost";
/// The packet mark that asks for masquerade.
pub const MASQ_MARK: u64 = 0x4000;
