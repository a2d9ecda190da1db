//! Virtual services and destinations as values, and their conversion to and
//! from the kernel's attributes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::message::{Attr, DestAttr, SvcAttr};

/// `AF_INET`.
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 10;

/// Address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(ip: &IpAddr) -> Self {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }
    fn af(self) -> u16 {
        match self {
            Family::V4 => AF_INET,
            Family::V6 => AF_INET6,
        }
    }
    fn from_af(af: u16) -> Option<Self> {
        match af {
            AF_INET => Some(Family::V4),
            AF_INET6 => Some(Family::V6),
            _ => None,
        }
    }
}

/// Transport protocol of a virtual service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// SCTP (132).
    Sctp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u16 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
    fn from_number(n: u16) -> Option<Self> {
        match n {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            132 => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

/// What identifies a virtual service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceKey {
    /// Address, protocol and port.
    Tuple {
        /// Virtual address.
        addr: IpAddr,
        /// Protocol.
        protocol: Protocol,
        /// Port.
        port: u16,
    },
    /// A firewall mark.
    Fwmark {
        /// Address family.
        family: Family,
        /// The mark.
        mark: u32,
    },
}

impl ServiceKey {
    /// The family.
    pub fn family(&self) -> Family {
        match self {
            ServiceKey::Tuple { addr, .. } => Family::of(addr),
            ServiceKey::Fwmark { family, .. } => *family,
        }
    }

    /// The attributes that name this service.
    pub fn attrs(&self) -> Vec<SvcAttr> {
        match self {
            ServiceKey::Tuple {
                addr,
                protocol,
                port,
            } => vec![
                SvcAttr::Af(Family::of(addr).af()),
                SvcAttr::Protocol(protocol.number()),
                SvcAttr::Addr(addr16(addr)),
                SvcAttr::Port(*port),
            ],
            ServiceKey::Fwmark { family, mark } => {
                vec![SvcAttr::Af(family.af()), SvcAttr::Fwmark(*mark)]
            }
        }
    }
}

/// Service flag bits (`IP_VS_SVC_F_*`).
pub mod flags {
    /// Persistent (session affinity).
    pub const PERSISTENT: u32 = 0x1;
    /// Set by the kernel on every hashed service; not settable.
    pub const HASHED: u32 = 0x2;
    /// One-packet scheduling (UDP).
    pub const ONEPACKET: u32 = 0x4;
    /// Scheduler flag 1 (e.g. sh fallback).
    pub const SCHED1: u32 = 0x8;
    /// Scheduler flag 2 (e.g. sh port).
    pub const SCHED2: u32 = 0x10;
    /// Scheduler flag 3.
    pub const SCHED3: u32 = 0x20;
}

/// A virtual service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Service {
    /// What identifies it.
    pub key: ServiceKey,
    /// Scheduler name (`rr`, `wrr`, `lc`, `sh`, ...).
    pub scheduler: String,
    /// Flag bits ([`flags`]); HASHED is ignored when comparing.
    pub flags: u32,
    /// Persistence timeout in seconds (with [`flags::PERSISTENT`]).
    pub timeout: u32,
    /// Persistence netmask as a prefix length (32 or 128 for one client address).
    pub netmask_prefix: u8,
}

impl Service {
    /// A service with scheduler `rr`, no flags, no persistence.
    pub fn new(key: ServiceKey) -> Self {
        let netmask_prefix = match key.family() {
            Family::V4 => 32,
            Family::V6 => 128,
        };
        Service {
            key,
            scheduler: "rr".into(),
            flags: 0,
            timeout: 0,
            netmask_prefix,
        }
    }

    /// Persistence for `timeout` seconds per client address.
    pub fn persistent(mut self, timeout: u32) -> Self {
        self.flags |= flags::PERSISTENT;
        self.timeout = timeout;
        self
    }

    /// The kernel's netmask bytes: an IPv4 mask in network order; for IPv6
    /// the prefix length as a host-order u32.
    pub fn netmask_raw(&self) -> [u8; 4] {
        match self.key.family() {
            Family::V4 => {
                let p = u32::from(self.netmask_prefix.min(32));
                let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
                mask.to_be_bytes()
            }
            Family::V6 => u32::from(self.netmask_prefix.min(128)).to_ne_bytes(),
        }
    }

    /// All attributes of a new/set service: key, scheduler, flags, timeout
    /// and netmask (the kernel wants all of them for both commands).
    pub fn attrs(&self) -> Vec<SvcAttr> {
        let mut a = self.key.attrs();
        a.extend([
            SvcAttr::SchedName(self.scheduler.clone()),
            SvcAttr::Flags {
                flags: self.flags & !flags::HASHED,
                mask: u32::MAX,
            },
            SvcAttr::Timeout(self.timeout),
            SvcAttr::Netmask(self.netmask_raw()),
        ]);
        a
    }

    /// Whether two services are the same as far as configuration goes.
    pub fn same_config(&self, other: &Service) -> bool {
        self.key == other.key
            && self.scheduler == other.scheduler
            && (self.flags & !flags::HASHED) == (other.flags & !flags::HASHED)
            && self.timeout == other.timeout
            && (self.flags & flags::PERSISTENT == 0 || self.netmask_prefix == other.netmask_prefix)
    }

    /// Reads a service from a dump's attributes.
    pub fn from_attrs(attrs: &[SvcAttr]) -> Option<Self> {
        let mut af = None;
        let (mut proto, mut addr, mut port, mut mark) = (None, None, None, None);
        let mut s = (String::new(), 0u32, 0u32, None::<[u8; 4]>);
        for a in attrs {
            match a {
                SvcAttr::Af(v) => af = Family::from_af(*v),
                SvcAttr::Protocol(p) => proto = Some(*p),
                SvcAttr::Addr(b) => addr = Some(*b),
                SvcAttr::Port(p) => port = Some(*p),
                SvcAttr::Fwmark(m) => mark = Some(*m),
                SvcAttr::SchedName(n) => s.0 = n.clone(),
                SvcAttr::Flags { flags, .. } => s.1 = *flags,
                SvcAttr::Timeout(t) => s.2 = *t,
                SvcAttr::Netmask(n) => s.3 = Some(*n),
                _ => {}
            }
        }
        let family = af?;
        let key = match (mark.filter(|m| *m != 0), addr, proto, port) {
            (Some(mark), _, _, _) => ServiceKey::Fwmark { family, mark },
            (None, Some(addr), Some(proto), Some(port)) => ServiceKey::Tuple {
                addr: ip_from16(family, &addr),
                protocol: Protocol::from_number(proto)?,
                port,
            },
            _ => return None,
        };
        let netmask_prefix = match (family, s.3) {
            (Family::V4, Some(raw)) => u32::from_be_bytes(raw).leading_ones() as u8,
            (Family::V6, Some(raw)) => u32::from_ne_bytes(raw).min(128) as u8,
            (Family::V4, None) => 32,
            (Family::V6, None) => 128,
        };
        Some(Service {
            key,
            scheduler: s.0,
            flags: s.1,
            timeout: s.2,
            netmask_prefix,
        })
    }
}

/// How packets reach a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Forward {
    /// NAT (masquerading): the only method that works for ClusterIPs.
    Masquerade,
    /// Local node.
    Local,
    /// IP-in-IP tunnel.
    Tunnel,
    /// Direct routing.
    DirectRoute,
}

impl Forward {
    fn number(self) -> u32 {
        match self {
            Forward::Masquerade => 0,
            Forward::Local => 1,
            Forward::Tunnel => 2,
            Forward::DirectRoute => 3,
        }
    }
    fn from_number(n: u32) -> Self {
        match n & 0x7 {
            1 => Forward::Local,
            2 => Forward::Tunnel,
            3 => Forward::DirectRoute,
            _ => Forward::Masquerade,
        }
    }
}

/// A destination (real server) of a virtual service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    /// Address.
    pub addr: IpAddr,
    /// Port.
    pub port: u16,
    /// Forwarding method.
    pub forward: Forward,
    /// Weight (0: no new connections).
    pub weight: u32,
    /// Upper connection threshold (0: none).
    pub upper_threshold: u32,
    /// Lower connection threshold (0: none).
    pub lower_threshold: u32,
    /// Active connections, as last dumped (ignored when sent).
    pub active_conns: u32,
    /// Inactive connections, as last dumped (ignored when sent).
    pub inactive_conns: u32,
}

impl Destination {
    /// A masquerading destination with weight 1.
    pub fn new(addr: IpAddr, port: u16) -> Self {
        Destination {
            addr,
            port,
            forward: Forward::Masquerade,
            weight: 1,
            upper_threshold: 0,
            lower_threshold: 0,
            active_conns: 0,
            inactive_conns: 0,
        }
    }

    /// The attributes naming this destination (address, port, family).
    pub fn key_attrs(&self) -> Vec<DestAttr> {
        vec![
            DestAttr::AddrFamily(Family::of(&self.addr).af()),
            DestAttr::Addr(addr16(&self.addr)),
            DestAttr::Port(self.port),
        ]
    }

    /// All attributes of a new/set destination: the key, forwarding method,
    /// weight and both thresholds (the kernel wants all of them).
    pub fn attrs(&self) -> Vec<DestAttr> {
        let mut a = self.key_attrs();
        a.extend([
            DestAttr::FwdMethod(self.forward.number()),
            DestAttr::Weight(self.weight),
            DestAttr::UpperThreshold(self.upper_threshold),
            DestAttr::LowerThreshold(self.lower_threshold),
        ]);
        a
    }

    /// Whether the configuration (not the counters) is the same.
    pub fn same_config(&self, o: &Destination) -> bool {
        (
            self.addr,
            self.port,
            self.forward,
            self.weight,
            self.upper_threshold,
            self.lower_threshold,
        ) == (
            o.addr,
            o.port,
            o.forward,
            o.weight,
            o.upper_threshold,
            o.lower_threshold,
        )
    }

    /// Reads a destination from a dump; `service_family` applies when the
    /// kernel sends no family of its own.
    pub fn from_attrs(attrs: &[DestAttr], service_family: Family) -> Option<Self> {
        let mut family = service_family;
        let (mut addr, mut port) = (None, None);
        let mut d = Destination::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
        for a in attrs {
            match a {
                DestAttr::AddrFamily(af) => family = Family::from_af(*af).unwrap_or(family),
                DestAttr::Addr(b) => addr = Some(*b),
                DestAttr::Port(p) => port = Some(*p),
                DestAttr::FwdMethod(m) => d.forward = Forward::from_number(*m),
                DestAttr::Weight(w) => d.weight = *w,
                DestAttr::UpperThreshold(v) => d.upper_threshold = *v,
                DestAttr::LowerThreshold(v) => d.lower_threshold = *v,
                DestAttr::ActiveConns(v) => d.active_conns = *v,
                DestAttr::InactiveConns(v) => d.inactive_conns = *v,
                _ => {}
            }
        }
        d.addr = ip_from16(family, &addr?);
        d.port = port?;
        Some(d)
    }
}

/// The 16-byte address attribute: IPv4 in the first four bytes.
pub fn addr16(ip: &IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out = v6.octets(),
    }
    out
}

fn ip_from16(family: Family, b: &[u8; 16]) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(*b)),
    }
}

/// Wraps service attributes as the top-level attribute.
pub fn service_attr(attrs: Vec<SvcAttr>) -> Attr {
    Attr::Service(attrs)
}
