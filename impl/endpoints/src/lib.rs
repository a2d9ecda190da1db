//! Signpost's EndpointSlice controller (the seed's "an EndpointSlice is
//! created to hold a list of Pods the Service will load balance traffic to").
//!
//! For every Service with a selector it keeps the slices it manages equal to
//! the oracle's [`endpoints_for`](signpost_model::spec::endpoints_for), using
//! the model's [`plan_slices`](signpost_model::reconcile::plan_slices) for the
//! writes: the checked code is the shipped code. I/O lives in [`controller`]
//! (watches, writes) and [`lease`] (leader election); [`convert`] and the
//! lease's decision are pure.

pub mod controller;
pub mod convert;
mod error;
pub mod lease;
pub mod metrics;
pub mod route;

pub use controller::{Config, run};
pub use error::{Error, Result};

/// `endpointslice.kubernetes.io/managed-by` on the slices this controller owns.
pub const MANAGED_BY: &str = "endpoints.signpost.dev";
/// The managed-by value of kube-controller-manager's EndpointSlice controller.
pub const KCM_MANAGED_BY: &str = "endpointslice-controller.k8s.io";
