//! Signpost's core: the rules of Kubernetes Service registration and discovery
//! as plain data and plain functions, with no I/O.
//!
//! - [`cluster`]: domain values (Service, Pod, EndpointSlice, Node, DNS
//!   questions and answers, proxy tables, resolv.conf), converted from
//!   k8s-openapi objects with `TryFrom` and typed errors.
//! - [`spec`]: the oracle, one slow and obviously-correct function per spec
//!   section, each citing the rule IDs of `spec/` it implements.
//! - [`reconcile`]: the pure decision functions the production components
//!   ship (watch cache, EndpointSlice write plan, proxy `plan`).
//! - [`mutant`]: the mutation seam, named faults the components can be
//!   started with so the conformance harness can show it catches them;
//! - [`protocol`]: a stateright model of the whole protocol whose actors call
//!   the same reconcile functions, so the checked code is the shipped code.

pub mod cluster;
pub mod mutant;
pub mod protocol;
pub mod reconcile;
pub mod spec;
