//! Signpost's service proxy. The desired table is the oracle's
//! [`proxy_table`](signpost_model::spec::proxy_table) over the proxy's
//! caches; [`controller`] watches the API and drives one of the data planes
//! in [`plane`] (nftables or IPVS); [`conntrack`] forgets UDP flows to
//! removed backends in both (PXY-11); [`metrics`] counts what happened.

pub mod addresses;
pub mod conntrack;
pub mod controller;
pub mod health;
pub mod isolate;
pub mod metrics;
pub mod plane;

pub use plane::{ipvs, nftables};
