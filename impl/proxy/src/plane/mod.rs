//! The two data planes a [`ProxyTable`](signpost_model::cluster::ProxyTable)
//! is programmed into: [`nftables`] (one table rewritten per virtual
//! service in one transaction, read back for adoption) and [`ipvs`]
//! (the model's `plan` ops as IPVS netlink messages, with a small nft table
//! for what IPVS does not do). Neither knows about the other or about the
//! control loop in [`crate::controller`].

pub mod ipvs;
pub mod nftables;
