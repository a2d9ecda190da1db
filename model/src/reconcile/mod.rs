//! Pure decision functions shipped by the production components and called
//! by the model's actors: the watch cache, the EndpointSlice write plan and
//! the proxy plan. Effects are returned as data; executors apply them.

mod cache;
mod proxy;
mod slices;

pub use cache::{Keyed, WatchCache, WatchEvent};
pub use proxy::{ProxyOp, apply_ops, plan, stale_udp_flows};
pub use slices::{SliceWrite, plan_slices, plan_slices_with};
