//! Signpost's cluster DNS. [`ZoneIndex`] is the zone as data, maintained
//! incrementally from watch events (never rebuilt per query or per event):
//! a change to one Service or one of its slices recomputes that Service's
//! names only. It keeps what DNS reads of each Service and its slices, not
//! the names: a name is answered with the oracle's rules over its Service
//! alone, and a UDP answer is then kept in wire form ([`udp`]) until the
//! zone next changes. Its answers equal the oracle's
//! [`dns_answer`](signpost_model::spec::dns_answer) (property-tested).

pub mod cache;
pub mod corefile;
pub mod forward;
pub mod guard;
mod index;
pub mod memory;
pub mod metrics;
pub mod server;
pub mod udp;
pub mod watch;

pub use index::{Change, ZoneIndex};
