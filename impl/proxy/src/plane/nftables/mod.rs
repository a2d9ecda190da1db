//! The nftables data plane: [`build`] turns tables and table changes into
//! nftables JSON transactions (pure, unit-tested without root), [`apply`]
//! hands them to `nft -j -f -` and lists the table, [`readback`] turns the
//! listing back into a table (PXY-8), and [`tracer`] interprets exactly
//! those transactions to answer "where does this packet go".

pub mod apply;
pub mod build;
pub mod readback;
pub mod tracer;

/// The table Signpost owns (family `inet`).
pub const TABLE: &str = "signpost";
/// The packet mark that asks for masquerade.
pub const MASQ_MARK: u64 = 0x4000;
