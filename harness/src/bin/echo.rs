//! `signpost-echo`: the server every test Pod runs. Each TCP connection and
//! each UDP datagram gets one line back: the Pod's name. That is how tests
//! see which backend a connection reached. On a `--tcp-peer` port the line
//! also names the address the connection came from (`<pod> <address>`), so
//! tests see whether the proxy masqueraded it.
//!
//! Usage: `signpost-echo --name <pod> [--tcp <port>]... [--udp <port>]...
//! [--tcp-peer <port>]...`

use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, UdpSocket};

fn listen_addr(port: u16) -> SocketAddr {
    // A dual-stack socket on [::] serves IPv4 and IPv6 clients alike.
    SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))
}

fn main() -> std::io::Result<()> {
    let mut name = None;
    let (mut tcp, mut udp, mut peer) = (Vec::new(), Vec::new(), Vec::new());
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_default();
        match flag.as_str() {
            "--name" => name = Some(value),
            "--tcp" => tcp.push(
                value
                    .parse::<u16>()
                    .map_err(|e| std::io::Error::other(format!("--tcp {value}: {e}")))?,
            ),
            "--tcp-peer" => peer.push(
                value
                    .parse::<u16>()
                    .map_err(|e| std::io::Error::other(format!("--tcp-peer {value}: {e}")))?,
            ),
            "--udp" => udp.push(
                value
                    .parse::<u16>()
                    .map_err(|e| std::io::Error::other(format!("--udp {value}: {e}")))?,
            ),
            other => return Err(std::io::Error::other(format!("unknown flag {other}"))),
        }
    }
    let name = name.ok_or_else(|| std::io::Error::other("--name is required"))?;
    let reply = format!("{name}\n");
    let mut threads = Vec::new();
    let ports = tcp
        .iter()
        .map(|p| (*p, false))
        .chain(peer.iter().map(|p| (*p, true)));
    for (port, with_peer) in ports {
        let listener = TcpListener::bind(listen_addr(port))?;
        let name = name.clone();
        threads.push(std::thread::spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(mut s) => {
                        let reply = match s.peer_addr() {
                            Ok(p) if with_peer => format!("{name} {}\n", p.ip().to_canonical()),
                            _ => format!("{name}\n"),
                        };
                        // Reply, then drain what the client sent before closing:
                        // closing with unread data would reset the connection
                        // and could destroy the reply in flight.
                        let _ = s.write_all(reply.as_bytes());
                        let _ = s.shutdown(std::net::Shutdown::Write);
                        let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
                        let mut sink = [0u8; 512];
                        while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
                    }
                    Err(e) => eprintln!("signpost-echo: accept: {e}"),
                }
            }
        }));
    }
    for port in &udp {
        let socket = UdpSocket::bind(listen_addr(*port))?;
        let reply = reply.clone();
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            loop {
                match socket.recv_from(&mut buf) {
                    Ok((_, from)) => {
                        if let Err(e) = socket.send_to(reply.as_bytes(), from) {
                            eprintln!("signpost-echo: send to {from}: {e}");
                        }
                    }
                    Err(e) => eprintln!("signpost-echo: recv: {e}"),
                }
            }
        }));
    }
    println!("signpost-echo {name} listening tcp {tcp:?} udp {udp:?} tcp-peer {peer:?}");
    std::io::stdout().flush()?;
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}
