//! The nftables data plane: [`build`] turns tables and table changes into
//! transactions of [`ruleset`] commands (pure, unit-tested without root),
//! [`apply`] writes them to the kernel as one netlink batch ([`wire`]) or
//! as a script through `nft -f -` ([`script`]) and lists the table, [`readback`] turns the
//! listing back into a table (PXY-8), and [`tracer`] interprets exactly
//! those transactions to answer "where does this packet go".

pub mod apply;
pub mod build;
pub mod census;
pub mod readback;
pub mod ruleset;
pub mod script;
pub mod tracer;
pub mod wire;

/// The table Signpost owns (family `inet`).
pub const TABLE: &str = "signpost";
/// The packet mark that asks for masquerade.
pub const MASQ_MARK: u64 = 0x4000;
