//! `kube-ipvs0`: the dummy interface that holds every ClusterIP, so the
//! node accepts packets to them and IPVS sees them in its input hook. The
//! addresses bound there are the plane's record of which virtual addresses
//! are Signpost's (with the node's own addresses, for NodePorts).

use std::collections::BTreeSet;
use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;

use super::{DUMMY, Error};

/// The dummy interface and the addresses bound to it.
pub struct Link {
    rt: rtnetlink::Handle,
    index: u32,
    bound: BTreeSet<IpAddr>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("index", &self.index)
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

impl Link {
    /// Opens `kube-ipvs0` (creating it if missing) and reads which addresses it holds.
    pub async fn open() -> Result<Self, Error> {
        let rt = rt_handle().await?;
        let index = match link_index(&rt, DUMMY).await? {
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
        let bound = bound_addresses(&rt, index).await?;
        Ok(Link { rt, index, bound })
    }

    /// The addresses bound now.
    pub fn bound(&self) -> &BTreeSet<IpAddr> {
        &self.bound
    }

    /// Binds `ip` (one message; none if it is bound already). Returns
    /// whether a message was sent.
    pub async fn bind(&mut self, ip: IpAddr) -> Result<bool, Error> {
        if self.bound.contains(&ip) {
            return Ok(false);
        }
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        match self
            .rt
            .address()
            .add(self.index, ip, prefix)
            .execute()
            .await
        {
            Ok(()) => {}
            // Already there (another writer, or a race with our own read).
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -17 => {}
            Err(e) => return Err(Error::Link(format!("binding {ip} to {DUMMY}: {e}"))),
        }
        self.bound.insert(ip);
        Ok(true)
    }

    /// Unbinds `ip` (one message; none if it is not bound). Returns whether
    /// a message was sent.
    pub async fn unbind(&mut self, ip: IpAddr) -> Result<bool, Error> {
        use rtnetlink::packet_route::AddressFamily;
        use rtnetlink::packet_route::address::AddressMessage;
        if !self.bound.contains(&ip) {
            return Ok(false);
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
        msg.header.index = self.index;
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
        Ok(true)
    }

    /// Deletes the interface (and with it every bound address).
    pub async fn delete(self) -> Result<(), Error> {
        let mut links = self.rt.link().get().match_index(self.index).execute();
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
        Ok(())
    }
}
