//! The IPVS data plane. The desired table is the oracle's; `plan(desired,
//! observed)` (the model's own reconcile function) turns the difference into
//! ops, and each op is one generic-netlink message: an endpoint change costs
//! O(1) messages. Virtual addresses are bound to the dummy `kube-ipvs0`
//! (rtnetlink), so the node accepts them and a virtual service is Signpost's
//! when its address is bound there (or is a node address, for NodePorts).
//! The observed table is read back from the kernel, so a restart rewrites
//! nothing that is right and removes what is left over.
//!
//! nftables (one `inet signpost-ipvs` table, changed element by element)
//! carries what IPVS does not: a reject for virtual services without
//! endpoints (PXY-3; IPVS alone would drop silently), a reject for whatever
//! reaches a ClusterIP that IPVS did not take (an undeclared port would
//! otherwise reach the node's own sockets, since the address is local), and
//! masquerade for hairpin connections (a Pod reaching itself through its
//! Service).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};

use futures::TryStreamExt;
use ipvs_genl::{Destination, Ipvs, Protocol as IpvsProtocol, Service, ServiceKey};
use rtnetlink::packet_route::address::AddressAttribute;
use signpost_model::cluster::{Protocol, ProxyTable, VirtualKey, VirtualService};
use signpost_model::reconcile::{ProxyOp, plan};

/// The dummy interface holding virtual addresses.
pub const DUMMY: &str = "kube-ipvs0";
/// The nftables table of the IPVS mode (family `inet`).
pub const NFT_TABLE: &str = "signpost-ipvs";
/// The IPVS scheduler.
pub const SCHEDULER: &str = "rr";
/// Longest a removed TCP/SCTP destination drains at weight 0.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(900);

/// Errors of the IPVS data plane.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// IPVS refused or failed.
    #[error("ipvs: {0}")]
    Ipvs(#[from] ipvs_genl::Error),
    /// rtnetlink (the dummy interface and its addresses) failed.
    #[error("rtnetlink: {0}")]
    Link(String),
    /// nft failed.
    #[error("nft: {0}")]
    Nft(String),
    /// A sysctl could not be written.
    #[error("sysctl {key}: {source}")]
    Sysctl {
        /// The key.
        key: String,
        /// The error.
        source: std::io::Error,
    },
}

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
    rt: rtnetlink::Handle,
    link: u32,
    bound: BTreeSet<IpAddr>,
    node_ips: Vec<IpAddr>,
    nft: NftState,
    /// Removed TCP/SCTP destinations kept at weight 0 while their
    /// connections finish, with when draining began.
    draining: BTreeMap<(VirtualKey, SocketAddr), std::time::Instant>,
    /// How long a destination may drain before it is deleted anyway.
    pub drain_timeout: std::time::Duration,
}

impl std::fmt::Debug for IpvsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpvsSink")
            .field("link", &self.link)
            .field("bound", &self.bound.len())
            .finish()
    }
}

async fn rt_handle() -> Result<rtnetlink::Handle, Error> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| Error::Link(e.to_string()))?;
    tokio::spawn(conn);
    Ok(handle)
}

async fn link_index(rt: &rtnetlink::Handle, name: &str) -> Result<Option<u32>, Error> {
    let mut links = rt.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(Some(l.header.index)),
        Ok(None) => Ok(None),
        // No such device.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => Ok(None),
        Err(e) => Err(Error::Link(e.to_string())),
    }
}

async fn bound_addresses(rt: &rtnetlink::Handle, index: u32) -> Result<BTreeSet<IpAddr>, Error> {
    let mut out = BTreeSet::new();
    let mut addrs = rt.address().get().set_link_index_filter(index).execute();
    while let Some(a) = addrs
        .try_next()
        .await
        .map_err(|e| Error::Link(e.to_string()))?
    {
        for attr in a.attributes {
            if let AddressAttribute::Address(ip) = attr {
                out.insert(ip);
            }
        }
    }
    Ok(out)
}

impl IpvsSink {
    /// Connects to IPVS and rtnetlink, creates `kube-ipvs0` if missing and
    /// reads which addresses it holds. `node_ips` are the node's own
    /// addresses (NodePort virtual services live there).
    pub async fn connect(node_ips: Vec<IpAddr>) -> Result<Self, Error> {
        let ipvs = Ipvs::connect().await?;
        let rt = rt_handle().await?;
        let link = match link_index(&rt, DUMMY).await? {
            Some(i) => i,
            None => {
                rt.link()
                    .add(rtnetlink::LinkDummy::new(DUMMY).build())
                    .execute()
                    .await
                    .map_err(|e| Error::Link(format!("creating {DUMMY}: {e}")))?;
                link_index(&rt, DUMMY)
                    .await?
                    .ok_or_else(|| Error::Link(format!("{DUMMY} vanished")))?
            }
        };
        let bound = bound_addresses(&rt, link).await?;
        let nft = NftState::new(node_ips.clone());
        Ok(IpvsSink {
            ipvs,
            rt,
            link,
            bound,
            node_ips,
            nft,
            draining: BTreeMap::new(),
            drain_timeout: DRAIN_TIMEOUT,
        })
    }

    /// IPVS messages sent so far.
    pub fn ipvs_messages(&self) -> u64 {
        self.ipvs.messages_sent()
    }

    fn ours(&self, ip: &IpAddr) -> bool {
        self.bound.contains(ip) || self.node_ips.contains(ip)
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
                self.draining
                    .entry((key, SocketAddr::new(d.addr, d.port)))
                    .or_insert_with(std::time::Instant::now);
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

    async fn bind(&mut self, ip: IpAddr) -> Result<(), Error> {
        if self.bound.contains(&ip) || self.node_ips.contains(&ip) {
            return Ok(());
        }
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        match self.rt.address().add(self.link, ip, prefix).execute().await {
            Ok(()) => {}
            // Already there (another writer, or a race with our own read).
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -17 => {}
            Err(e) => return Err(Error::Link(format!("binding {ip} to {DUMMY}: {e}"))),
        }
        self.bound.insert(ip);
        Ok(())
    }

    async fn unbind(&mut self, ip: IpAddr) -> Result<(), Error> {
        use rtnetlink::packet_route::AddressFamily;
        use rtnetlink::packet_route::address::AddressMessage;
        if !self.bound.contains(&ip) {
            return Ok(());
        }
        // One message, built here: listing the addresses to find it would
        // make each unbind O(bound addresses).
        let mut msg = AddressMessage::default();
        msg.header.family = if ip.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        msg.header.prefix_len = if ip.is_ipv4() { 32 } else { 128 };
        msg.header.index = self.link;
        msg.attributes.push(AddressAttribute::Address(ip));
        if ip.is_ipv4() {
            msg.attributes.push(AddressAttribute::Local(ip));
        }
        match self.rt.address().del(msg).execute().await {
            Ok(()) => {}
            // Already gone.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -99 => {}
            Err(e) => return Err(Error::Link(format!("unbinding {ip}: {e}"))),
        }
        self.bound.remove(&ip);
        Ok(())
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
                    if !self.bound.contains(&key.ip) && !self.node_ips.contains(&key.ip) {
                        applied.link_messages += 1;
                    }
                    self.bind(key.ip).await?;
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
                            Ok(()) => {
                                self.draining
                                    .insert((*key, *backend), std::time::Instant::now());
                            }
                            Err(ipvs_genl::Error::NotFound(_)) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                    applied.ops[4] += 1;
                }
            }
        }
        // A destination that came back is no longer draining.
        self.draining.retain(|(k, b), _| {
            !want.get(k).is_some_and(|vs| vs.backends.contains(b)) && want.contains_key(k)
        });
        // Addresses no virtual service uses any more are unbound.
        let used: BTreeSet<IpAddr> = want.keys().map(|k| k.ip).collect();
        let stale: Vec<IpAddr> = self.bound.difference(&used).copied().collect();
        for ip in stale {
            self.unbind(ip).await?;
            applied.link_messages += 1;
        }
        applied.kernel_time = started.elapsed();
        let nft_started = std::time::Instant::now();
        self.nft.sync(ops, want)?;
        applied.nft_time = nft_started.elapsed();
        applied.ipvs_messages = self.ipvs.messages_sent() - before;
        Ok(applied)
    }

    /// Deletes draining destinations whose connections have ended or whose
    /// time is up; weight-0 destinations found after a restart start
    /// draining now. Returns how many were deleted.
    pub async fn finish_draining(&mut self) -> Result<usize, Error> {
        let mut deleted = 0;
        let keys: Vec<(VirtualKey, SocketAddr)> = self.draining.keys().copied().collect();
        let mut by_service: BTreeMap<VirtualKey, Vec<Destination>> = BTreeMap::new();
        for (k, _) in &keys {
            if !by_service.contains_key(k) {
                let dests = match self.ipvs.destinations(&service_key(k)).await {
                    Ok(d) => d,
                    Err(ipvs_genl::Error::NoSuchService(_)) => Vec::new(),
                    Err(e) => return Err(e.into()),
                };
                by_service.insert(*k, dests);
            }
        }
        for (k, b) in keys {
            let since = self.draining[&(k, b)];
            let dest = by_service
                .get(&k)
                .and_then(|ds| ds.iter().find(|d| d.addr == b.ip() && d.port == b.port()));
            let done = match dest {
                None => true,
                Some(d) if d.weight > 0 => {
                    self.draining.remove(&(k, b));
                    continue;
                }
                Some(d) => {
                    d.active_conns + d.inactive_conns == 0 || since.elapsed() >= self.drain_timeout
                }
            };
            if done {
                if dest.is_some() {
                    match self
                        .ipvs
                        .delete_destination(&service_key(&k), b.ip(), b.port())
                        .await
                    {
                        Ok(()) | Err(ipvs_genl::Error::NotFound(_)) => deleted += 1,
                        Err(e) => return Err(e.into()),
                    }
                }
                self.draining.remove(&(k, b));
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
        let mut links = self.rt.link().get().match_index(self.link).execute();
        if let Some(l) = links
            .try_next()
            .await
            .map_err(|e| Error::Link(e.to_string()))?
        {
            self.rt
                .link()
                .del(l.header.index)
                .execute()
                .await
                .map_err(|e| Error::Link(e.to_string()))?;
        }
        nft_script(&format!(
            "add table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n"
        ))
    }
}

/// Runs an nft script from stdin.
fn nft_script(script: &str) -> Result<(), Error> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Nft(format!("starting nft: {e}")))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .map_err(|e| Error::Nft(e.to_string()))?;
    let out = child
        .wait_with_output()
        .map_err(|e| Error::Nft(e.to_string()))?;
    if !out.status.success() {
        return Err(Error::Nft(format!(
            "{}\n--- script ---\n{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            script.lines().take(20).collect::<Vec<_>>().join("\n")
        )));
    }
    Ok(())
}

/// The nft elements Signpost keeps for a table: virtual addresses that
/// reject, and backend addresses that may hairpin.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NftElements {
    /// `addr . proto . port` of virtual services without backends.
    pub reject: BTreeSet<(IpAddr, Protocol, u16)>,
    /// Backend addresses (a connection from one to itself is masqueraded).
    pub hairpin: BTreeSet<IpAddr>,
    /// ClusterIPs (virtual addresses but the node's own): a packet to one
    /// that IPVS did not take is rejected (PXY-3, undeclared ports).
    pub vips: BTreeSet<IpAddr>,
}

impl NftElements {
    /// The elements for a table; `node_ips` carry NodePorts and are not ClusterIPs.
    pub fn of(table: &ProxyTable, node_ips: &[IpAddr]) -> Self {
        let mut e = NftElements::default();
        for (k, vs) in table {
            if vs.rejects() {
                e.reject.insert((k.ip, k.protocol, k.port));
            }
            if !node_ips.contains(&k.ip) {
                e.vips.insert(k.ip);
            }
            e.hairpin.extend(vs.backends.iter().map(SocketAddr::ip));
        }
        e
    }

    /// How many elements these are.
    pub fn len(&self) -> usize {
        self.reject.len() + self.hairpin.len() + self.vips.len()
    }

    /// No elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether any virtual service of `table` has address `ip` (a range of the
/// ordered keys: O(log n)).
fn has_address(table: &ProxyTable, ip: IpAddr) -> bool {
    let lo = VirtualKey {
        ip,
        protocol: Protocol::Tcp,
        port: 0,
    };
    table.range(lo..).next().is_some_and(|(k, _)| k.ip == ip)
}

fn fam(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { "v4" } else { "v6" }
}

fn reject_elem(e: &(IpAddr, Protocol, u16)) -> (String, String) {
    (
        format!("reject_{}", fam(&e.0)),
        format!("{} . {} . {}", e.0, e.1.as_lower(), e.2),
    )
}

fn hairpin_elem(ip: &IpAddr) -> (String, String) {
    (format!("hairpin_{}", fam(ip)), format!("{ip} . {ip}"))
}

fn vip_elem(ip: &IpAddr) -> (String, String) {
    (format!("vips_{}", fam(ip)), ip.to_string())
}

/// The nft script that creates the table (idempotent) with empty sets.
pub fn nft_base() -> String {
    format!(
        "add table inet {t}
add set inet {t} reject_v4 {{ type ipv4_addr . inet_proto . inet_service; }}
add set inet {t} reject_v6 {{ type ipv6_addr . inet_proto . inet_service; }}
add set inet {t} hairpin_v4 {{ type ipv4_addr . ipv4_addr; }}
add set inet {t} hairpin_v6 {{ type ipv6_addr . ipv6_addr; }}
add set inet {t} vips_v4 {{ type ipv4_addr; }}
add set inet {t} vips_v6 {{ type ipv6_addr; }}
add chain inet {t} input {{ type filter hook input priority -10; }}
add chain inet {t} unclaimed {{ type filter hook input priority 200; }}
add chain inet {t} postrouting {{ type nat hook postrouting priority srcnat; }}
flush chain inet {t} input
flush chain inet {t} unclaimed
flush chain inet {t} postrouting
flush set inet {t} reject_v4
flush set inet {t} reject_v6
flush set inet {t} hairpin_v4
flush set inet {t} hairpin_v6
flush set inet {t} vips_v4
flush set inet {t} vips_v6
add rule inet {t} input ip daddr . meta l4proto . th dport @reject_v4 reject
add rule inet {t} input ip6 daddr . meta l4proto . th dport @reject_v6 reject
add rule inet {t} unclaimed ip daddr @vips_v4 reject
add rule inet {t} unclaimed ip6 daddr @vips_v6 reject
add rule inet {t} postrouting ip saddr . ip daddr @hairpin_v4 masquerade
add rule inet {t} postrouting ip6 saddr . ip6 daddr @hairpin_v6 masquerade
",
        t = NFT_TABLE
    )
}

/// The nft script taking `have` to `want`, element by element.
pub fn nft_delta(have: &NftElements, want: &NftElements) -> String {
    let mut s = String::new();
    let mut line = |verb: &str, (set, elem): (String, String)| {
        s.push_str(&format!(
            "{verb} element inet {NFT_TABLE} {set} {{ {elem} }}\n"
        ));
    };
    for e in have.reject.difference(&want.reject) {
        line("delete", reject_elem(e));
    }
    for e in want.reject.difference(&have.reject) {
        line("add", reject_elem(e));
    }
    for ip in have.hairpin.difference(&want.hairpin) {
        line("delete", hairpin_elem(ip));
    }
    for ip in want.hairpin.difference(&have.hairpin) {
        line("add", hairpin_elem(ip));
    }
    for ip in have.vips.difference(&want.vips) {
        line("delete", vip_elem(ip));
    }
    for ip in want.vips.difference(&have.vips) {
        line("add", vip_elem(ip));
    }
    s
}

/// What Signpost last wrote to the nft table, kept so that a sync looks
/// only at the virtual addresses its ops name (PXY-8: one endpoint change
/// costs O(1), here too).
#[derive(Debug, Default)]
struct NftState {
    /// The node's addresses (NodePorts; never in the ClusterIP set).
    node_ips: Vec<IpAddr>,
    /// The elements in the kernel; `None` before the first sync and after a
    /// failure (the next sync rebuilds the table).
    have: Option<NftElements>,
    /// Per virtual address, the backend addresses it puts in the hairpin set.
    backends: BTreeMap<VirtualKey, BTreeSet<IpAddr>>,
    /// How many virtual addresses use each backend address.
    refs: BTreeMap<IpAddr, usize>,
}

impl NftState {
    fn new(node_ips: Vec<IpAddr>) -> Self {
        NftState {
            node_ips,
            ..NftState::default()
        }
    }

    /// Forgets what was written: the next sync rebuilds the table.
    fn forget(&mut self) {
        self.have = None;
    }

    /// Creates (or recreates) the table with the elements of `want`.
    fn rebuild(&mut self, want: &ProxyTable) -> Result<(), Error> {
        self.have = None;
        let elements = NftElements::of(want, &self.node_ips);
        let mut script = nft_base();
        script.push_str(&nft_delta(&NftElements::default(), &elements));
        nft_script(&script)?;
        self.record(want, elements);
        Ok(())
    }

    /// Records that the kernel holds `elements`, the elements of `want`.
    fn record(&mut self, want: &ProxyTable, elements: NftElements) {
        self.backends = want
            .iter()
            .map(|(k, vs)| (*k, vs.backends.iter().map(SocketAddr::ip).collect()))
            .collect();
        self.refs.clear();
        for ip in self.backends.values().flatten() {
            *self.refs.entry(*ip).or_default() += 1;
        }
        self.have = Some(elements);
    }

    /// Records that `d` is in the kernel.
    fn commit(&mut self, d: ElementDelta) {
        let have = self.have.get_or_insert_with(NftElements::default);
        for e in &d.del.reject {
            have.reject.remove(e);
        }
        have.reject.extend(d.add.reject.iter().copied());
        for ip in &d.del.hairpin {
            have.hairpin.remove(ip);
        }
        have.hairpin.extend(d.add.hairpin.iter().copied());
        for ip in &d.del.vips {
            have.vips.remove(ip);
        }
        have.vips.extend(d.add.vips.iter().copied());
        for (key, ips) in d.backends {
            if ips.is_empty() {
                self.backends.remove(&key);
            } else {
                self.backends.insert(key, ips);
            }
        }
        for (ip, count) in d.refs {
            if count == 0 {
                self.refs.remove(&ip);
            } else {
                self.refs.insert(ip, count);
            }
        }
    }

    fn sync(&mut self, ops: &[ProxyOp], want: &ProxyTable) -> Result<(), Error> {
        let Some(have) = self.have.as_ref() else {
            return self.rebuild(want);
        };
        let delta = element_delta(have, &self.backends, &self.refs, &self.node_ips, ops, want);
        let (del, add) = (&delta.del, &delta.add);
        let n = del.len() + add.len();
        let sent = if n == 0 {
            Ok(())
        } else if n <= crate::nftnl::MAX_ELEMENTS {
            // One netlink batch, no process.
            crate::nftnl::apply_changes(del, add).map(|_| ())
        } else {
            // `del` and `add` are disjoint, so this deletes `del` and adds `add`.
            nft_script(&nft_delta(del, add))
        };
        if let Err(e) = sent {
            self.forget();
            return Err(e);
        }
        self.commit(delta);
        Ok(())
    }
}

/// The element changes for the virtual addresses `ops` name, and the
/// bookkeeping after them.
#[derive(Debug, Default, PartialEq, Eq)]
struct ElementDelta {
    /// Elements to delete.
    del: NftElements,
    /// Elements to add (disjoint from `del`).
    add: NftElements,
    /// New backend addresses of each touched virtual address.
    backends: BTreeMap<VirtualKey, BTreeSet<IpAddr>>,
    /// New use counts of each backend address whose count changed.
    refs: BTreeMap<IpAddr, usize>,
}

/// Pure: what the nft sets need after `ops` turned the table into `want`,
/// looking only at the virtual addresses the ops name.
fn element_delta(
    have: &NftElements,
    backends: &BTreeMap<VirtualKey, BTreeSet<IpAddr>>,
    refs: &BTreeMap<IpAddr, usize>,
    node_ips: &[IpAddr],
    ops: &[ProxyOp],
    want: &ProxyTable,
) -> ElementDelta {
    let mut d = ElementDelta::default();
    let touched: BTreeSet<VirtualKey> = ops
        .iter()
        .map(|op| match op {
            ProxyOp::AddService { key, .. }
            | ProxyOp::EditService { key, .. }
            | ProxyOp::DeleteService { key }
            | ProxyOp::AddBackend { key, .. }
            | ProxyOp::RemoveBackend { key, .. } => *key,
        })
        .collect();
    let mut counts: BTreeMap<IpAddr, isize> = BTreeMap::new();
    let empty = BTreeSet::new();
    let addresses: BTreeSet<IpAddr> = touched
        .iter()
        .map(|k| k.ip)
        .filter(|ip| !node_ips.contains(ip))
        .collect();
    for ip in addresses {
        match (have.vips.contains(&ip), has_address(want, ip)) {
            (false, true) => {
                d.add.vips.insert(ip);
            }
            (true, false) => {
                d.del.vips.insert(ip);
            }
            _ => {}
        }
    }
    for key in touched {
        let reject = (key.ip, key.protocol, key.port);
        let rejects = want.get(&key).is_some_and(VirtualService::rejects);
        match (have.reject.contains(&reject), rejects) {
            (false, true) => {
                d.add.reject.insert(reject);
            }
            (true, false) => {
                d.del.reject.insert(reject);
            }
            _ => {}
        }
        let old = backends.get(&key).unwrap_or(&empty);
        let new: BTreeSet<IpAddr> = want
            .get(&key)
            .map(|vs| vs.backends.iter().map(SocketAddr::ip).collect())
            .unwrap_or_default();
        for ip in old.difference(&new) {
            *counts.entry(*ip).or_default() -= 1;
        }
        for ip in new.difference(old) {
            *counts.entry(*ip).or_default() += 1;
        }
        if *old != new {
            d.backends.insert(key, new);
        }
    }
    for (ip, change) in counts.into_iter().filter(|(_, c)| *c != 0) {
        let before = refs.get(&ip).copied().unwrap_or(0);
        let after = before.saturating_add_signed(change);
        match (before > 0, after > 0) {
            (false, true) => {
                d.add.hairpin.insert(ip);
            }
            (true, false) => {
                d.del.hairpin.insert(ip);
            }
            _ => {}
        }
        d.refs.insert(ip, after);
    }
    d
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
    fn nft_delta_changes_only_what_changed() {
        let k = |ip: &str| VirtualKey {
            ip: ip.parse().unwrap(),
            protocol: Protocol::Tcp,
            port: 80,
        };
        let mut a = ProxyTable::new();
        a.insert(k("10.96.0.1"), VirtualService::default());
        a.insert(
            k("10.96.0.2"),
            VirtualService {
                backends: ["10.244.0.5:8080".parse().unwrap()].into(),
                affinity_timeout: None,
            },
        );
        let mut b = a.clone();
        b.get_mut(&k("10.96.0.1"))
            .unwrap()
            .backends
            .insert("10.244.0.6:8080".parse().unwrap());
        let delta = nft_delta(&NftElements::of(&a, &[]), &NftElements::of(&b, &[]));
        assert_eq!(
            delta,
            format!(
                "delete element inet {NFT_TABLE} reject_v4 {{ 10.96.0.1 . tcp . 80 }}\nadd element inet {NFT_TABLE} hairpin_v4 {{ 10.244.0.6 . 10.244.0.6 }}\n"
            )
        );
        assert_eq!(nft_delta(&NftElements::of(&b, &[]), &NftElements::of(&b, &[])), "");
        // A ClusterIP is in the set while any of its ports is a virtual
        // service; a node address (NodePorts) never is.
        let node: IpAddr = "10.0.0.1".parse().unwrap();
        let mut c = b.clone();
        c.insert(k("10.0.0.1"), VirtualService::default());
        c.remove(&k("10.96.0.1"));
        assert_eq!(
            nft_delta(&NftElements::of(&b, &[node]), &NftElements::of(&c, &[node])),
            format!(
                "add element inet {NFT_TABLE} reject_v4 {{ 10.0.0.1 . tcp . 80 }}\ndelete element inet {NFT_TABLE} hairpin_v4 {{ 10.244.0.6 . 10.244.0.6 }}\ndelete element inet {NFT_TABLE} vips_v4 {{ 10.96.0.1 }}\n"
            )
        );
    }

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

    fn arb_table() -> impl proptest::strategy::Strategy<Value = ProxyTable> {
        use proptest::prelude::*;
        proptest::collection::btree_map(
            (
                0..4u8,
                prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)],
            )
                .prop_map(|(ip, protocol)| VirtualKey {
                    ip: IpAddr::from([10, 96, 0, ip]),
                    protocol,
                    port: 53,
                }),
            proptest::collection::btree_set((0..5u8, prop_oneof![Just(80u16), Just(8080)]), 0..4)
                .prop_map(|bs| VirtualService {
                    backends: bs
                        .into_iter()
                        .map(|(i, p)| SocketAddr::new(IpAddr::from([10, 244, 0, i]), p))
                        .collect(),
                    affinity_timeout: None,
                }),
            0..5,
        )
    }

    proptest::proptest! {
        /// Following only the addresses the ops name, the nft elements and
        /// their bookkeeping end where a rebuild from the whole table would.
        #[test]
        fn element_deltas_reach_the_elements_of_the_table(
            tables in proptest::collection::vec(arb_table(), 1..6)
        ) {
            let node: IpAddr = IpAddr::from([10, 96, 0, 3]);
            let mut state = NftState::new(vec![node]);
            let first = &tables[0];
            state.record(first, NftElements::of(first, &[node]));
            let mut prev = first.clone();
            for next in &tables[1..] {
                let ops = plan(next, &prev);
                let have = state.have.clone().unwrap();
                let d = element_delta(&have, &state.backends, &state.refs, &[node], &ops, next);
                let want = NftElements::of(next, &[node]);
                // Exactly the difference, nothing else.
                proptest::prop_assert_eq!(&d.del.reject, &have.reject.difference(&want.reject).copied().collect());
                proptest::prop_assert_eq!(&d.add.reject, &want.reject.difference(&have.reject).copied().collect());
                proptest::prop_assert_eq!(&d.del.hairpin, &have.hairpin.difference(&want.hairpin).copied().collect());
                proptest::prop_assert_eq!(&d.add.hairpin, &want.hairpin.difference(&have.hairpin).copied().collect());
                proptest::prop_assert_eq!(&d.del.vips, &have.vips.difference(&want.vips).copied().collect());
                proptest::prop_assert_eq!(&d.add.vips, &want.vips.difference(&have.vips).copied().collect());
                state.commit(d);
                proptest::prop_assert_eq!(state.have.as_ref(), Some(&want));
                prev = next.clone();
            }
        }
    }
}
