//! Linux IPVS over generic netlink, on netlink-packet-core 0.9,
//! netlink-packet-generic 0.5 and genetlink 0.3.
//!
//! - [`message`]: the `IPVS` family's commands and attributes, emitted and
//!   parsed byte for byte as the kernel ABI lays them out: addresses are
//!   always 16 bytes, ports network order, `FLAGS` is 8 bytes
//!   `{flags, mask}`, an IPv4 persistence netmask is a network-order mask
//!   and an IPv6 one a host-order prefix length;
//! - [`types`]: [`Service`] and [`Destination`] values and their attributes
//!   (new/set carry every field the kernel requires);
//! - [`client`]: [`Ipvs`], the async kernel client (dump, add, edit, delete,
//!   flush), with kernel errors as typed [`Error`]s.
//!
//! ```no_run
//! # async fn f() -> Result<(), ipvs_genl::Error> {
//! use ipvs_genl::{Destination, Ipvs, Protocol, Service, ServiceKey};
//! let mut ipvs = Ipvs::connect().await?;
//! let key = ServiceKey::Tuple { addr: "10.96.0.10".parse().unwrap(), protocol: Protocol::Tcp, port: 80 };
//! ipvs.add_service(&Service::new(key)).await?;
//! ipvs.add_destination(&key, &Destination::new("10.244.0.5".parse().unwrap(), 8080)).await?;
//! # Ok(()) }
//! ```

pub mod client;
pub mod message;
pub mod types;

pub use client::{Error, Ipvs, build};
pub use types::{Destination, Family, Forward, Protocol, Service, ServiceKey, flags};
