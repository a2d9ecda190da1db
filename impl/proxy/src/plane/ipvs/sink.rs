//! The kernel side of the IPVS plane: [`IpvsSink`] applies the model's
//! `plan` ops as one generic-netlink message each, reads the virtual
//! services back as a table, binds ClusterIPs to `kube-ipvs0` ([`super::link`]),
//! drains removed destinations ([`super::drain`]) and keeps the nft sets
//! ([`super::sets`]) in step.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ipvs_genl::{Destination, Ipvs, Protocol as IpvsProtocol, Service, ServiceKey};
use signpost_model::cluster::{Protocol, ProxyTable, VirtualKey, VirtualService};
use signpost_model::reconcile::{ProxyOp, plan};

use super::drain::{self, Draining};
use super::link::Link;
use super::sets::{NftState, nft_script};
use super::{DRAIN_TIMEOUT, Error, NFT_TABLE, SCHEDULER};
use crate::addresses::Masquerade;

fn protocol(p: Protocol) -> IpvsProtocol {
    match p {
        Protocol::Tcp => IpvsProtocol::Tcp,
        Protocol::Udp => IpvsProtocol::Udp,
        Protocol::Sctp => IpvsProtocol::Sctp,
    }
}

fn model_protocol(p: IpvsProtocol) -> Protocol {
    match p {
        IpvsProtocol::Tcp => Protocol::Tcp,
        IpvsProtocol::Udp => Protocol::Udp,
        IpvsProtocol::Sctp => Protocol::Sctp,
    }
}

/// The IPVS service key of a virtual address.
pub fn service_key(k: &VirtualKey) -> ServiceKey {
    ServiceKey::Tuple {
        addr: k.ip,
        protocol: protocol(k.protocol),
        port: k.port,
    }
}

/// The IPVS service for a virtual address (PXY-5: ClientIP affinity is
/// persistence per client address with the Service's timeout).
pub fn service(k: &VirtualKey, affinity: Option<u32>) -> Service {
    let mut s = Service::new(service_key(k));
    s.scheduler = SCHEDULER.into();
    if let Some(t) = affinity {
        s = s.persistent(t);
    }
    s
}

/// Writes the sysctls IPVS needs: forwarding, conntrack for IPVS
/// connections (masquerade), no connection reuse of stale entries, and
/// expiry of connections whose destination is gone.
pub fn sysctls() -> Result<(), Error> {
    for (key, value) in [
        ("net/ipv4/ip_forward", "1"),
        ("net/ipv6/conf/all/forwarding", "1"),
        ("net/ipv4/vs/conntrack", "1"),
        ("net/ipv4/vs/conn_reuse_mode", "0"),
        ("net/ipv4/vs/expire_nodest_conn", "1"),
        ("net/ipv4/vs/expire_quiescent_template", "1"),
    ] {
        std::fs::write(format!("/proc/sys/{key}"), value).map_err(|source| Error::Sysctl {
            key: key.replace('/', "."),
            source,
        })?;
    }
    Ok(())
}

/// What one apply did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// IPVS netlink messages sent.
    pub ipvs_messages: u64,
    /// rtnetlink messages sent (address binds and unbinds).
    pub link_messages: u64,
    /// Ops by kind: add service, edit service, delete service, add backend, remove backend.
    pub ops: [u64; 5],
    /// Time spent on IPVS and address messages.
    pub kernel_time: std::time::Duration,
    /// Time spent on the nft transaction.
    pub nft_time: std::time::Duration,
}

/// The kernel side: IPVS, the dummy interface, the nft table.
pub struct IpvsSink {
    ipvs: Ipvs,
    link: Link,
    node_ips: Vec<IpAddr>,
    masq: Masquerade,
    nft: NftState,
    /// Removed TCP/SCTP destinations kept at weight 0 while their
    /// connections finish.
    draining: Draining,
    /// How long a destination may drain before it is deleted anyway.
    pub drain_timeout: std::time::Duration,
}

impl std::fmt::Debug for IpvsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpvsSink")
            .field("link", &self.link)
            .field("draining", &self.draining.len())
            .finish()
    }
}

impl IpvsSink {
    /// Connects to IPVS and rtnetlink, creates `kube-ipvs0` if missing and
    /// reads which addresses it holds. `node_ips` are the node's own
    /// addresses (NodePort virtual services live there).
    pub async fn connect(node_ips: Vec<IpAddr>, masq: Masquerade) -> Result<Self, Error> {
        let ipvs = Ipvs::connect().await?;
        let link = Link::open().await?;
        let nft = NftState::new(node_ips.clone(), masq.clone());
        Ok(IpvsSink {
            ipvs,
            link,
            node_ips,
            masq,
            nft,
            draining: Draining::default(),
            drain_timeout: DRAIN_TIMEOUT,
        })
    }

    /// Takes the node's addresses as they are now (they change with the
    /// Node object: a DHCP renewal, an added interface). NodePort virtual
    /// services live on them; they are never bound to `kube-ipvs0` nor put
    /// in the ClusterIP set, whose undeclared ports are rejected. When they
    /// changed, the nft sets are rebuilt at the next apply. Returns whether
    /// they changed.
    pub fn set_node_ips(&mut self, node_ips: &[IpAddr]) -> bool {
        if self.node_ips == node_ips {
            return false;
        }
        self.node_ips = node_ips.to_vec();
        self.nft = NftState::new(self.node_ips.clone(), self.masq.clone());
        true
    }

    /// IPVS messages sent so far.
    pub fn ipvs_messages(&self) -> u64 {
        self.ipvs.messages_sent()
    }

    fn ours(&self, ip: &IpAddr) -> bool {
        self.link.bound().contains(ip) || self.node_ips.contains(ip)
    }

    /// The table the kernel holds for Signpost's virtual services: backends
    /// are destinations with weight > 0; persistence is affinity.
    pub async fn observed(&mut self) -> Result<ProxyTable, Error> {
        let mut table = ProxyTable::new();
        for s in self.ipvs.services().await? {
            let ServiceKey::Tuple {
                addr,
                protocol,
                port,
            } = s.key
            else {
                continue;
            };
            if !self.ours(&addr) {
                continue;
            }
            let key = VirtualKey {
                ip: addr,
                protocol: model_protocol(protocol),
                port,
            };
            let dests = self.ipvs.destinations(&s.key).await?;
            for d in dests.iter().filter(|d| d.weight == 0) {
                self.draining.adopt(key, SocketAddr::new(d.addr, d.port));
            }
            let backends = dests
                .into_iter()
                .filter(|d| d.weight > 0)
                .map(|d| SocketAddr::new(d.addr, d.port))
                .collect();
            let affinity = (s.flags & ipvs_genl::flags::PERSISTENT != 0).then_some(s.timeout);
            table.insert(
                key,
                VirtualService {
                    backends,
                    affinity_timeout: affinity,
                },
            );
        }
        Ok(table)
    }

    /// Applies ops (one IPVS message each; an address bind or unbind when a
    /// virtual address appears or goes), then the nft elements for `want`.
    /// After a failure the nft sets are rebuilt at the next apply, since the
    /// ops that follow may no longer name what this one changed.
    pub async fn apply(&mut self, ops: &[ProxyOp], want: &ProxyTable) -> Result<Applied, Error> {
        let result = self.apply_ops(ops, want).await;
        if result.is_err() {
            self.nft.forget();
        }
        result
    }

    async fn apply_ops(&mut self, ops: &[ProxyOp], want: &ProxyTable) -> Result<Applied, Error> {
        let before = self.ipvs.messages_sent();
        let started = std::time::Instant::now();
        let mut applied = Applied::default();
        for op in ops {
            match op {
                ProxyOp::AddService {
                    key,
                    affinity_timeout,
                } => {
                    if !self.node_ips.contains(&key.ip) && self.link.bind(key.ip).await? {
                        applied.link_messages += 1;
                    }
                    match self
                        .ipvs
                        .add_service(&service(key, *affinity_timeout))
                        .await
                    {
                        Ok(()) => {}
                        Err(ipvs_genl::Error::Exists(_)) => {
                            self.ipvs
                                .update_service(&service(key, *affinity_timeout))
                                .await?
                        }
                        Err(e) => return Err(e.into()),
                    }
                    applied.ops[0] += 1;
                }
                ProxyOp::EditService {
                    key,
                    affinity_timeout,
                } => {
                    self.ipvs
                        .update_service(&service(key, *affinity_timeout))
                        .await?;
                    applied.ops[1] += 1;
                }
                ProxyOp::DeleteService { key } => {
                    match self.ipvs.delete_service(&service_key(key)).await {
                        Ok(()) | Err(ipvs_genl::Error::NoSuchService(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                    applied.ops[2] += 1;
                }
                ProxyOp::AddBackend { key, backend } => {
                    let d = Destination::new(backend.ip(), backend.port());
                    match self.ipvs.add_destination(&service_key(key), &d).await {
                        Ok(()) => {}
                        // A draining destination (weight 0) comes back.
                        Err(ipvs_genl::Error::Exists(_)) => {
                            self.ipvs.update_destination(&service_key(key), &d).await?
                        }
                        Err(e) => return Err(e.into()),
                    }
                    applied.ops[3] += 1;
                }
                ProxyOp::RemoveBackend { key, backend } => {
                    if key.protocol == Protocol::Udp {
                        // UDP has no connection end to wait for: delete now.
                        match self
                            .ipvs
                            .delete_destination(&service_key(key), backend.ip(), backend.port())
                            .await
                        {
                            Ok(()) | Err(ipvs_genl::Error::NotFound(_)) => {}
                            Err(e) => return Err(e.into()),
                        }
                    } else {
                        // Graceful termination: no new connections, existing ones finish.
                        let mut d = Destination::new(backend.ip(), backend.port());
                        d.weight = 0;
                        match self.ipvs.update_destination(&service_key(key), &d).await {
                            Ok(()) => self.draining.start(*key, *backend),
                            Err(ipvs_genl::Error::NotFound(_)) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                    applied.ops[4] += 1;
                }
            }
        }
        // A destination that came back is no longer draining.
        self.draining.settle(want);
        // Addresses no virtual service uses any more are unbound.
        let used: BTreeSet<IpAddr> = want.keys().map(|k| k.ip).collect();
        let stale: Vec<IpAddr> = self.link.bound().difference(&used).copied().collect();
        for ip in stale {
            if self.link.unbind(ip).await? {
                applied.link_messages += 1;
            }
        }
        applied.kernel_time = started.elapsed();
        let nft_started = std::time::Instant::now();
        // A blocking netlink socket, or `nft` for large changes.
        signpost_runtime::blocking(|| self.nft.sync(ops, want))?;
        applied.nft_time = nft_started.elapsed();
        applied.ipvs_messages = self.ipvs.messages_sent() - before;
        Ok(applied)
    }

    /// Deletes draining destinations whose connections have ended or whose
    /// time is up; weight-0 destinations found after a restart start
    /// draining now. Returns how many were deleted.
    pub async fn finish_draining(&mut self) -> Result<usize, Error> {
        let mut deleted = 0;
        let entries = self.draining.entries();
        let mut by_service: BTreeMap<VirtualKey, Vec<Destination>> = BTreeMap::new();
        for ((k, _), _) in &entries {
            if !by_service.contains_key(k) {
                let dests = match self.ipvs.destinations(&service_key(k)).await {
                    Ok(d) => d,
                    Err(ipvs_genl::Error::NoSuchService(_)) => Vec::new(),
                    Err(e) => return Err(e.into()),
                };
                by_service.insert(*k, dests);
            }
        }
        let now = std::time::Instant::now();
        for ((k, b), since) in entries {
            let seen = by_service
                .get(&k)
                .and_then(|ds| ds.iter().find(|d| d.addr == b.ip() && d.port == b.port()))
                .map(|d| drain::Seen {
                    weight: d.weight,
                    connections: d.active_conns + d.inactive_conns,
                });
            match drain::step(seen, since, now, self.drain_timeout) {
                drain::Step::Wait => {}
                drain::Step::Forget => self.draining.remove(&k, &b),
                drain::Step::Delete => {
                    match self
                        .ipvs
                        .delete_destination(&service_key(&k), b.ip(), b.port())
                        .await
                    {
                        Ok(()) | Err(ipvs_genl::Error::NotFound(_)) => deleted += 1,
                        Err(e) => return Err(e.into()),
                    }
                    self.draining.remove(&k, &b);
                }
            }
        }
        Ok(deleted)
    }

    /// Destinations draining now.
    pub fn draining(&self) -> usize {
        self.draining.len()
    }

    /// Reads the kernel and converges it to `want`.
    pub async fn sync(&mut self, want: &ProxyTable) -> Result<(Vec<ProxyOp>, Applied), Error> {
        let have = self.observed().await?;
        let ops = plan(want, &have);
        let applied = self.apply(&ops, want).await?;
        Ok((ops, applied))
    }

    /// Removes every Signpost virtual service, `kube-ipvs0` and the nft table.
    pub async fn cleanup(mut self) -> Result<(), Error> {
        for s in self.ipvs.services().await? {
            if let ServiceKey::Tuple { addr, .. } = s.key
                && self.ours(&addr)
            {
                self.ipvs.delete_service(&s.key).await?;
            }
        }
        self.link.delete().await?;
        nft_script(&format!(
            "add table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n"
        ))
    }
}

/// Ops counted by kind, for metrics.
pub fn count_ops(ops: &[ProxyOp]) -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    for op in ops {
        let k = match op {
            ProxyOp::AddService { .. } => "add_service",
            ProxyOp::EditService { .. } => "edit_service",
            ProxyOp::DeleteService { .. } => "delete_service",
            ProxyOp::AddBackend { .. } => "add_backend",
            ProxyOp::RemoveBackend { .. } => "remove_backend",
        };
        *m.entry(k).or_default() += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_is_persistence_with_the_services_timeout() {
        let k = VirtualKey {
            ip: "fd00:10:96::1".parse().unwrap(),
            protocol: Protocol::Udp,
            port: 53,
        };
        let s = service(&k, Some(10800));
        assert_eq!(s.flags & ipvs_genl::flags::PERSISTENT, 1);
        assert_eq!(s.timeout, 10800);
        assert_eq!(s.netmask_prefix, 128);
        assert_eq!(service(&k, None).flags, 0);
    }
}
