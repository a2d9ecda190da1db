//! `signpost-vmtest`: the IPVS tests that run inside the kernel VM rig (the
//! host kernel has no IPVS). The VM's root namespace is the node; Pods are
//! routed namespaces (a veth each, /32 and /128 routes, the node as
//! gateway) running `signpost-echo`, so every packet between Pods crosses
//! the node and its IPVS.
//!
//! - `genl`: the IPVS library against the kernel — add/edit/delete/dump of
//!   IPv4, IPv6, persistent and fwmark services and destinations, typed
//!   errors, a 5,000-service dump.
//! - `dataplane [--cases N]`: generated sequences of desired tables applied
//!   by the proxy core; after every step the kernel's table equals the
//!   desired one, the nft sets hold exactly the rejects and hairpins, and
//!   real TCP and UDP connections to every virtual address land only on
//!   its backends (affinity holds; no backends or an unknown port: refused).
//! - `restart`: a new proxy over a programmed kernel plans nothing for
//!   what is right and removes leftovers.
//! - `drain`: a removed TCP destination stays at weight 0 while it has
//!   connections, takes no new ones, and is deleted when they end or at
//!   the drain timeout.
//! - `e2e --vip IP [--port P]`: `signpost proxy --mode ipvs` against the
//!   host's API server through qemu's restricted forward.
//! - `side --services N --proxy signpost|kube-proxy`: one proxy over N
//!   Services written on the host: start → all programmed, one slice
//!   write → programmed (for `ci/bench proxy`).
//! - `cleanup`: `signpost proxy --mode ipvs --cleanup` leaves no IPVS
//!   service, nft table or `kube-ipvs0`.
//! - `bench [--sizes 1000,10000]`: full and incremental sync times, messages per change.
//!
//! Each prints `PASS <section>` or exits non-zero with the reason.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use ipvs_genl::{Destination, Family, Ipvs, Protocol as IProto, Service, ServiceKey};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use signpost_harness::netns::{NetNs, run};
use signpost_model::cluster::{Protocol, ProxyTable, VirtualKey, VirtualService};
use signpost_model::reconcile::{ProxyOp, plan};
use signpost_proxy::ipvs::{DUMMY, IpvsSink, NFT_TABLE, sysctls};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn sh(cmd: &str) -> Result<String, BoxError> {
    let out = std::process::Command::new("bash")
        .args(["-c", cmd])
        .output()?;
    if !out.status.success() {
        return Err(format!("`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), BoxError> {
    if cond { Ok(()) } else { Err(what().into()) }
}

// ---------------------------------------------------------------- genl

async fn genl() -> Result<(), BoxError> {
    let mut ipvs = Ipvs::connect().await?;
    ipvs.flush().await?;
    for (vip, dest) in [
        ("10.96.1.1", "10.244.9.1"),
        ("fd00:10:96::1:1", "fd00:10:244::9:1"),
    ] {
        let vip: IpAddr = vip.parse()?;
        let key = ServiceKey::Tuple {
            addr: vip,
            protocol: IProto::Tcp,
            port: 80,
        };
        let svc = Service::new(key);
        ipvs.add_service(&svc).await?;
        check(
            matches!(
                ipvs.add_service(&svc).await,
                Err(ipvs_genl::Error::Exists(_))
            ),
            || "adding a service twice is Exists".into(),
        )?;
        let dumped = ipvs.services().await?;
        let got = dumped
            .iter()
            .find(|s| s.key == key)
            .ok_or("service not dumped")?;
        check(got.same_config(&svc), || {
            format!("dumped {got:?}, added {svc:?}")
        })?;
        // Edit: scheduler and persistence with a netmask.
        let mut edited = svc.clone().persistent(300);
        edited.scheduler = "wrr".into();
        edited.netmask_prefix = if vip.is_ipv4() { 24 } else { 64 };
        ipvs.update_service(&edited).await?;
        let got = ipvs
            .services()
            .await?
            .into_iter()
            .find(|s| s.key == key)
            .ok_or("edited service gone")?;
        check(
            got.same_config(&edited) && got.netmask_prefix == edited.netmask_prefix,
            || format!("edited: dumped {got:?}, want {edited:?}"),
        )?;
        // Destinations.
        let mut d = Destination::new(dest.parse()?, 8080);
        ipvs.add_destination(&key, &d).await?;
        d.weight = 5;
        ipvs.update_destination(&key, &d).await?;
        let dests = ipvs.destinations(&key).await?;
        check(dests.len() == 1 && dests[0].same_config(&d), || {
            format!("destinations {dests:?}, want {d:?}")
        })?;
        ipvs.delete_destination(&key, d.addr, d.port).await?;
        check(
            matches!(
                ipvs.delete_destination(&key, d.addr, d.port).await,
                Err(ipvs_genl::Error::NotFound(_))
            ),
            || "deleting a missing destination is NotFound".into(),
        )?;
        ipvs.delete_service(&key).await?;
        check(
            matches!(
                ipvs.delete_service(&key).await,
                Err(ipvs_genl::Error::NoSuchService(_))
            ),
            || "deleting a missing service is NoSuchService".into(),
        )?;
    }
    // Firewall-mark services, IPv4 and IPv6.
    for family in [Family::V4, Family::V6] {
        let key = ServiceKey::Fwmark { family, mark: 0x77 };
        ipvs.add_service(&Service::new(key).persistent(60)).await?;
        let got = ipvs.services().await?;
        check(
            got.iter().any(|s| {
                s.key == key && s.flags & ipvs_genl::flags::PERSISTENT != 0 && s.timeout == 60
            }),
            || format!("fwmark service {key:?} not dumped: {got:?}"),
        )?;
        ipvs.delete_service(&key).await?;
    }
    // The tools agree with us: ipvsadm reads what we wrote.
    let key = ServiceKey::Tuple {
        addr: "10.96.1.2".parse()?,
        protocol: IProto::Udp,
        port: 53,
    };
    ipvs.add_service(&Service::new(key)).await?;
    let listed = sh("ipvsadm -Ln")?;
    check(listed.contains("UDP  10.96.1.2:53 rr"), || {
        format!("ipvsadm: {listed}")
    })?;
    ipvs.flush().await?;
    // A dump far over one netlink buffer: 5,000 services.
    let t = Instant::now();
    for i in 0..5000u32 {
        let addr = IpAddr::from([10, 97, (i / 250) as u8, (i % 250) as u8 + 1]);
        ipvs.add_service(&Service::new(ServiceKey::Tuple {
            addr,
            protocol: IProto::Tcp,
            port: 80,
        }))
        .await?;
    }
    let added = t.elapsed();
    let t = Instant::now();
    let n = ipvs.services().await?.len();
    check(n == 5000, || format!("dumped {n} of 5000 services"))?;
    println!(
        "genl: 5000 services added in {added:.2?}, dumped in {:.2?}",
        t.elapsed()
    );
    ipvs.flush().await?;
    Ok(())
}

// ---------------------------------------------------------------- pods

struct Pod {
    name: String,
    ns: NetNs,
    v4: IpAddr,
    v6: IpAddr,
}

fn node_setup() -> Result<(), BoxError> {
    for (k, v) in [
        ("net/ipv6/conf/all/accept_dad", "0"),
        ("net/ipv6/conf/default/accept_dad", "0"),
        ("net/ipv4/conf/all/rp_filter", "0"),
        // Rejects are ICMP errors, which the kernel rate-limits per peer; the
        // test sends many in a burst and checks every one.
        ("net/ipv4/icmp_ratelimit", "0"),
        ("net/ipv6/icmp/ratelimit", "0"),
    ] {
        std::fs::write(format!("/proc/sys/{k}"), v)?;
    }
    sysctls()?;
    Ok(())
}

fn pod(n: u8, echo: bool) -> Result<Pod, BoxError> {
    let name = format!("pod-{n}");
    let ns = NetNs::create(format!("p{n}"))?;
    let host = format!("vh{n}");
    let v4: IpAddr = format!("10.244.0.{n}").parse()?;
    let v6: IpAddr = format!("fd00:10:244::{n}").parse()?;
    let p = ns.name().to_owned();
    sh(&format!(
        "ip link add {host} type veth peer name eth0 netns {p} && \
         ip link set {host} up && ip addr add 169.254.1.1/32 dev {host} && \
         ip -6 addr add fe80::1/64 dev {host} nodad && \
         ip route add {v4}/32 dev {host} && ip -6 route add {v6}/128 dev {host} && \
         ip -n {p} link set lo up && ip -n {p} link set eth0 up && \
         ip -n {p} addr add {v4}/32 dev eth0 && \
         ip -n {p} route add 169.254.1.1 dev eth0 scope link && \
         ip -n {p} route add default via 169.254.1.1 dev eth0 && \
         ip -n {p} -6 addr add fe80::2/64 dev eth0 nodad && \
         ip -n {p} -6 addr add {v6}/128 dev eth0 nodad && \
         ip -n {p} -6 route add default via fe80::1 dev eth0"
    ))?;
    if echo {
        let _ = std::process::Command::new("ip")
            .args(["netns", "exec", &p, "/test/signpost-echo", "--name", &name])
            .args(["--tcp", "8080", "--udp", "8080", "--tcp-peer", "9090"])
            .stdout(std::process::Stdio::null())
            .spawn()?;
    }
    Ok(Pod { name, ns, v4, v6 })
}

/// One request from inside `ns`: the name of the Pod that answered, or the error kind.
fn ask(
    ns: &NetNs,
    to: SocketAddr,
    protocol: Protocol,
) -> Result<Result<String, std::io::ErrorKind>, BoxError> {
    ask_from(ns, 0, to, protocol)
}

/// As `ask`, from source port `from` (0: any); for UDP one port is one flow.
fn ask_from(
    ns: &NetNs,
    from: u16,
    to: SocketAddr,
    protocol: Protocol,
) -> Result<Result<String, std::io::ErrorKind>, BoxError> {
    let t = Duration::from_secs(2);
    Ok(ns.within(move || -> Result<String, std::io::ErrorKind> {
        let mut line = String::new();
        match protocol {
            Protocol::Udp => {
                let bind: SocketAddr = if to.is_ipv4() {
                    (std::net::Ipv4Addr::UNSPECIFIED, from).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, from).into()
                };
                let s = UdpSocket::bind(bind).map_err(|e| e.kind())?;
                s.set_read_timeout(Some(t)).map_err(|e| e.kind())?;
                s.connect(to).map_err(|e| e.kind())?;
                s.send(b"?").map_err(|e| e.kind())?;
                let mut buf = [0u8; 256];
                let n = s.recv(&mut buf).map_err(|e| e.kind())?;
                line = String::from_utf8_lossy(&buf[..n]).into_owned();
            }
            _ => {
                let mut s = TcpStream::connect_timeout(&to, t).map_err(|e| e.kind())?;
                s.set_read_timeout(Some(t)).map_err(|e| e.kind())?;
                let _ = s.write_all(b"?\n");
                s.read_to_string(&mut line).map_err(|e| e.kind())?;
            }
        }
        Ok(line.trim().to_owned())
    })?)
}

// ---------------------------------------------------------------- dataplane

const VIPS: [&str; 4] = ["10.96.0.1", "10.96.0.2", "fd00:10:96::1", "fd00:10:96::2"];

fn table_strategy(pods: usize) -> impl Strategy<Value = ProxyTable> {
    let entry = (
        0..VIPS.len(),
        prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)],
        prop_oneof![Just(80u16), Just(53u16)],
        proptest::collection::btree_set(1..=pods as u8, 0..=pods),
        proptest::option::of(prop_oneof![Just(60u32), Just(10800u32)]),
    );
    proptest::collection::vec(entry, 1..5).prop_map(|entries| {
        let mut t = ProxyTable::new();
        for (vip, protocol, port, backends, affinity) in entries {
            let ip: IpAddr = VIPS[vip].parse().unwrap();
            let backends = backends
                .into_iter()
                .map(|n| {
                    let b: IpAddr = if ip.is_ipv4() {
                        format!("10.244.0.{n}").parse().unwrap()
                    } else {
                        format!("fd00:10:244::{n}").parse().unwrap()
                    };
                    SocketAddr::new(b, 8080)
                })
                .collect();
            t.insert(
                VirtualKey { ip, protocol, port },
                VirtualService {
                    backends,
                    affinity_timeout: affinity,
                },
            );
        }
        t
    })
}

fn nft_elements() -> Result<String, BoxError> {
    sh(&format!("nft list table inet {NFT_TABLE}"))
}

async fn verify_step(
    sink: &mut IpvsSink,
    want: &ProxyTable,
    pods: &[Pod],
    client: &NetNs,
) -> Result<(), BoxError> {
    let have = sink.observed().await?;
    check(&have == want, || {
        format!("kernel table {have:?}\n  != desired {want:?}")
    })?;
    let nft = nft_elements()?;
    for (k, vs) in want {
        // nft lists the protocol by number, or by name when /etc/protocols exists.
        let proto = match k.protocol {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        };
        let by_number = format!("{} . {proto} . {}", k.ip, k.port);
        let by_name = format!("{} . {} . {}", k.ip, k.protocol.as_lower(), k.port);
        let present = nft.contains(&by_number) || nft.contains(&by_name);
        check(present == vs.rejects(), || {
            format!(
                "nft reject element {by_name}: present {present} want {}\n{nft}",
                vs.rejects()
            )
        })?;
    }
    let names: BTreeMap<IpAddr, &str> = pods
        .iter()
        .flat_map(|p| [(p.v4, p.name.as_str()), (p.v6, p.name.as_str())])
        .collect();
    for (k, vs) in want {
        let to = SocketAddr::new(k.ip, k.port);
        let allowed: BTreeSet<&str> = vs.backends.iter().map(|b| names[&b.ip()]).collect();
        let mut seen = BTreeSet::new();
        for _ in 0..4 {
            let got = ask(client, to, k.protocol)?;
            if vs.rejects() {
                check(got == Err(std::io::ErrorKind::ConnectionRefused), || {
                    format!(
                        "{to} {:?} has no backends: want refused, got {got:?}",
                        k.protocol
                    )
                })?;
            } else {
                let name = got.map_err(|e| format!("{to} {:?}: {e:?}", k.protocol))?;
                check(allowed.contains(name.as_str()), || {
                    format!(
                        "{to} {:?} answered by {name}, allowed {allowed:?}",
                        k.protocol
                    )
                })?;
                seen.insert(name);
            }
        }
        if vs.affinity_timeout.is_some() {
            check(seen.len() <= 1, || {
                format!("{to}: affinity broken: {seen:?}")
            })?;
        }
        // Hairpin: a backend reaches itself through the virtual address.
        if let Some(b) = vs.backends.iter().next() {
            let pod = pods
                .iter()
                .find(|p| names[&b.ip()] == p.name)
                .ok_or("no pod")?;
            let got = ask(&pod.ns, to, k.protocol)?;
            let name = got.map_err(|e| format!("hairpin from {} to {to}: {e:?}", pod.name))?;
            check(allowed.contains(name.as_str()), || {
                format!("hairpin {to} answered by {name}, allowed {allowed:?}")
            })?;
        }
    }
    // A port no virtual service has on a bound address is refused.
    if let Some(k) = want.keys().next() {
        let got = ask(client, SocketAddr::new(k.ip, 9999), Protocol::Tcp)?;
        check(got == Err(std::io::ErrorKind::ConnectionRefused), || {
            format!("{}:9999 should be refused, got {got:?}", k.ip)
        })?;
    }
    Ok(())
}

fn dataplane(cases: u32) -> Result<(), BoxError> {
    node_setup()?;
    let pods: Vec<Pod> = (1..=3).map(|n| pod(n, true)).collect::<Result<_, _>>()?;
    let client = pod(100, false)?;
    std::thread::sleep(Duration::from_millis(300));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let sink =
        std::cell::RefCell::new(rt.block_on(IpvsSink::connect(Vec::new(), Default::default()))?);
    let steps = std::cell::Cell::new(0u32);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = proptest::collection::vec(table_strategy(pods.len()), 1..5);
    let result = runner.run(&strategy, |tables| {
        for want in &tables {
            let mut sink = sink.borrow_mut();
            let sink: &mut IpvsSink = &mut sink;
            let r: Result<(), BoxError> = rt.block_on(async {
                sink.sync(want).await?;
                verify_step(sink, want, &pods, &client.ns).await
            });
            r.map_err(|e| TestCaseError::fail(e.to_string()))?;
            steps.set(steps.get() + 1);
        }
        Ok(())
    });
    // Leave a clean kernel for the next section.
    let mut sink = sink.into_inner();
    rt.block_on(sink.sync(&ProxyTable::new()))?;
    let steps = steps.get();
    result.map_err(|e| format!("{e}"))?;
    println!(
        "dataplane: {cases} generated sequences, {steps} steps verified with real connections"
    );
    Ok(())
}

// ---------------------------------------------------------------- restart

fn fixed_table() -> ProxyTable {
    let mut t = ProxyTable::new();
    for (vip, backends) in [
        ("10.96.0.1", vec!["10.244.0.1:8080", "10.244.0.2:8080"]),
        ("fd00:10:96::1", vec!["[fd00:10:244::3]:8080"]),
    ] {
        t.insert(
            VirtualKey {
                ip: vip.parse().unwrap(),
                protocol: Protocol::Tcp,
                port: 80,
            },
            VirtualService {
                backends: backends.iter().map(|b| b.parse().unwrap()).collect(),
                affinity_timeout: Some(10800),
            },
        );
    }
    t
}

async fn restart() -> Result<(), BoxError> {
    node_setup()?;
    let want = fixed_table();
    {
        let mut first = IpvsSink::connect(Vec::new(), Default::default()).await?;
        first.sync(&want).await?;
    }
    // A new proxy over the programmed kernel: nothing to do.
    let mut second = IpvsSink::connect(Vec::new(), Default::default()).await?;
    let observed = second.observed().await?;
    check(observed == want, || {
        format!("read back {observed:?} != {want:?}")
    })?;
    let ops = plan(&want, &observed);
    check(ops.is_empty(), || format!("a restart planned {ops:?}"))?;
    let before = second.ipvs_messages();
    let (ops, applied) = second.sync(&want).await?;
    check(
        ops.is_empty() && applied.ops.iter().sum::<u64>() == 0,
        || format!("restart sync changed {ops:?}"),
    )?;
    let dump_messages = second.ipvs_messages() - before;
    // A leftover from a previous run: a virtual service on an address bound to kube-ipvs0.
    sh(&format!(
        "ip addr add 10.96.0.99/32 dev {DUMMY} && ipvsadm -A -t 10.96.0.99:80 -s rr && ipvsadm -a -t 10.96.0.99:80 -r 10.244.0.1:8080 -m"
    ))?;
    let mut third = IpvsSink::connect(Vec::new(), Default::default()).await?;
    let (ops, _) = third.sync(&want).await?;
    check(
        ops.iter().all(
            |o| matches!(o, ProxyOp::DeleteService { key } if key.ip.to_string() == "10.96.0.99"),
        ) && ops.len() == 1,
        || format!("leftover removal planned {ops:?}"),
    )?;
    let listed = sh("ipvsadm -Ln")?;
    check(!listed.contains("10.96.0.99"), || {
        format!("leftover still there:\n{listed}")
    })?;
    let addrs = sh(&format!("ip -br addr show {DUMMY}"))?;
    check(!addrs.contains("10.96.0.99"), || {
        format!("leftover address still bound: {addrs}")
    })?;
    println!(
        "restart: 0 ops over a programmed kernel ({dump_messages} read-only dump messages); leftover service and address removed"
    );
    Ok(())
}

// ---------------------------------------------------------------- node addresses

/// Issue 13, finding 11: the node's addresses are taken at every sync, not
/// once at start. After the node's address moves from A to B, the NodePort
/// lives on B, and B is neither bound to kube-ipvs0 nor in the ClusterIP
/// set (where every undeclared port is rejected: the node's own sshd or
/// kubelet on B would be cut off).
async fn node_ips() -> Result<(), BoxError> {
    node_setup()?;
    let (a, b): (IpAddr, IpAddr) = ("192.168.50.1".parse()?, "192.168.50.2".parse()?);
    let backend = SocketAddr::new("10.244.0.9".parse()?, 8080);
    let table = |node: IpAddr| -> ProxyTable {
        let mut t = one_service(
            VirtualKey {
                ip: node,
                protocol: Protocol::Tcp,
                port: 30080,
            },
            &[backend],
        );
        t.extend(one_service(
            VirtualKey {
                ip: "10.96.0.50".parse().unwrap(),
                protocol: Protocol::Tcp,
                port: 80,
            },
            &[backend],
        ));
        t
    };
    let mut sink = IpvsSink::connect(vec![a], Default::default()).await?;
    let first = table(a);
    sink.sync(&first).await?;
    check(sink.set_node_ips(&[b]), || {
        "the change was not noticed".into()
    })?;
    let second = table(b);
    sink.apply(&plan(&second, &first), &second).await?;
    let bound = sh(&format!("ip -br addr show {DUMMY}"))?;
    check(!bound.contains("192.168.50."), || {
        format!("a node address is bound to {DUMMY}: {bound}")
    })?;
    let nft = nft_elements()?;
    check(!nft.contains("192.168.50.2"), || {
        format!("the node's new address is in the ClusterIP sets:\n{nft}")
    })?;
    let listed = sh("ipvsadm -Ln")?;
    check(
        listed.contains("192.168.50.2:30080") && !listed.contains("192.168.50.1:30080"),
        || format!("the NodePort did not move:\n{listed}"),
    )?;
    sink.cleanup().await?;
    println!(
        "node addresses: the NodePort moved from {a} to {b}; {b} is not bound nor in the ClusterIP set"
    );
    Ok(())
}

// ---------------------------------------------------------------- masquerade

/// `--masquerade-all` and `--cluster-cidr` in the IPVS plane: the backend
/// sees the client's address or the node's, as the policy says, with each
/// policy written over the last one's table (as a restarted proxy does).
async fn masquerade() -> Result<(), BoxError> {
    use signpost_proxy::addresses::{Masquerade, parse_cidrs};
    node_setup()?;
    let backend = pod(1, true)?;
    let client = pod(100, false)?;
    std::thread::sleep(Duration::from_millis(300));
    let vip = SocketAddr::new("10.96.0.60".parse()?, 80);
    let table = one_service(
        VirtualKey {
            ip: vip.ip(),
            protocol: Protocol::Tcp,
            port: 80,
        },
        &[SocketAddr::new(backend.v4, 9090)],
    );
    let me = client.v4.to_string();
    let policies = [
        ("the default", Masquerade::default(), false),
        (
            "--masquerade-all",
            Masquerade {
                all: true,
                cluster_cidrs: Vec::new(),
            },
            true,
        ),
        (
            "--cluster-cidr with the client inside",
            Masquerade {
                all: false,
                cluster_cidrs: parse_cidrs("10.244.0.0/16,fd00:10:244::/56")?,
            },
            false,
        ),
        (
            "--cluster-cidr with the client outside",
            Masquerade {
                all: false,
                cluster_cidrs: parse_cidrs("10.99.0.0/16")?,
            },
            true,
        ),
    ];
    for (what, policy, masqueraded) in policies {
        let mut sink = IpvsSink::connect(Vec::new(), policy).await?;
        sink.sync(&table).await?;
        let reply =
            ask(&client.ns, vip, Protocol::Tcp)?.map_err(|e| format!("{what}: {vip}: {e:?}"))?;
        let peer = reply.split_once(' ').map(|(_, p)| p.to_owned());
        check(peer.is_some(), || format!("{what}: reply {reply:?}"))?;
        check(
            (peer.as_deref() != Some(me.as_str())) == masqueraded,
            || format!("{what}: the backend saw {peer:?}, the client is {me}"),
        )?;
        println!(
            "masquerade: {what}: the backend sees {}",
            peer.unwrap_or_default()
        );
    }
    IpvsSink::connect(Vec::new(), Masquerade::default())
        .await?
        .cleanup()
        .await?;
    Ok(())
}

// ---------------------------------------------------------------- drain

/// A table of one virtual service without affinity.
fn one_service(key: VirtualKey, backends: &[SocketAddr]) -> ProxyTable {
    [(
        key,
        VirtualService {
            backends: backends.iter().copied().collect(),
            affinity_timeout: None,
        },
    )]
    .into()
}

async fn drain() -> Result<(), BoxError> {
    node_setup()?;
    let pods: Vec<Pod> = (1..=2).map(|n| pod(n, true)).collect::<Result<_, _>>()?;
    let client = pod(100, false)?;
    std::thread::sleep(Duration::from_millis(300));
    let key = VirtualKey {
        ip: "10.96.0.1".parse()?,
        protocol: Protocol::Tcp,
        port: 80,
    };
    let b1: SocketAddr = "10.244.0.1:8080".parse()?;
    let b2: SocketAddr = "10.244.0.2:8080".parse()?;
    let table = |backends: &[SocketAddr]| one_service(key, backends);
    let mut sink = IpvsSink::connect(Vec::new(), Default::default()).await?;
    sink.sync(&table(&[b1])).await?;
    // A finished connection leaves an inactive IPVS connection entry (FIN/TIME_WAIT).
    let got = ask(&client.ns, SocketAddr::new(key.ip, key.port), Protocol::Tcp)?;
    check(got.as_deref() == Ok(pods[0].name.as_str()), || {
        format!("first request: {got:?}")
    })?;
    // b1 is removed, b2 added: b1 drains at weight 0 and takes no new connections.
    sink.sync(&table(&[b2])).await?;
    let listed = sh("ipvsadm -Ln")?;
    check(
        listed.contains("10.244.0.1:8080")
            && listed
                .lines()
                .any(|l| l.contains("10.244.0.1:8080") && l.split_whitespace().nth(3) == Some("0")),
        || format!("b1 should be draining at weight 0:\n{listed}"),
    )?;
    for _ in 0..4 {
        let got = ask(&client.ns, SocketAddr::new(key.ip, key.port), Protocol::Tcp)?;
        check(got.as_deref() == Ok(pods[1].name.as_str()), || {
            format!("new connection went to {got:?}")
        })?;
    }
    check(
        sink.finish_draining().await? == 0 && sink.draining() == 1,
        || "b1 has connection entries: it keeps draining".into(),
    )?;
    // Its time is up: deleted.
    sink.drain_timeout = Duration::ZERO;
    check(
        sink.finish_draining().await? == 1 && sink.draining() == 0,
        || "b1 should be deleted after the drain timeout".into(),
    )?;
    let listed = sh("ipvsadm -Ln")?;
    check(!listed.contains("10.244.0.1:8080"), || {
        format!("b1 still listed:\n{listed}")
    })?;
    // A destination without connections is deleted at the first check.
    sink.drain_timeout = signpost_proxy::ipvs::DRAIN_TIMEOUT;
    sink.sync(&table(&[b2, b1])).await?;
    sink.sync(&table(&[b2])).await?;
    check(sink.finish_draining().await? == 1, || {
        "an idle destination drains at once".into()
    })?;
    // PXY-11: a UDP flow (one source port) pinned to b1, then b1 removed.
    let ukey = VirtualKey {
        ip: "10.96.0.2".parse()?,
        protocol: Protocol::Udp,
        port: 53,
    };
    let utable = |backends: &[SocketAddr]| one_service(ukey, backends);
    let to = SocketAddr::new(ukey.ip, ukey.port);
    sink.sync(&utable(&[b1, b2])).await?;
    let answers = |port: u16, n: usize| -> Vec<String> {
        (0..n)
            .map(|_| match ask_from(&client.ns, port, to, Protocol::Udp) {
                Ok(Ok(name)) => name,
                other => format!("{other:?}"),
            })
            .collect()
    };
    let pinned = (41000..41100)
        .find(|p| answers(*p, 3).iter().all(|a| *a == pods[0].name))
        .ok_or("no source port stayed on pod-1")?;
    let entries_to = |b: SocketAddr| -> Result<usize, BoxError> {
        Ok(signpost_proxy::conntrack::Conntrack::open()?
            .entries(|e| e.protocol == 17 && e.orig_dst == to && e.reply_src == b)?
            .len())
    };
    let (stale, kept) = (entries_to(b1)?, entries_to(b2)?);
    check(stale >= 1, || "conntrack shows no UDP flow to b1".into())?;
    let have = sink.observed().await?;
    let (ops, _) = sink.sync(&utable(&[b2])).await?;
    let still = entries_to(b1)?;
    let metrics = signpost_proxy::metrics::Metrics::default();
    signpost_proxy::conntrack::forget_stale(&ops, &have, &metrics);
    let remaining = entries_to(b1)?;
    let deleted = metrics.conntrack_deleted.get();
    check(
        // IPVS may drop its own entries (expire_nodest_conn flushes them from a
        // work queue) between the count and Signpost's dump: at most `still`.
        deleted <= still as u64
            && remaining == 0
            && entries_to(b2)? == kept
            && metrics.conntrack_errors.get() == 0,
        || {
            format!(
                "deleted {deleted} of {stale} entries to b1 ({still} after the sync, {remaining} after forgetting, {} errors; ops {ops:?}); {kept} to b2 before",
                metrics.conntrack_errors.get()
            )
        },
    )?;
    let after = answers(pinned, 3);
    check(after.iter().all(|a| *a == pods[1].name), || {
        format!("the flow from port {pinned} after b1 left: {after:?}")
    })?;
    sink.sync(&ProxyTable::new()).await?;
    println!(
        "drain: a removed TCP backend took no new connections, stayed while its connections lived, and went at the timeout; an idle one went at once"
    );
    println!(
        "drain: UDP flow from port {pinned} moved to pod-2 after pod-1 left; of {stale} conntrack entries to pod-1, IPVS dropped {} with the destination and Signpost deleted {deleted}; {kept} to pod-2 kept",
        stale - still
    );
    Ok(())
}

// ---------------------------------------------------------------- e2e

/// `signpost proxy --mode ipvs` against the host's API server (through
/// qemu's restricted forward): the Service and slice written on the host
/// become IPVS state here, and real connections reach both Pods.
/// The proxy command: Signpost's, or upstream kube-proxy in IPVS mode.
fn proxy_command(which: &str) -> std::process::Command {
    let mut c;
    if which == "kube-proxy" {
        c = std::process::Command::new("/test/kube-proxy");
        c.args([
            "--kubeconfig=/test/kubeconfig",
            "--proxy-mode=ipvs",
            "--hostname-override=node-a",
            "--cluster-cidr=10.244.0.0/16",
            "--ipvs-scheduler=rr",
            "--metrics-bind-address=127.0.0.1:10249",
            "--healthz-bind-address=127.0.0.1:10256",
            "--conntrack-max-per-core=0",
            "--v=2",
        ]);
    } else {
        c = std::process::Command::new("/test/signpost");
        c.args([
            "--kubeconfig",
            "/test/kubeconfig",
            "proxy",
            "--mode",
            "ipvs",
            "--node-name",
            "node-a",
        ]);
    }
    c
}

async fn e2e(vip: IpAddr, port: u16, which: &str) -> Result<(), BoxError> {
    node_setup()?;
    let pods: Vec<Pod> = (1..=2).map(|n| pod(n, true)).collect::<Result<_, _>>()?;
    let client = pod(100, false)?;
    let log = std::fs::File::create("/tmp/proxy.log")?;
    let mut proxy = proxy_command(which)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let key = ServiceKey::Tuple {
        addr: vip,
        protocol: IProto::Tcp,
        port,
    };
    let mut ipvs = Ipvs::connect().await?;
    let t = Instant::now();
    let result: Result<(), BoxError> = async {
        loop {
            let has = ipvs.services().await?.iter().any(|s| s.key == key);
            if has && ipvs.destinations(&key).await?.len() == 2 {
                break;
            }
            if t.elapsed() > Duration::from_secs(90) {
                return Err(format!("no IPVS service {vip}:{port} with 2 destinations after 90 s").into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let synced = t.elapsed();
        let mut seen = BTreeSet::new();
        for _ in 0..6 {
            let got = ask(&client.ns, SocketAddr::new(vip, port), Protocol::Tcp)?;
            let name = got.map_err(|e| format!("{vip}:{port}: {e:?}"))?;
            check(pods.iter().any(|p| p.name == name), || format!("answered by {name}"))?;
            seen.insert(name);
        }
        check(seen.len() == 2, || format!("round robin reached only {seen:?}"))?;
        println!("e2e: {which} (ipvs) programmed {vip}:{port} from the API server in {synced:.1?}; connections reached {seen:?}");
        // A later change through the API server: pod-1 becomes not ready.
        use k8s_openapi::api::discovery::v1::EndpointSlice as KSlice;
        use kube::api::{Api, Patch, PatchParams};
        let api = signpost_harness::cluster::admin_client(std::path::Path::new("/test/kubeconfig")).await?;
        let patch = serde_json::json!({ "endpoints": [
            { "addresses": ["10.244.0.1"], "conditions": { "ready": false }, "nodeName": "node-a" },
            { "addresses": ["10.244.0.2"], "conditions": { "ready": true }, "nodeName": "node-a" },
        ]});
        let t1 = Instant::now();
        Api::<KSlice>::namespaced(api, "default")
            .patch("voy-1", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let pod2: IpAddr = "10.244.0.2".parse()?;
        loop {
            let live: Vec<IpAddr> = ipvs
                .destinations(&key)
                .await?
                .iter()
                .filter(|d| d.weight > 0)
                .map(|d| d.addr)
                .collect();
            if live == [pod2] {
                break;
            }
            if t1.elapsed() > Duration::from_secs(90) {
                return Err(format!("after pod-1 became not ready: live destinations {live:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let changed = t1.elapsed();
        for _ in 0..4 {
            let got = ask(&client.ns, SocketAddr::new(vip, port), Protocol::Tcp)?;
            check(got.as_deref() == Ok(pods[1].name.as_str()), || {
                format!("after pod-1 became not ready, answered by {got:?}")
            })?;
        }
        println!("e2e: {which} (ipvs) took pod-1 out {changed:.1?} after the slice write; new connections reach only pod-2");
        if which == "signpost" {
            // Issue 13: kill -9 and restart under load: connections keep
            // working (the kernel keeps the rules; the new proxy adopts them).
            let stop = std::sync::atomic::AtomicBool::new(false);
            let (ok, failed) = std::thread::scope(|scope| -> Result<(u64, Vec<String>), BoxError> {
                let load = scope.spawn(|| {
                    let (mut ok, mut failed) = (0u64, Vec::new());
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        match ask(&client.ns, SocketAddr::new(vip, port), Protocol::Tcp) {
                            Ok(Ok(name)) if name == pods[1].name => ok += 1,
                            other => failed.push(format!("{other:?}")),
                        }
                    }
                    (ok, failed)
                });
                std::thread::sleep(Duration::from_secs(2));
                let _ = proxy.kill();
                let _ = proxy.wait();
                let log = std::fs::File::options().append(true).open("/tmp/proxy.log")?;
                proxy = proxy_command(which).stdout(log.try_clone()?).stderr(log).spawn()?;
                // Until the new proxy has listed and synced, then a while more.
                std::thread::sleep(Duration::from_secs(8));
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                Ok(load.join().map_err(|_| "the load thread panicked")?)
            })?;
            check(failed.is_empty() && ok > 0, || {
                format!("across kill -9 and restart: {ok} connections answered, {} failed: {:?}", failed.len(), failed.iter().take(3).collect::<Vec<_>>())
            })?;
            println!("e2e: {which} (ipvs) killed (-9) and restarted under load: {ok} connections answered, 0 failed");
        }
        Ok(())
    }
    .await;
    let _ = proxy.kill();
    let _ = proxy.wait();
    if result.is_err() {
        println!(
            "{}",
            std::fs::read_to_string("/tmp/proxy.log").unwrap_or_default()
        );
    }
    result
}

// ---------------------------------------------------------------- side by side

/// One proxy (`signpost` or `kube-proxy`, IPVS) over `n` Services × 5
/// endpoints written on the host: time from start until the kernel holds
/// all of them, then from one EndpointSlice write (from here, through the
/// API server) until the kernel shows it.
async fn side_by_side(n: usize, which: &str) -> Result<(), BoxError> {
    use k8s_openapi::api::core::v1::Service as KService;
    use k8s_openapi::api::discovery::v1::EndpointSlice as KSlice;
    use kube::api::{Api, Patch, PatchParams};
    node_setup()?;
    let client =
        signpost_harness::cluster::admin_client(std::path::Path::new("/test/kubeconfig")).await?;
    let vip: IpAddr = Api::<KService>::namespaced(client.clone(), "default")
        .get("bench-0")
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .ok_or("bench-0 has no ClusterIP")?
        .parse()?;
    let key = ServiceKey::Tuple {
        addr: vip,
        protocol: IProto::Tcp,
        port: 80,
    };
    let mut ipvs = Ipvs::connect().await?;
    let log = std::fs::File::create(format!("/tmp/{which}.log"))?;
    let t0 = Instant::now();
    let mut proxy = proxy_command(which)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    // kube-proxy's first sync under TCG grows faster than linearly (279 s
    // at 1k Services): past the cap the run reports how far it got.
    const CAP: Duration = Duration::from_secs(900);
    let result: Result<(f64, Option<f64>), BoxError> = async {
        loop {
            let count = ipvs
                .services()
                .await?
                .iter()
                .filter(|s| matches!(s.key, ServiceKey::Tuple { addr: IpAddr::V4(a), port: 80, .. } if signpost_harness::cluster::in_service_cidr(a)))
                .count();
            if count >= n {
                break;
            }
            if t0.elapsed() > CAP {
                println!(
                    "SIDE {which} services={n} capped=1 reached={count} full_s={:.2}",
                    t0.elapsed().as_secs_f64()
                );
                return Ok((t0.elapsed().as_secs_f64(), None));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Then until the proxy reports a completed sync (kube-proxy adds
        // virtual services before its ipset and iptables work is done).
        let (port, metric) = if which == "kube-proxy" {
            (10249, "kubeproxy_sync_proxy_rules_duration_seconds_count")
        } else {
            (10281, "signpost_proxy_sync_duration_seconds_count")
        };
        while signpost_harness::process::local_metric(port, metric).unwrap_or(0.0) < 1.0 {
            if t0.elapsed() > CAP {
                println!(
                    "SIDE {which} services={n} capped=1 reached={n} full_s={:.2}",
                    t0.elapsed().as_secs_f64()
                );
                return Ok((t0.elapsed().as_secs_f64(), None));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let full = t0.elapsed().as_secs_f64();
        // Wait for the destinations of the last Services too.
        loop {
            if ipvs.destinations(&key).await?.len() == 5 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let moved: IpAddr = format!("10.200.{}.1", if which == "kube-proxy" { 1 } else { 2 }).parse()?;
        let patch = serde_json::json!({ "endpoints": [
            { "addresses": [moved.to_string()], "conditions": { "ready": true }, "nodeName": "node-a" },
            { "addresses": ["10.128.0.1"], "conditions": { "ready": true }, "nodeName": "node-a" },
            { "addresses": ["10.128.0.2"], "conditions": { "ready": true }, "nodeName": "node-a" },
            { "addresses": ["10.128.0.3"], "conditions": { "ready": true }, "nodeName": "node-a" },
            { "addresses": ["10.128.0.4"], "conditions": { "ready": true }, "nodeName": "node-a" },
        ]});
        let t1 = Instant::now();
        Api::<KSlice>::namespaced(client.clone(), "default")
            .patch("bench-0-0", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        loop {
            let dests = ipvs.destinations(&key).await?;
            if dests.iter().any(|d| d.addr == moved && d.weight > 0) {
                break;
            }
            if t1.elapsed() > Duration::from_secs(300) {
                return Err(format!("{which}: the moved endpoint never showed").into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok((full, Some(t1.elapsed().as_secs_f64() * 1000.0)))
    }
    .await;
    let _ = proxy.kill();
    let _ = proxy.wait();
    match result {
        Ok((full, Some(incr))) => {
            println!("SIDE {which} services={n} full_s={full:.2} change_ms={incr:.1}");
            Ok(())
        }
        // Capped: the SIDE line is printed.
        Ok((_, None)) => Ok(()),
        Err(e) => {
            println!(
                "{}",
                std::fs::read_to_string(format!("/tmp/{which}.log")).unwrap_or_default()
            );
            Err(e)
        }
    }
}

// ---------------------------------------------------------------- cleanup

async fn cleanup() -> Result<(), BoxError> {
    node_setup()?;
    let mut sink = IpvsSink::connect(Vec::new(), Default::default()).await?;
    sink.sync(&fixed_table()).await?;
    drop(sink);
    check(sh("ipvsadm -Ln")?.lines().nth(3).is_some(), || {
        "nothing programmed before cleanup".into()
    })?;
    sh("/test/signpost proxy --mode ipvs --cleanup")?;
    let listed = sh("ipvsadm -Ln")?;
    check(listed.lines().count() == 3, || {
        format!("IPVS services left:\n{listed}")
    })?;
    let tables = sh("nft list tables")?;
    check(!tables.contains(NFT_TABLE), || {
        format!("nft table left: {tables}")
    })?;
    check(sh(&format!("ip link show {DUMMY}")).is_err(), || {
        format!("{DUMMY} left")
    })?;
    println!("cleanup: no IPVS service, no nft table, no {DUMMY}");
    Ok(())
}

// ---------------------------------------------------------------- bench

fn big_table(n: u32, bump: u32) -> ProxyTable {
    let mut t = ProxyTable::new();
    for i in 0..n {
        let ip = IpAddr::from([10, 96, (i / 250) as u8, (i % 250) as u8 + 1]);
        let backends = (0..5u32)
            .map(|e| {
                // `bump` moves one endpoint of the first Service: one endpoint change.
                let k = i * 5 + e + if i == 0 && e == 0 { bump } else { 0 };
                SocketAddr::new(
                    IpAddr::from([10, 128 + (k >> 16) as u8, (k >> 8) as u8, k as u8]),
                    8080,
                )
            })
            .collect();
        t.insert(
            VirtualKey {
                ip,
                protocol: Protocol::Tcp,
                port: 80,
            },
            VirtualService {
                backends,
                affinity_timeout: None,
            },
        );
    }
    t
}

async fn bench(sizes: &[u32]) -> Result<(), BoxError> {
    node_setup()?;
    let mut report = Vec::new();
    for &n in sizes {
        let mut sink = IpvsSink::connect(Vec::new(), Default::default()).await?;
        sink.sync(&ProxyTable::new()).await?;
        let want = big_table(n, 0);
        let t = Instant::now();
        let (_, full) = sink.sync(&want).await?;
        let full_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let observed = sink.observed().await?;
        let readback_s = t.elapsed().as_secs_f64();
        check(observed == want, || {
            "read-back differs after the full sync".into()
        })?;
        // One endpoint change, planned against the cached table (as the controller does).
        let changed = big_table(n, 5 * n + 1000);
        let ops = plan(&changed, &want);
        let t = Instant::now();
        let incr = sink.apply(&ops, &changed).await?;
        let incr_ms = t.elapsed().as_secs_f64() * 1000.0;
        let incr_ipvs_ms = incr.kernel_time.as_secs_f64() * 1000.0;
        let incr_nft_ms = incr.nft_time.as_secs_f64() * 1000.0;
        println!(
            "bench ipvs: {n} services x 5: full sync {full_s:.2} s ({} ipvs + {} rtnetlink messages; nft {:.2} s of it), read-back {readback_s:.2} s; one endpoint change {incr_ms:.2} ms ({incr_ipvs_ms:.2} ms IPVS, {incr_nft_ms:.2} ms nft set elements for the touched addresses, one netlink batch), {} ipvs messages ({} ops)",
            full.ipvs_messages,
            full.link_messages,
            full.nft_time.as_secs_f64(),
            incr.ipvs_messages,
            ops.len()
        );
        report.push(format!(
            "{{\"services\":{n},\"full_sync_s\":{full_s:.3},\"readback_s\":{readback_s:.3},\"incremental_ms\":{incr_ms:.3},\"incremental_ipvs_ms\":{incr_ipvs_ms:.3},\"incremental_nft_ms\":{incr_nft_ms:.3},\"messages_per_change\":{}}}",
            incr.ipvs_messages
        ));
        sink.sync(&ProxyTable::new()).await?;
    }
    println!("BENCH-JSON [{}]", report.join(","));
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let section = args.first().cloned().unwrap_or_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = match section.as_str() {
        "genl" => rt.block_on(genl()),
        "dataplane" => dataplane(flag("--cases").and_then(|c| c.parse().ok()).unwrap_or(6)),
        "restart" => rt.block_on(restart()),
        "drain" => rt.block_on(drain()),
        "nodeips" => rt.block_on(node_ips()),
        "masquerade" => rt.block_on(masquerade()),
        "e2e" => match flag("--vip").and_then(|v| v.parse().ok()) {
            Some(vip) => rt.block_on(e2e(
                vip,
                flag("--port").and_then(|p| p.parse().ok()).unwrap_or(80),
                &flag("--proxy").unwrap_or_else(|| "signpost".into()),
            )),
            None => Err("e2e needs --vip".into()),
        },
        "cleanup" => rt.block_on(cleanup()),
        "side" => rt.block_on(side_by_side(
            flag("--services")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000),
            &flag("--proxy").unwrap_or_else(|| "signpost".into()),
        )),
        "bench" => {
            let sizes: Vec<u32> = flag("--sizes")
                .unwrap_or_else(|| "1000,10000".into())
                .split(',')
                .filter_map(|s| s.parse().ok())
                .collect();
            rt.block_on(bench(&sizes))
        }
        other => Err(format!(
            "unknown section {other:?} (genl, dataplane, restart, drain, nodeips, masquerade, cleanup, bench)"
        )
        .into()),
    };
    match result {
        Ok(()) => println!("PASS {section}"),
        Err(e) => {
            println!("FAIL {section}: {e}");
            let _ =
                run("ipvsadm", ["-Ln"]).map(|o| println!("{}", String::from_utf8_lossy(&o.stdout)));
            std::process::exit(1);
        }
    }
}
