//! Model slices to API objects: labels (EPS-13), owner reference, ports and
//! endpoints in the shape kube-controller-manager writes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service as KService;
use k8s_openapi::api::discovery::v1::EndpointSlice as KSlice;
use serde_json::json;
use signpost_model::cluster::{AddressFamily, Endpoint, EndpointPort, Protocol};

use crate::{Error, MANAGED_BY, Result};

fn family(f: AddressFamily) -> &'static str {
    match f {
        AddressFamily::V4 => "IPv4",
        AddressFamily::V6 => "IPv6",
    }
}

fn protocol(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

fn endpoint(ep: &Endpoint, namespace: &str) -> serde_json::Value {
    let mut v = json!({
        "addresses": [ep.address.to_string()],
        "conditions": { "ready": ep.ready, "serving": ep.serving, "terminating": ep.terminating },
    });
    if let Some(h) = &ep.hostname {
        v["hostname"] = json!(h);
    }
    if let Some(n) = &ep.node {
        v["nodeName"] = json!(n);
    }
    if let Some(z) = &ep.zone {
        v["zone"] = json!(z);
    }
    if let Some(p) = &ep.pod {
        v["targetRef"] = json!({ "kind": "Pod", "namespace": namespace, "name": p });
    }
    v
}

/// The labels every slice of `service` carries (EPS-13).
pub fn labels(service: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("kubernetes.io/service-name".to_owned(), service.to_owned()),
        (
            "endpointslice.kubernetes.io/managed-by".to_owned(),
            MANAGED_BY.to_owned(),
        ),
    ])
}

/// The name a new slice is created with: the Service's name and a hash of
/// what the slice holds (the Service's UID, the address family, the ports
/// and the endpoints' addresses). Not `generateName`: two controllers that
/// both believe they lead and plan the same create from the same view
/// write the same name, so the second gets 409 AlreadyExists and re-reads,
/// instead of adding a duplicate slice. A later slice of the same Service
/// holds other endpoints, hence another name.
pub fn create_name(
    svc_name: &str,
    uid: &str,
    fam: AddressFamily,
    ports: &[EndpointPort],
    endpoints: &[Endpoint],
) -> String {
    // FNV-1a (64 bit): the same in every replica and every version.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes.iter().chain([&0xff]) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    feed(uid.as_bytes());
    feed(family(fam).as_bytes());
    for p in ports {
        feed(p.name.as_bytes());
        feed(&p.port.to_be_bytes());
        feed(protocol(p.protocol).as_bytes());
    }
    let mut addrs: Vec<_> = endpoints.iter().map(|e| e.address).collect();
    addrs.sort_unstable();
    for a in addrs {
        feed(a.to_string().as_bytes());
    }
    // 10 hex digits after at most 63 characters: well inside 253.
    format!("{svc_name}-{:010x}", h >> 24)
}

/// A slice object for `svc` (name `Some` to replace an existing slice,
/// `None` to create one named by [`create_name`]).
pub fn slice_object(
    svc: &KService,
    name: Option<(&str, &str)>,
    fam: AddressFamily,
    ports: &[EndpointPort],
    endpoints: &[Endpoint],
) -> Result<KSlice> {
    let svc_name = svc.metadata.name.clone().unwrap_or_default();
    let namespace = svc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let mut metadata = json!({
        "namespace": namespace,
        "labels": labels(&svc_name),
        "ownerReferences": [{
            "apiVersion": "v1", "kind": "Service", "name": svc_name,
            "uid": svc.metadata.uid.clone().unwrap_or_default(),
            "controller": true, "blockOwnerDeletion": true,
        }],
    });
    match name {
        Some((n, rv)) => {
            metadata["name"] = json!(n);
            metadata["resourceVersion"] = json!(rv);
        }
        None => {
            let uid = svc.metadata.uid.as_deref().unwrap_or_default();
            metadata["name"] = json!(create_name(&svc_name, uid, fam, ports, endpoints));
        }
    }
    let ports: Vec<_> = ports
        .iter()
        .map(|p| json!({ "name": p.name, "port": p.port, "protocol": protocol(p.protocol) }))
        .collect();
    let eps: Vec<_> = endpoints.iter().map(|e| endpoint(e, &namespace)).collect();
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": metadata,
        "addressType": family(fam),
        "ports": ports,
        "endpoints": eps,
    }))
    .map_err(|source| Error::Build {
        what: format!("EndpointSlice for {namespace}/{svc_name}"),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use signpost_model::cluster::EndpointSlice;

    #[test]
    fn objects_round_trip_through_the_model() {
        let svc: KService = serde_json::from_value(json!({
            "metadata": { "name": "voy", "namespace": "default", "uid": "u-1" },
        }))
        .unwrap();
        let ep = Endpoint {
            address: "10.244.0.5".parse().unwrap(),
            ready: false,
            serving: true,
            terminating: true,
            hostname: Some("h".into()),
            node: Some("node-a".into()),
            zone: Some("z1".into()),
            pod: Some("voyager-0".into()),
        };
        let ports = [EndpointPort {
            name: "http".into(),
            port: 8080,
            protocol: Protocol::Tcp,
        }];
        let mut obj = slice_object(
            &svc,
            None,
            AddressFamily::V4,
            &ports,
            std::slice::from_ref(&ep),
        )
        .unwrap();
        // Named by its content, not generateName (issue 13, finding 1).
        assert_eq!(obj.metadata.generate_name, None);
        let name = obj.metadata.name.clone().unwrap();
        assert!(name.starts_with("voy-") && name.len() == 14, "{name}");
        let again = slice_object(
            &svc,
            None,
            AddressFamily::V4,
            &ports,
            std::slice::from_ref(&ep),
        )
        .unwrap();
        assert_eq!(
            again.metadata.name,
            Some(name.clone()),
            "the same create, the same name"
        );
        let mut other = ep.clone();
        other.address = "10.244.0.6".parse().unwrap();
        let different = slice_object(&svc, None, AddressFamily::V4, &ports, &[other]).unwrap();
        assert_ne!(
            different.metadata.name,
            Some(name),
            "other endpoints, another name"
        );
        assert_eq!(
            obj.metadata.owner_references.as_ref().unwrap()[0].uid,
            "u-1"
        );
        obj.metadata.name = Some("voy-abc".into());
        let back = EndpointSlice::try_from(&obj).unwrap();
        assert_eq!(back.service, "voy");
        assert_eq!(back.endpoints, vec![ep]);
        assert_eq!(back.ports, ports);
    }
}
