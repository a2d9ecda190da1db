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

/// A slice object for `svc` (name `Some` to replace an existing slice,
/// `None` to create one with `generateName`).
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
        None => metadata["generateName"] = json!(format!("{svc_name}-")),
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
        assert_eq!(obj.metadata.generate_name.as_deref(), Some("voy-"));
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
