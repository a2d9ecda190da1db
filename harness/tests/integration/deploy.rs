//! deploy/ on a real API server: the whole kustomize base passes a
//! server-side dry-run, and each component's ServiceAccount token can do
//! what its component needs and nothing more (SelfSubjectAccessReview, as
//! the API server's authorizer answers it).

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use signpost_harness::LocalCluster;
use signpost_harness::cluster::admin_client;
use signpost_harness::deploy::{self, Component};

use crate::require_rig;

#[test]
fn the_deploy_base_is_accepted_by_the_api_server() {
    require_rig!();
    let cluster = LocalCluster::new("deploy-dry").unwrap().start().unwrap();
    let docs = deploy::kustomization(&deploy::deploy_dir().join("base")).unwrap();
    let docs: Vec<_> = docs.into_iter().map(|(_, d)| d).collect();
    // The RBAC first (for real), so the workloads' ServiceAccounts exist.
    for c in Component::ALL {
        let (file, text) = c.rbac();
        let rbac = deploy::parse(file, text).unwrap();
        cluster
            .block_on(|client| async move { deploy::apply(&client, &rbac, false).await })
            .unwrap()
            .unwrap();
    }
    let accepted = cluster
        .block_on(|client| async move { deploy::apply(&client, &docs, true).await })
        .unwrap()
        .unwrap();
    eprintln!("server-side dry-run accepted: {}", accepted.join(", "));
    for want in [
        "DaemonSet/signpost-proxy",
        "Deployment/signpost-dns",
        "Service/kube-dns",
        "Deployment/signpost-endpoints",
    ] {
        assert!(accepted.iter().any(|a| a == want), "{want} not applied");
    }
    // A manifest the API server refuses is an error, not a silent skip.
    let bad = deploy::parse(
        "bad.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: bad\n  namespace: kube-system\nspec:\n  replicas: -1\n",
    )
    .unwrap();
    let refused = cluster
        .block_on(|client| async move { deploy::apply(&client, &bad, true).await })
        .unwrap();
    assert!(
        refused.is_err(),
        "a Deployment without a template was accepted"
    );
}

/// (verb, group, resource, namespace, subresource/name) asked of one token.
type Ask = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

fn allowed(cluster: &LocalCluster<signpost_harness::Running>, c: Component, ask: Ask) -> bool {
    let kc = cluster.component_kubeconfig(c).unwrap();
    cluster
        .block_on(|_| async move {
            let client = admin_client(&kc).await.unwrap();
            let (verb, group, resource, namespace, name) = ask;
            let (resource, sub) = match resource.split_once('/') {
                Some((r, s)) => (r, Some(s.to_owned())),
                None => (resource, None),
            };
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        verb: Some(verb.into()),
                        group: Some(group.into()),
                        resource: Some(resource.into()),
                        subresource: sub,
                        namespace: (!namespace.is_empty()).then(|| namespace.into()),
                        name: (!name.is_empty()).then(|| name.into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            Api::<SelfSubjectAccessReview>::all(client)
                .create(&PostParams::default(), &review)
                .await
                .unwrap()
                .status
                .map(|s| s.allowed)
                .unwrap_or(false)
        })
        .unwrap()
}

#[test]
fn each_component_token_has_exactly_its_deploy_rights() {
    require_rig!();
    let cluster = LocalCluster::new("deploy-rbac").unwrap().start().unwrap();
    let d = "discovery.k8s.io";
    let c = "coordination.k8s.io";
    let cases: &[(Component, Ask, bool)] = &[
        (Component::Proxy, ("watch", "", "services", "", ""), true),
        (
            Component::Proxy,
            ("list", d, "endpointslices", "", ""),
            true,
        ),
        (Component::Proxy, ("watch", "", "nodes", "", ""), true),
        (
            Component::Proxy,
            ("create", d, "endpointslices", "default", ""),
            false,
        ),
        (Component::Proxy, ("list", "", "secrets", "", ""), false),
        (Component::Proxy, ("list", "", "pods", "", ""), false),
        (Component::Dns, ("watch", "", "namespaces", "", ""), true),
        (Component::Dns, ("list", d, "endpointslices", "", ""), true),
        (Component::Dns, ("list", "", "pods", "", ""), false),
        (
            Component::Dns,
            ("update", "", "services", "default", ""),
            false,
        ),
        (Component::Endpoints, ("watch", "", "pods", "", ""), true),
        (
            Component::Endpoints,
            ("delete", d, "endpointslices", "default", ""),
            true,
        ),
        (
            Component::Endpoints,
            ("update", "", "services/finalizers", "default", ""),
            true,
        ),
        (
            Component::Endpoints,
            ("update", c, "leases", "kube-system", "signpost-endpoints"),
            true,
        ),
        (
            Component::Endpoints,
            (
                "update",
                c,
                "leases",
                "kube-system",
                "kube-controller-manager",
            ),
            false,
        ),
        (
            Component::Endpoints,
            ("create", c, "leases", "default", ""),
            false,
        ),
        (
            Component::Endpoints,
            ("update", "", "services", "default", ""),
            false,
        ),
        (
            Component::Endpoints,
            ("get", "", "secrets", "kube-system", ""),
            false,
        ),
    ];
    let mut wrong = Vec::new();
    for &(component, ask, want) in cases {
        if allowed(&cluster, component, ask) != want {
            wrong.push(format!("{component:?} {ask:?}: want allowed={want}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "RBAC differs from deploy/:\n{}",
        wrong.join("\n")
    );
}
