//! The nft table of the IPVS plane (`inet signpost-ipvs`) and its sets:
//! `reject_v4/v6` (`address . protocol . port` of virtual services without
//! endpoints, rejected before IPVS would drop them: PXY-3), `vips_v4/v6`
//! (every ClusterIP; what IPVS did not take is rejected after it: PXY-12)
//! and `hairpin_v4/v6` (`backend . backend`, masqueraded); traffic to a
//! ClusterIP from a source outside `no_masq_v4/v6` (the [`Masquerade`]
//! policy; everything by default) is marked before IPVS and masqueraded
//! after it. `nft` creates the
//! table once; after that a sync's element changes, worked out only from
//! the virtual addresses its ops name, go to the kernel as one netlink batch.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};

use signpost_model::cluster::{Protocol, ProxyTable, VirtualKey, VirtualService};
use signpost_model::reconcile::ProxyOp;

use super::netlink::KeysBySet;
use super::{Error, NFT_TABLE};
use crate::addresses::Masquerade;
use crate::nftables::MASQ_MARK;
use crate::plane::has_address;

/// Runs an nft script from stdin.
pub(super) fn nft_script(script: &str) -> Result<(), Error> {
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

/// The nft script that creates the table (idempotent) with empty element
/// sets and `masq` as the masquerade policy.
pub fn nft_base(masq: &Masquerade) -> String {
    let mut script = format!(
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
add set inet {t} no_masq_v4 {{ type ipv4_addr; flags interval; }}
add set inet {t} no_masq_v6 {{ type ipv6_addr; flags interval; }}
add chain inet {t} mark_pre {{ type filter hook prerouting priority -110; }}
add chain inet {t} mark_out {{ type filter hook output priority -110; }}
flush chain inet {t} mark_pre
flush chain inet {t} mark_out
flush set inet {t} no_masq_v4
flush set inet {t} no_masq_v6
add rule inet {t} mark_pre ip daddr @vips_v4 ip saddr != @no_masq_v4 meta mark set meta mark | {m:#x}
add rule inet {t} mark_pre ip6 daddr @vips_v6 ip6 saddr != @no_masq_v6 meta mark set meta mark | {m:#x}
add rule inet {t} mark_out ip daddr @vips_v4 ip saddr != @no_masq_v4 meta mark set meta mark | {m:#x}
add rule inet {t} mark_out ip6 daddr @vips_v6 ip6 saddr != @no_masq_v6 meta mark set meta mark | {m:#x}
add rule inet {t} postrouting meta mark & {m:#x} == {m:#x} masquerade
",
        t = NFT_TABLE,
        m = MASQ_MARK,
    );
    for v6 in [false, true] {
        let nets = masq.exempt(v6);
        if !nets.is_empty() {
            let list: Vec<String> = nets.iter().map(ToString::to_string).collect();
            script.push_str(&format!(
                "add element inet {NFT_TABLE} no_masq_{} {{ {} }}\n",
                if v6 { "v6" } else { "v4" },
                list.join(", ")
            ));
        }
    }
    script
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
pub(super) struct NftState {
    /// The node's addresses (NodePorts; never in the ClusterIP set).
    node_ips: Vec<IpAddr>,
    /// Whose traffic to a ClusterIP is masqueraded.
    masq: Masquerade,
    /// The elements in the kernel; `None` before the first sync and after a
    /// failure (the next sync rebuilds the table).
    have: Option<NftElements>,
    /// Per virtual address, the backend addresses it puts in the hairpin set.
    backends: BTreeMap<VirtualKey, BTreeSet<IpAddr>>,
    /// How many virtual addresses use each backend address.
    refs: BTreeMap<IpAddr, usize>,
}

impl NftState {
    pub(super) fn new(node_ips: Vec<IpAddr>, masq: Masquerade) -> Self {
        NftState {
            node_ips,
            masq,
            ..NftState::default()
        }
    }

    /// Forgets what was written: the next sync rebuilds the table.
    pub(super) fn forget(&mut self) {
        self.have = None;
    }

    /// Creates (or recreates) the table with the elements of `want`.
    fn rebuild(&mut self, want: &ProxyTable) -> Result<(), Error> {
        self.have = None;
        let elements = NftElements::of(want, &self.node_ips);
        let mut script = nft_base(&self.masq);
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

    pub(super) fn sync(&mut self, ops: &[ProxyOp], want: &ProxyTable) -> Result<(), Error> {
        let Some(have) = self.have.as_ref() else {
            return self.rebuild(want);
        };
        let delta = element_delta(have, &self.backends, &self.refs, &self.node_ips, ops, want);
        let (del, add) = (&delta.del, &delta.add);
        let n = del.len() + add.len();
        let sent = if n == 0 {
            Ok(())
        } else if n <= super::netlink::MAX_ELEMENTS {
            // One netlink batch, no process.
            let (d, a) = changes(del, add);
            super::netlink::send(NFT_TABLE, &d, &a)
                .map(|_| ())
                .map_err(Error::Nft)
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

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// A concatenated set key: each part starts on a 4-byte boundary (nft
/// registers are 32 bits wide), zero-padded.
fn concat(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(p);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    out
}

/// `reject_v4`/`reject_v6` key: `addr . inet_proto . inet_service` (the
/// protocol number as one byte, the port big-endian).
pub fn reject_key(e: &(IpAddr, Protocol, u16)) -> (String, Vec<u8>) {
    (
        format!("reject_{}", fam(&e.0)),
        concat(&[&ip_bytes(&e.0), &[proto_number(e.1)], &e.2.to_be_bytes()]),
    )
}

/// `hairpin_v4`/`hairpin_v6` key: `addr . addr`.
pub fn hairpin_key(ip: &IpAddr) -> (String, Vec<u8>) {
    let b = ip_bytes(ip);
    (format!("hairpin_{}", fam(ip)), concat(&[&b, &b]))
}

/// `vips_v4`/`vips_v6` key: the address.
pub fn vip_key(ip: &IpAddr) -> (String, Vec<u8>) {
    (format!("vips_{}", fam(ip)), ip_bytes(ip))
}

/// How many elements change from `have` to `want`.
pub fn changed(have: &NftElements, want: &NftElements) -> usize {
    have.reject.symmetric_difference(&want.reject).count()
        + have.hairpin.symmetric_difference(&want.hairpin).count()
        + have.vips.symmetric_difference(&want.vips).count()
}

/// The element keys taking `have` to `want`: deletions and additions,
/// grouped by set.
pub fn changes(have: &NftElements, want: &NftElements) -> (KeysBySet, KeysBySet) {
    let mut del = KeysBySet::new();
    let mut add = KeysBySet::new();
    let put = |m: &mut KeysBySet, (set, key): (String, Vec<u8>)| {
        m.entry(set).or_default().push(key);
    };
    for e in have.reject.difference(&want.reject) {
        put(&mut del, reject_key(e));
    }
    for e in want.reject.difference(&have.reject) {
        put(&mut add, reject_key(e));
    }
    for ip in have.hairpin.difference(&want.hairpin) {
        put(&mut del, hairpin_key(ip));
    }
    for ip in want.hairpin.difference(&have.hairpin) {
        put(&mut add, hairpin_key(ip));
    }
    for ip in have.vips.difference(&want.vips) {
        put(&mut del, vip_key(ip));
    }
    for ip in want.vips.difference(&have.vips) {
        put(&mut add, vip_key(ip));
    }
    (del, add)
}

/// Sends the changes from `have` to `want` as one netlink batch (see
/// [`super::netlink::send`]); returns how many messages it held.
pub fn apply(have: &NftElements, want: &NftElements) -> Result<usize, Error> {
    let (del, add) = changes(have, want);
    super::netlink::send(NFT_TABLE, &del, &add).map_err(Error::Nft)
}

#[cfg(test)]
mod tests {
    use super::*;
    use signpost_model::reconcile::plan;

    #[test]
    fn keys_are_concatenations_of_32_bit_registers() {
        let (set, key) = reject_key(&("10.96.0.1".parse().unwrap(), Protocol::Udp, 53));
        assert_eq!(set, "reject_v4");
        assert_eq!(key, [10, 96, 0, 1, 17, 0, 0, 0, 0, 53, 0, 0]);
        let (set, key) = reject_key(&("fd00::1".parse().unwrap(), Protocol::Sctp, 0x1f90));
        assert_eq!(set, "reject_v6");
        assert_eq!(key.len(), 24);
        assert_eq!(&key[16..], &[132, 0, 0, 0, 0x1f, 0x90, 0, 0]);
        let (set, key) = hairpin_key(&"10.244.0.5".parse().unwrap());
        assert_eq!(set, "hairpin_v4");
        assert_eq!(key, [10, 244, 0, 5, 10, 244, 0, 5]);
        assert_eq!(hairpin_key(&"fd00::5".parse().unwrap()).1.len(), 32);
        assert_eq!(
            vip_key(&"10.96.0.1".parse().unwrap()),
            ("vips_v4".into(), vec![10, 96, 0, 1])
        );
    }

    #[test]
    fn changes_group_deletions_and_additions_by_set() {
        let have = NftElements {
            reject: [("10.96.0.1".parse().unwrap(), Protocol::Tcp, 80)].into(),
            hairpin: ["10.244.0.1".parse().unwrap()].into(),
            ..NftElements::default()
        };
        let want = NftElements {
            hairpin: ["10.244.0.2".parse().unwrap()].into(),
            vips: ["10.96.0.1".parse().unwrap()].into(),
            ..NftElements::default()
        };
        assert_eq!(changed(&have, &want), 4);
        let (del, add) = changes(&have, &want);
        assert_eq!(del.keys().collect::<Vec<_>>(), ["hairpin_v4", "reject_v4"]);
        assert_eq!(add.keys().collect::<Vec<_>>(), ["hairpin_v4", "vips_v4"]);
    }

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
        assert_eq!(
            nft_delta(&NftElements::of(&b, &[]), &NftElements::of(&b, &[])),
            ""
        );
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
            let mut state = NftState::new(vec![node], Masquerade::default());
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
