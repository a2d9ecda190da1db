//! The pod fabric: real namespaces on a bridge, real TCP and UDP between
//! them, each reply naming the Pod that answered.

use std::net::SocketAddr;
use std::time::Duration;

use signpost_harness::LocalCluster;

use crate::{echo_bin, require_rig};

#[test]
fn a_client_pod_reaches_a_server_pod_over_tcp_and_udp() {
    require_rig!();
    let cluster = LocalCluster::new("fabric")
        .unwrap()
        .echo_binary(echo_bin())
        .start()
        .unwrap();
    let server = cluster
        .pod("voyager-0")
        .label("app", "voy")
        .start()
        .unwrap();
    let client = cluster
        .pod("enterprise-0")
        .label("app", "ent")
        .start()
        .unwrap();
    let to = SocketAddr::from((server.ip(), 8080));
    let timeout = Duration::from_secs(5);
    assert_eq!(client.tcp_request(to, timeout).unwrap(), "voyager-0");
    assert_eq!(client.udp_request(to, timeout).unwrap(), "voyager-0");
    let to6 = SocketAddr::from((server.ip6(), 8080));
    assert_eq!(client.tcp_request(to6, timeout).unwrap(), "voyager-0");
    assert_eq!(client.udp_request(to6, timeout).unwrap(), "voyager-0");
    // And the other way round, so the reply is not a constant.
    let back = SocketAddr::from((client.ip(), 8080));
    assert_eq!(server.tcp_request(back, timeout).unwrap(), "enterprise-0");
    // A port nobody serves is refused, not silently answered.
    assert!(
        client
            .tcp_request(SocketAddr::from((server.ip(), 9)), timeout)
            .is_err()
    );
}
