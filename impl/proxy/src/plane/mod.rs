//! The two data planes a [`ProxyTable`](signpost_model::cluster::ProxyTable)
//! is programmed into: [`nftables`] (one table rewritten per virtual
//! service in one transaction, read back for adoption) and [`ipvs`]
//! (the model's `plan` ops as IPVS netlink messages, with a small nft table
//! for what IPVS does not do). Neither knows about the other or about the
//! control loop in [`crate::controller`].

pub mod ipvs;
pub mod nftables;

use std::net::IpAddr;

use signpost_model::cluster::{Protocol, ProxyTable, VirtualKey};

/// Whether any virtual service of `table` has address `ip` (keys sort by
/// address first, so this is one range lookup: O(log n)).
pub(crate) fn has_address(table: &ProxyTable, ip: IpAddr) -> bool {
    let lo = VirtualKey {
        ip,
        protocol: Protocol::Tcp,
        port: 0,
    };
    table.range(lo..).next().is_some_and(|(k, _)| k.ip == ip)
}
