//! `deploy/`'s manifests on a test cluster, so that components are tested as
//! they are deployed: each one's RBAC is applied (server-side apply) and the
//! component runs with a token of exactly its ServiceAccount, never the
//! admin's; a verb missing from `deploy/` fails the tests. The whole base can
//! be validated by the API server (server-side dry-run).
//!
//! The RBAC files are compiled in, so a rig inside the kernel VM needs no
//! copy of the tree. The kustomization is read as far as this rig needs:
//! its `resources` list (no patches or generators are used in the base).

use std::path::{Path, PathBuf};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use serde_json::Value;

use crate::error::{Error, Result};

/// The namespace the components and their ServiceAccounts live in.
pub const NAMESPACE: &str = "kube-system";

/// How long a minted token lives (the rig's runs are far shorter).
const TOKEN_SECONDS: i64 = 24 * 3600;

/// A Signpost component deployed by `deploy/base`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    /// `signpost proxy` (DaemonSet).
    Proxy,
    /// `signpost dns` (Deployment behind `kube-dns`).
    Dns,
    /// `signpost endpoints` (Deployment, leader-elected).
    Endpoints,
}

impl Component {
    /// Every component.
    pub const ALL: [Component; 3] = [Component::Proxy, Component::Dns, Component::Endpoints];

    /// Its ServiceAccount in [`NAMESPACE`].
    pub fn service_account(self) -> &'static str {
        match self {
            Component::Proxy => "signpost-proxy",
            Component::Dns => "signpost-dns",
            Component::Endpoints => "signpost-endpoints",
        }
    }

    /// Its RBAC manifest (ServiceAccount, roles, bindings), as in `deploy/`.
    pub fn rbac(self) -> (&'static str, &'static str) {
        match self {
            Component::Proxy => (
                "deploy/base/proxy/rbac.yaml",
                include_str!("../../deploy/base/proxy/rbac.yaml"),
            ),
            Component::Dns => (
                "deploy/base/dns/rbac.yaml",
                include_str!("../../deploy/base/dns/rbac.yaml"),
            ),
            Component::Endpoints => (
                "deploy/base/endpoints/rbac.yaml",
                include_str!("../../deploy/base/endpoints/rbac.yaml"),
            ),
        }
    }
}

/// The YAML documents of a manifest (empty documents dropped).
pub fn parse(file: &str, text: &str) -> Result<Vec<Value>> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|e| Error::Manifest(format!("{file}: {e}")))?;
    let docs: Vec<Value> = docs.into_iter().filter(|d| !d.is_null()).collect();
    for d in &docs {
        if d.get("apiVersion").and_then(Value::as_str).is_none()
            || d.get("kind").and_then(Value::as_str).is_none()
            || d.pointer("/metadata/name")
                .and_then(Value::as_str)
                .is_none()
        {
            return Err(Error::Manifest(format!(
                "{file}: a document without apiVersion, kind or metadata.name"
            )));
        }
    }
    Ok(docs)
}

/// The repository's `deploy/` (next to this crate).
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every document of a kustomization's `resources`, with its file.
pub fn kustomization(dir: &Path) -> Result<Vec<(PathBuf, Value)>> {
    let path = dir.join("kustomization.yaml");
    let text = std::fs::read_to_string(&path).map_err(Error::io("reading a kustomization"))?;
    let k: Value = serde_saphyr::from_str(&text)
        .map_err(|e| Error::Manifest(format!("{}: {e}", path.display())))?;
    let resources = k
        .get("resources")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::Manifest(format!("{}: no resources list", path.display())))?;
    let mut out = Vec::new();
    for r in resources {
        let file = dir.join(r.as_str().ok_or_else(|| {
            Error::Manifest(format!("{}: a resource is not a path", path.display()))
        })?);
        let text = std::fs::read_to_string(&file)
            .map_err(Error::io(format!("reading {}", file.display())))?;
        for doc in parse(&file.display().to_string(), &text)? {
            out.push((file.clone(), doc));
        }
    }
    Ok(out)
}

/// Server-side applies `docs` (field manager `signpost-rig`), or only asks
/// the API server to validate them with `dry_run`. Returns `Kind/name` of each.
pub async fn apply(client: &kube::Client, docs: &[Value], dry_run: bool) -> Result<Vec<String>> {
    let mut applied = Vec::new();
    for doc in docs {
        let api_version = doc["apiVersion"].as_str().unwrap_or_default();
        let kind = doc["kind"].as_str().unwrap_or_default();
        let name = doc["metadata"]["name"].as_str().unwrap_or_default();
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, caps) = kube::discovery::pinned_kind(client, &gvk).await?;
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Cluster => Api::all_with(client.clone(), &resource),
            Scope::Namespaced => {
                let ns = doc["metadata"]["namespace"].as_str().unwrap_or(NAMESPACE);
                Api::namespaced_with(client.clone(), ns, &resource)
            }
        };
        let mut params = PatchParams::apply("signpost-rig").force();
        params.dry_run = dry_run;
        api.patch(name, &params, &Patch::Apply(doc))
            .await
            .map_err(|e| Error::Manifest(format!("{kind}/{name}: {e}")))?;
        applied.push(format!("{kind}/{name}"));
    }
    Ok(applied)
}

/// Applies `component`'s RBAC and writes a kubeconfig at `out` for the
/// cluster `admin` points at, authenticated by a fresh token of the
/// component's ServiceAccount (TokenRequest), and nothing else.
pub async fn component_kubeconfig(
    client: &kube::Client,
    admin: &Path,
    component: Component,
    out: &Path,
) -> Result<PathBuf> {
    let (file, text) = component.rbac();
    apply(client, &parse(file, text)?, false).await?;
    let sa = component.service_account();
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(TOKEN_SECONDS),
            ..Default::default()
        }),
        ..Default::default()
    };
    let token = Api::<ServiceAccount>::namespaced(client.clone(), NAMESPACE)
        .create_token_request(sa, &PostParams::default(), &request)
        .await?
        .status
        .and_then(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::Kubeconfig(format!("no token issued for {sa}")))?;

    let config = kube::config::Kubeconfig::read_from(admin)
        .map_err(|e| Error::Kubeconfig(format!("{}: {e}", admin.display())))?;
    let context = config
        .current_context
        .as_deref()
        .and_then(|c| config.contexts.iter().find(|n| n.name == c))
        .and_then(|n| n.context.as_ref())
        .ok_or_else(|| Error::Kubeconfig(format!("{}: no current context", admin.display())))?;
    let cluster = config
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .ok_or_else(|| {
            Error::Kubeconfig(format!(
                "{}: no cluster {}",
                admin.display(),
                context.cluster
            ))
        })?;
    // JSON is YAML: every kubeconfig reader takes it.
    let text = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": sa, "context": {"cluster": cluster.name, "user": sa, "namespace": NAMESPACE}}],
        "current-context": sa,
    });
    std::fs::write(out, serde_json::to_vec_pretty(&text).unwrap_or_default())
        .map_err(Error::io(format!("writing {}", out.display())))?;
    Ok(out.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_component_has_its_service_account_and_a_binding_to_it() {
        for c in Component::ALL {
            let (file, text) = c.rbac();
            let docs = parse(file, text).unwrap();
            let sa = c.service_account();
            assert!(
                docs.iter()
                    .any(|d| d["kind"] == "ServiceAccount" && d["metadata"]["name"] == sa),
                "{file}: no ServiceAccount {sa}"
            );
            assert!(
                docs.iter().any(|d| d["kind"] == "ClusterRoleBinding"
                    && d["subjects"][0]["name"] == sa
                    && d["subjects"][0]["namespace"] == NAMESPACE),
                "{file}: nothing binds {sa}"
            );
        }
    }

    #[test]
    fn the_kustomization_lists_readable_manifests() {
        let docs = kustomization(&deploy_dir().join("base")).unwrap();
        for kind in ["DaemonSet", "Deployment", "Service", "ClusterRole", "Role"] {
            assert!(docs.iter().any(|(_, d)| d["kind"] == kind), "no {kind}");
        }
    }

    #[test]
    fn a_document_without_a_name_is_an_error() {
        assert!(parse("x.yaml", "apiVersion: v1\nkind: ConfigMap\n").is_err());
        assert!(parse("x.yaml", "a: [").is_err());
    }
}
