//! The kernel client: one generic-netlink socket, family resolved once.

use std::net::IpAddr;

use futures::StreamExt;
use genetlink::GenetlinkHandle;
use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_generic::GenlMessage;

use crate::message::{Attr, Command, IpvsMessage};
use crate::types::{Destination, Service, ServiceKey};

/// What went wrong talking to the kernel.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The object exists already (`EEXIST`).
    #[error("{0}: already exists")]
    Exists(&'static str),
    /// No such destination (`ENOENT`).
    #[error("{0}: no such destination")]
    NotFound(&'static str),
    /// No such virtual service (`ESRCH`).
    #[error("{0}: no such service")]
    NoSuchService(&'static str),
    /// Any other kernel error.
    #[error("{op}: kernel error {errno} ({})", std::io::Error::from_raw_os_error(*errno))]
    Kernel {
        /// The operation.
        op: &'static str,
        /// The errno.
        errno: i32,
    },
    /// The IPVS family is not registered (module `ip_vs` not loaded?).
    #[error("IPVS generic netlink family not found (is the ip_vs module loaded?): {0}")]
    Family(String),
    /// The socket failed.
    #[error("netlink: {0}")]
    Netlink(String),
    /// A reply did not parse.
    #[error("decoding a reply: {0}")]
    Decode(String),
}

impl Error {
    fn from_errno(op: &'static str, errno: i32) -> Self {
        match errno {
            17 => Error::Exists(op),
            2 => Error::NotFound(op),
            3 => Error::NoSuchService(op),
            _ => Error::Kernel { op, errno },
        }
    }
}

/// Builds the message of each operation (pure; tested byte for byte).
pub mod build {
    use super::*;

    /// Add a service.
    pub fn new_service(s: &Service) -> IpvsMessage {
        IpvsMessage {
            cmd: Command::NewService,
            attrs: vec![Attr::Service(s.attrs())],
        }
    }
    /// Edit a service (scheduler, flags, timeout, netmask).
    pub fn set_service(s: &Service) -> IpvsMessage {
        IpvsMessage {
            cmd: Command::SetService,
            attrs: vec![Attr::Service(s.attrs())],
        }
    }
    /// Delete a service.
    pub fn del_service(key: &ServiceKey) -> IpvsMessage {
        IpvsMessage {
            cmd: Command::DelService,
            attrs: vec![Attr::Service(key.attrs())],
        }
    }
    /// Dump services.
    pub fn get_services() -> IpvsMessage {
        IpvsMessage {
            cmd: Command::GetService,
            attrs: Vec::new(),
        }
    }
    /// Add a destination.
    pub fn new_dest(key: &ServiceKey, d: &Destination) -> IpvsMessage {
        IpvsMessage {
            cmd: Command::NewDest,
            attrs: vec![Attr::Service(key.attrs()), Attr::Dest(d.attrs())],
        }
    }
    /// Edit a destination.
    pub fn set_dest(key: &ServiceKey, d: &Destination) -> IpvsMessage {
        IpvsMessage {
            cmd: Command::SetDest,
            attrs: vec![Attr::Service(key.attrs()), Attr::Dest(d.attrs())],
        }
    }
    /// Delete a destination.
    pub fn del_dest(key: &ServiceKey, d: &Destination) -> IpvsMessage {
        IpvsMessage {
            cmd: Command::DelDest,
            attrs: vec![Attr::Service(key.attrs()), Attr::Dest(d.key_attrs())],
        }
    }
    /// Dump the destinations of a service: the dump needs the nested service key.
    pub fn get_dests(key: &ServiceKey) -> IpvsMessage {
        IpvsMessage {
            cmd: Command::GetDest,
            attrs: vec![Attr::Service(key.attrs())],
        }
    }
    /// Delete every service.
    pub fn flush() -> IpvsMessage {
        IpvsMessage {
            cmd: Command::Flush,
            attrs: Vec::new(),
        }
    }

    /// The whole netlink datagram for `msg` with a given family id, flags and sequence number.
    pub fn encode(msg: IpvsMessage, family_id: u16, flags: u16, seq: u32) -> Vec<u8> {
        let mut genl = GenlMessage::from_payload(msg);
        genl.set_resolved_family_id(family_id);
        let mut nl = NetlinkMessage::from(genl);
        nl.header.flags = flags;
        nl.header.sequence_number = seq;
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        buf
    }
}

/// A connection to the kernel's IPVS.
#[derive(Debug)]
pub struct Ipvs {
    handle: GenetlinkHandle,
    sent: u64,
}

impl Ipvs {
    /// Opens a generic-netlink socket (its task runs on the current tokio
    /// runtime) and resolves the IPVS family.
    pub async fn connect() -> Result<Self, Error> {
        let (conn, handle, _) =
            genetlink::new_connection().map_err(|e| Error::Netlink(e.to_string()))?;
        tokio::spawn(conn);
        handle
            .resolve_family::<IpvsMessage>()
            .await
            .map_err(|e| Error::Family(e.to_string()))?;
        Ok(Ipvs { handle, sent: 0 })
    }

    /// Netlink requests sent so far.
    pub fn messages_sent(&self) -> u64 {
        self.sent
    }

    async fn exchange(
        &mut self,
        op: &'static str,
        msg: IpvsMessage,
        dump: bool,
    ) -> Result<Vec<IpvsMessage>, Error> {
        let mut nl = NetlinkMessage::from(GenlMessage::from_payload(msg));
        nl.header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { NLM_F_ACK };
        self.sent += 1;
        let mut replies = self
            .handle
            .request(nl)
            .await
            .map_err(|e| Error::Netlink(e.to_string()))?;
        let mut out = Vec::new();
        while let Some(reply) = replies.next().await {
            let reply = reply.map_err(|e| Error::Decode(e.to_string()))?;
            match reply.payload {
                NetlinkPayload::InnerMessage(genl) => out.push(genl.payload),
                NetlinkPayload::Error(e) => {
                    if let Some(code) = e.code {
                        return Err(Error::from_errno(op, -code.get()));
                    }
                }
                NetlinkPayload::Done(_) => break,
                _ => {}
            }
        }
        Ok(out)
    }

    /// Every virtual service.
    pub async fn services(&mut self) -> Result<Vec<Service>, Error> {
        let replies = self
            .exchange("dump services", build::get_services(), true)
            .await?;
        Ok(replies
            .iter()
            .flat_map(|m| m.attrs.iter())
            .filter_map(|a| match a {
                Attr::Service(s) => Service::from_attrs(s),
                _ => None,
            })
            .collect())
    }

    /// Adds a service.
    pub async fn add_service(&mut self, s: &Service) -> Result<(), Error> {
        self.exchange("add service", build::new_service(s), false)
            .await
            .map(drop)
    }

    /// Edits a service in place (its destinations and connections stay).
    pub async fn update_service(&mut self, s: &Service) -> Result<(), Error> {
        self.exchange("edit service", build::set_service(s), false)
            .await
            .map(drop)
    }

    /// Deletes a service and its destinations.
    pub async fn delete_service(&mut self, key: &ServiceKey) -> Result<(), Error> {
        self.exchange("delete service", build::del_service(key), false)
            .await
            .map(drop)
    }

    /// The destinations of a service.
    pub async fn destinations(&mut self, key: &ServiceKey) -> Result<Vec<Destination>, Error> {
        let family = key.family();
        let replies = self
            .exchange("dump destinations", build::get_dests(key), true)
            .await?;
        Ok(replies
            .iter()
            .flat_map(|m| m.attrs.iter())
            .filter_map(|a| match a {
                Attr::Dest(d) => Destination::from_attrs(d, family),
                _ => None,
            })
            .collect())
    }

    /// Adds a destination.
    pub async fn add_destination(
        &mut self,
        key: &ServiceKey,
        d: &Destination,
    ) -> Result<(), Error> {
        self.exchange("add destination", build::new_dest(key, d), false)
            .await
            .map(drop)
    }

    /// Edits a destination (weight, thresholds, forwarding).
    pub async fn update_destination(
        &mut self,
        key: &ServiceKey,
        d: &Destination,
    ) -> Result<(), Error> {
        self.exchange("edit destination", build::set_dest(key, d), false)
            .await
            .map(drop)
    }

    /// Deletes a destination.
    pub async fn delete_destination(
        &mut self,
        key: &ServiceKey,
        addr: IpAddr,
        port: u16,
    ) -> Result<(), Error> {
        let d = Destination::new(addr, port);
        self.exchange("delete destination", build::del_dest(key, &d), false)
            .await
            .map(drop)
    }

    /// Deletes every service.
    pub async fn flush(&mut self) -> Result<(), Error> {
        self.exchange("flush", build::flush(), false)
            .await
            .map(drop)
    }
}
