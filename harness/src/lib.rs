//! Signpost's test rig. Everything that crosses a network runs inside network
//! namespaces this crate creates and always removes:
//!
//! - [`upstream`]: where the pinned upstream binaries built by `ci/upstream` live;
//! - [`netns`] and [`process`]: namespace and process guards that clean up in `Drop`;
//! - [`pki`]: certificates, service-account keys and an admin kubeconfig;
//! - [`deploy`]: `deploy/`'s RBAC applied and a ServiceAccount token per component;
//! - [`cluster`]: [`LocalCluster`], etcd + kube-apiserver (+ kube-controller-manager)
//!   in a node namespace with no route out, as a typestate fixture;
//! - [`fabric`]: Pods as namespaces on a bridge, each running our echo server;
//! - [`dns`]: `signpost dns` and CoreDNS launchers and a DNS client for comparing answers;
//! - [`vm`]: the kernel VM rig (Debian cloud kernel under qemu TCG) for IPVS.

pub mod cluster;
pub mod deploy;
pub mod dns;
mod error;
pub mod fabric;
#[cfg(feature = "kind")]
pub mod kind;
pub mod netns;
pub mod pki;
pub mod process;
pub mod upstream;
pub mod vm;

pub use cluster::{ApiHandle, ControlProcess, ImageSpec, LocalCluster, Running, Stopped, Uplink};
pub use error::{Error, Result};
pub use fabric::{PodBuilder, PodHandle};

/// In a test: returns early, saying why, when this machine cannot run the
/// rig; with `CI=true` panics instead (see [`upstream::rig_available`]).
#[macro_export]
macro_rules! require_rig {
    () => {
        if let Err(why) = $crate::upstream::rig_available() {
            eprintln!("SKIPPED (not in CI): {why}");
            return;
        }
    };
}
