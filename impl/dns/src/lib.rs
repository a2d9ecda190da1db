//! Signpost's cluster DNS. [`ZoneIndex`] is the zone as data, maintained
//! incrementally from watch events (never rebuilt per query or per event):
//! a change to one Service or one of its slices recomputes that Service's
//! names only. Its answers equal the oracle's
//! [`dns_answer`](signpost_model::spec::dns_answer) (property-tested).

mod index;

pub use index::{Change, ZoneIndex};
