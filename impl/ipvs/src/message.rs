//! The IPVS generic-netlink messages: commands and attributes as the kernel
//! ABI (`include/uapi/linux/ip_vs.h`) lays them out, emitted and parsed with
//! netlink-packet-core.

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, Nla, NlaBuffer, NlasIterator, Parseable,
    ParseableParametrized, emit_u16, emit_u32, parse_string, parse_u16, parse_u16_be, parse_u32,
};
use netlink_packet_generic::{GenlFamily, GenlHeader};

/// The generic-netlink family name.
pub const FAMILY_NAME: &str = "IPVS";
/// The family's protocol version.
pub const FAMILY_VERSION: u8 = 1;

/// IPVS commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// Add a virtual service.
    NewService,
    /// Edit a virtual service.
    SetService,
    /// Delete a virtual service.
    DelService,
    /// Get (or dump) virtual services.
    GetService,
    /// Add a destination.
    NewDest,
    /// Edit a destination.
    SetDest,
    /// Delete a destination.
    DelDest,
    /// Dump the destinations of a service.
    GetDest,
    /// Delete every service.
    Flush,
    /// Any other command number.
    Other(u8),
}

impl Command {
    /// The command number.
    pub fn number(self) -> u8 {
        match self {
            Command::NewService => 1,
            Command::SetService => 2,
            Command::DelService => 3,
            Command::GetService => 4,
            Command::NewDest => 5,
            Command::SetDest => 6,
            Command::DelDest => 7,
            Command::GetDest => 8,
            Command::Flush => 17,
            Command::Other(n) => n,
        }
    }

    fn from_number(n: u8) -> Self {
        match n {
            1 => Command::NewService,
            2 => Command::SetService,
            3 => Command::DelService,
            4 => Command::GetService,
            5 => Command::NewDest,
            6 => Command::SetDest,
            7 => Command::DelDest,
            8 => Command::GetDest,
            17 => Command::Flush,
            n => Command::Other(n),
        }
    }
}

const CMD_ATTR_SERVICE: u16 = 1;
const CMD_ATTR_DEST: u16 = 2;
const NESTED: u16 = 0x8000;

const SVC_AF: u16 = 1;
const SVC_PROTOCOL: u16 = 2;
const SVC_ADDR: u16 = 3;
const SVC_PORT: u16 = 4;
const SVC_FWMARK: u16 = 5;
const SVC_SCHED_NAME: u16 = 6;
const SVC_FLAGS: u16 = 7;
const SVC_TIMEOUT: u16 = 8;
const SVC_NETMASK: u16 = 9;

const DEST_ADDR: u16 = 1;
const DEST_PORT: u16 = 2;
const DEST_FWD_METHOD: u16 = 3;
const DEST_WEIGHT: u16 = 4;
const DEST_U_THRESH: u16 = 5;
const DEST_L_THRESH: u16 = 6;
const DEST_ACTIVE_CONNS: u16 = 7;
const DEST_INACT_CONNS: u16 = 8;
const DEST_PERSIST_CONNS: u16 = 9;
const DEST_ADDR_FAMILY: u16 = 11;

/// A service attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SvcAttr {
    /// Address family (`AF_INET` 2, `AF_INET6` 10), host order.
    Af(u16),
    /// IP protocol number, host order.
    Protocol(u16),
    /// Address: always 16 bytes, an IPv4 address in the first four.
    Addr([u8; 16]),
    /// Port, network order.
    Port(u16),
    /// Firewall mark, host order.
    Fwmark(u32),
    /// Scheduler name, NUL-terminated on the wire.
    SchedName(String),
    /// `struct ip_vs_flags { flags, mask }`: 8 bytes, host order.
    Flags {
        /// Flag bits.
        flags: u32,
        /// Which bits to change.
        mask: u32,
    },
    /// Persistence timeout in seconds.
    Timeout(u32),
    /// Persistence netmask, 4 raw bytes: an IPv4 mask in network order,
    /// or an IPv6 prefix length as a host-order u32.
    Netmask([u8; 4]),
    /// Anything else (statistics, PE name).
    Other(DefaultNla),
}

/// A destination attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DestAttr {
    /// Address: 16 bytes.
    Addr([u8; 16]),
    /// Port, network order.
    Port(u16),
    /// Forwarding method (0 masquerade, 1 local, 2 tunnel, 3 direct routing).
    FwdMethod(u32),
    /// Weight.
    Weight(u32),
    /// Upper connection threshold.
    UpperThreshold(u32),
    /// Lower connection threshold.
    LowerThreshold(u32),
    /// Active connections (read only).
    ActiveConns(u32),
    /// Inactive connections (read only).
    InactiveConns(u32),
    /// Persistent connections (read only).
    PersistConns(u32),
    /// Address family of the destination, host order.
    AddrFamily(u16),
    /// Anything else.
    Other(DefaultNla),
}

/// A top-level attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Attr {
    /// The service (nested).
    Service(Vec<SvcAttr>),
    /// The destination (nested).
    Dest(Vec<DestAttr>),
    /// Anything else.
    Other(DefaultNla),
}

fn nested_len<T: Nla>(items: &[T]) -> usize {
    items.as_ref().buffer_len()
}

impl Nla for SvcAttr {
    fn value_len(&self) -> usize {
        match self {
            SvcAttr::Af(_) | SvcAttr::Protocol(_) | SvcAttr::Port(_) => 2,
            SvcAttr::Addr(_) => 16,
            SvcAttr::Fwmark(_) | SvcAttr::Timeout(_) | SvcAttr::Netmask(_) => 4,
            SvcAttr::SchedName(s) => s.len() + 1,
            SvcAttr::Flags { .. } => 8,
            SvcAttr::Other(n) => n.value_len(),
        }
    }
    fn kind(&self) -> u16 {
        match self {
            SvcAttr::Af(_) => SVC_AF,
            SvcAttr::Protocol(_) => SVC_PROTOCOL,
            SvcAttr::Addr(_) => SVC_ADDR,
            SvcAttr::Port(_) => SVC_PORT,
            SvcAttr::Fwmark(_) => SVC_FWMARK,
            SvcAttr::SchedName(_) => SVC_SCHED_NAME,
            SvcAttr::Flags { .. } => SVC_FLAGS,
            SvcAttr::Timeout(_) => SVC_TIMEOUT,
            SvcAttr::Netmask(_) => SVC_NETMASK,
            SvcAttr::Other(n) => n.kind(),
        }
    }
    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            SvcAttr::Af(v) | SvcAttr::Protocol(v) => {
                let _ = emit_u16(buf, *v);
            }
            SvcAttr::Port(p) => buf[..2].copy_from_slice(&p.to_be_bytes()),
            SvcAttr::Addr(a) => buf[..16].copy_from_slice(a),
            SvcAttr::Fwmark(v) | SvcAttr::Timeout(v) => {
                let _ = emit_u32(buf, *v);
            }
            SvcAttr::Netmask(raw) => buf[..4].copy_from_slice(raw),
            SvcAttr::SchedName(s) => {
                buf[..s.len()].copy_from_slice(s.as_bytes());
                buf[s.len()] = 0;
            }
            SvcAttr::Flags { flags, mask } => {
                let _ = emit_u32(&mut buf[..4], *flags);
                let _ = emit_u32(&mut buf[4..8], *mask);
            }
            SvcAttr::Other(n) => n.emit_value(buf),
        }
    }
}

impl Nla for DestAttr {
    fn value_len(&self) -> usize {
        match self {
            DestAttr::Addr(_) => 16,
            DestAttr::Port(_) | DestAttr::AddrFamily(_) => 2,
            DestAttr::Other(n) => n.value_len(),
            _ => 4,
        }
    }
    fn kind(&self) -> u16 {
        match self {
            DestAttr::Addr(_) => DEST_ADDR,
            DestAttr::Port(_) => DEST_PORT,
            DestAttr::FwdMethod(_) => DEST_FWD_METHOD,
            DestAttr::Weight(_) => DEST_WEIGHT,
            DestAttr::UpperThreshold(_) => DEST_U_THRESH,
            DestAttr::LowerThreshold(_) => DEST_L_THRESH,
            DestAttr::ActiveConns(_) => DEST_ACTIVE_CONNS,
            DestAttr::InactiveConns(_) => DEST_INACT_CONNS,
            DestAttr::PersistConns(_) => DEST_PERSIST_CONNS,
            DestAttr::AddrFamily(_) => DEST_ADDR_FAMILY,
            DestAttr::Other(n) => n.kind(),
        }
    }
    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            DestAttr::Addr(a) => buf[..16].copy_from_slice(a),
            DestAttr::Port(p) => buf[..2].copy_from_slice(&p.to_be_bytes()),
            DestAttr::AddrFamily(v) => {
                let _ = emit_u16(buf, *v);
            }
            DestAttr::FwdMethod(v)
            | DestAttr::Weight(v)
            | DestAttr::UpperThreshold(v)
            | DestAttr::LowerThreshold(v)
            | DestAttr::ActiveConns(v)
            | DestAttr::InactiveConns(v)
            | DestAttr::PersistConns(v) => {
                let _ = emit_u32(buf, *v);
            }
            DestAttr::Other(n) => n.emit_value(buf),
        }
    }
}

impl Nla for Attr {
    fn value_len(&self) -> usize {
        match self {
            Attr::Service(a) => nested_len(a),
            Attr::Dest(a) => nested_len(a),
            Attr::Other(n) => n.value_len(),
        }
    }
    fn kind(&self) -> u16 {
        match self {
            Attr::Service(_) => CMD_ATTR_SERVICE | NESTED,
            Attr::Dest(_) => CMD_ATTR_DEST | NESTED,
            Attr::Other(n) => n.kind(),
        }
    }
    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            Attr::Service(a) => a.as_slice().emit(buf),
            Attr::Dest(a) => a.as_slice().emit(buf),
            Attr::Other(n) => n.emit_value(buf),
        }
    }
}

fn addr16(v: &[u8]) -> Result<[u8; 16], DecodeError> {
    v.try_into()
        .map_err(|_| DecodeError::invalid_ip_address(v.len()))
}

fn four(v: &[u8]) -> Result<[u8; 4], DecodeError> {
    v.try_into()
        .map_err(|_| DecodeError::invalid_number(4, v.len()))
}

fn parse_svc(value: &[u8]) -> Result<Vec<SvcAttr>, DecodeError> {
    let mut out = Vec::new();
    for nla in NlasIterator::new(value) {
        let nla = nla?;
        let v = nla.value();
        out.push(match nla.kind() {
            SVC_AF => SvcAttr::Af(parse_u16(v)?),
            SVC_PROTOCOL => SvcAttr::Protocol(parse_u16(v)?),
            SVC_ADDR => SvcAttr::Addr(addr16(v)?),
            SVC_PORT => SvcAttr::Port(parse_u16_be(v)?),
            SVC_FWMARK => SvcAttr::Fwmark(parse_u32(v)?),
            SVC_SCHED_NAME => SvcAttr::SchedName(parse_string(v)?),
            SVC_FLAGS if v.len() >= 8 => SvcAttr::Flags {
                flags: parse_u32(&v[..4])?,
                mask: parse_u32(&v[4..8])?,
            },
            SVC_TIMEOUT => SvcAttr::Timeout(parse_u32(v)?),
            SVC_NETMASK => SvcAttr::Netmask(four(v)?),
            _ => SvcAttr::Other(DefaultNla::parse(&nla)?),
        });
    }
    Ok(out)
}

fn parse_dest(value: &[u8]) -> Result<Vec<DestAttr>, DecodeError> {
    let mut out = Vec::new();
    for nla in NlasIterator::new(value) {
        let nla = nla?;
        let v = nla.value();
        out.push(match nla.kind() {
            DEST_ADDR => DestAttr::Addr(addr16(v)?),
            DEST_PORT => DestAttr::Port(parse_u16_be(v)?),
            DEST_FWD_METHOD => DestAttr::FwdMethod(parse_u32(v)?),
            DEST_WEIGHT => DestAttr::Weight(parse_u32(v)?),
            DEST_U_THRESH => DestAttr::UpperThreshold(parse_u32(v)?),
            DEST_L_THRESH => DestAttr::LowerThreshold(parse_u32(v)?),
            DEST_ACTIVE_CONNS => DestAttr::ActiveConns(parse_u32(v)?),
            DEST_INACT_CONNS => DestAttr::InactiveConns(parse_u32(v)?),
            DEST_PERSIST_CONNS => DestAttr::PersistConns(parse_u32(v)?),
            DEST_ADDR_FAMILY => DestAttr::AddrFamily(parse_u16(v)?),
            _ => DestAttr::Other(DefaultNla::parse(&nla)?),
        });
    }
    Ok(out)
}

/// One IPVS message: a command and its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsMessage {
    /// The command.
    pub cmd: Command,
    /// The attributes.
    pub attrs: Vec<Attr>,
}

impl GenlFamily for IpvsMessage {
    fn family_name() -> &'static str {
        FAMILY_NAME
    }
    fn command(&self) -> u8 {
        self.cmd.number()
    }
    fn version(&self) -> u8 {
        FAMILY_VERSION
    }
}

impl Emitable for IpvsMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }
    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let mut attrs = Vec::new();
        for nla in NlasIterator::new(buf) {
            let nla: NlaBuffer<&[u8]> = nla?;
            attrs.push(match nla.kind() & !NESTED {
                CMD_ATTR_SERVICE => Attr::Service(parse_svc(nla.value())?),
                CMD_ATTR_DEST => Attr::Dest(parse_dest(nla.value())?),
                _ => Attr::Other(DefaultNla::parse(&nla)?),
            });
        }
        Ok(IpvsMessage {
            cmd: Command::from_number(header.cmd),
            attrs,
        })
    }
}
