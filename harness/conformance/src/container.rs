//! Pods that run as containers on the rig's real node (`--cluster
//! local-kubelet`): created through the API server with `nodeName`, run by
//! kubelet and containerd, their output read from the kubelet's container
//! log. Their resolv.conf is the kubelet's, not the harness's.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod as KPod;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use signpost_harness::cluster::{BUSYBOX_IMAGE, NODE_NAME};

use crate::live::Live;
use crate::{Error, Result};

/// How a container Pod ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRun {
    /// `Succeeded` or `Failed`.
    pub phase: String,
    /// The Pod's address.
    pub pod_ip: Option<String>,
    /// What the container wrote (stdout and stderr, in order).
    pub output: String,
}

/// A busybox Pod on the real node running `script` under `sh -c`,
/// labelled `app=<app>`, declaring port `http` 8080/TCP.
fn container_pod(ns: &str, name: &str, app: &str, script: &str, restart: &str) -> Result<KPod> {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": ns, "labels": { "app": app } },
        "spec": {
            "nodeName": NODE_NAME,
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": 0,
            "enableServiceLinks": false,
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "main",
                "image": BUSYBOX_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", script],
                "ports": [{ "name": "http", "containerPort": 8080, "protocol": "TCP" }],
            }],
        },
    }))
    .map_err(|e| Error::Scenario(format!("container Pod {name}: {e}")))
}

/// Why a Pod is not there yet: its container states and conditions.
fn pod_state(status: &k8s_openapi::api::core::v1::PodStatus) -> String {
    let containers = status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|s| s.state.as_ref())
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join("; ");
    format!(
        "phase {:?}, containers: {containers}; conditions: {:?}",
        status.phase, status.conditions
    )
}

impl Live {
    fn require_node(&self) -> Result<&signpost_harness::cluster::KubeletNode> {
        self.cluster().kubelet_node().ok_or_else(|| {
            Error::Usage("container Pods need the real node (--cluster local-kubelet)".into())
        })
    }

    /// Creates `pod` and polls it until `done` says what it waited for, at
    /// most `timeout` (then an error naming `waiting_for` and the Pod's state).
    fn create_and_wait<T: Send>(
        &self,
        pod: KPod,
        timeout: Duration,
        waiting_for: &str,
        done: impl Fn(&KPod) -> Option<T> + Send,
    ) -> Result<T> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let deadline = Instant::now() + timeout;
        self.api().block_on(|c| async move {
            let pods: Api<KPod> = Api::namespaced(c, &ns);
            pods.create(&PostParams::default(), &pod)
                .await
                .map_err(|e| Error::Api(format!("creating Pod {name}: {e}")))?;
            loop {
                let p = pods
                    .get(&name)
                    .await
                    .map_err(|e| Error::Api(e.to_string()))?;
                if let Some(t) = done(&p) {
                    return Ok(t);
                }
                if Instant::now() > deadline {
                    return Err(Error::Observe(format!(
                        "Pod {ns}/{name} not {waiting_for} after {timeout:?}: {}",
                        pod_state(&p.status.unwrap_or_default())
                    )));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })?
    }

    /// Starts a long-running container Pod `ns/name` (`app=<app>`,
    /// restartPolicy Always) and waits until it is Ready; its address.
    pub fn start_container(
        &self,
        ns: &str,
        name: &str,
        app: &str,
        script: &str,
        timeout: Duration,
    ) -> Result<String> {
        self.require_node()?;
        let pod = container_pod(ns, name, app, script, "Always")?;
        self.create_and_wait(pod, timeout, "Ready", |p| {
            let status = p.status.as_ref()?;
            status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True")
                .then(|| status.pod_ip.clone())?
        })
    }

    /// Runs `script` in a Pod `ns/name` on the real node (`app=<name>`,
    /// restartPolicy Never) and waits until it ends, at most `timeout`.
    pub fn run_container(
        &self,
        ns: &str,
        name: &str,
        script: &str,
        timeout: Duration,
    ) -> Result<ContainerRun> {
        let node = self.require_node()?;
        let pod = container_pod(ns, name, name, script, "Never")?;
        let (phase, pod_ip, uid) = self.create_and_wait(pod, timeout, "ended", |p| {
            let status = p.status.as_ref()?;
            let phase = status.phase.clone()?;
            (phase == "Succeeded" || phase == "Failed").then(|| {
                (
                    phase,
                    status.pod_ip.clone(),
                    p.metadata.uid.clone().unwrap_or_default(),
                )
            })
        })?;
        let log = node
            .pod_logs()
            .join(format!("{ns}_{name}_{uid}"))
            .join("main")
            .join("0.log");
        let text = std::fs::read_to_string(&log)
            .map_err(|e| Error::Io(format!("{}: {e}", log.display())))?;
        Ok(ContainerRun {
            phase,
            pod_ip,
            output: cri_log_text(&text),
        })
    }

    /// Deletes a container Pod (at once: grace period 0).
    pub fn delete_container_pod(&self, ns: &str, name: &str) -> Result<()> {
        let (ns, name) = (ns.to_owned(), name.to_owned());
        self.api().block_on(|c| async move {
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            };
            Api::<KPod>::namespaced(c, &ns)
                .delete(&name, &dp)
                .await
                .map(|_| ())
                .map_err(|e| Error::Api(e.to_string()))
        })?
    }
}

/// The text of a CRI container log: each line is `<time> <stream> <tag>
/// <text>`, tag `F` ending a line and `P` a part of one.
pub fn cri_log_text(log: &str) -> String {
    let mut out = String::new();
    for line in log.lines() {
        let mut f = line.splitn(4, ' ');
        let (Some(_time), Some(_stream), Some(tag)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        out.push_str(f.next().unwrap_or(""));
        if tag != "P" {
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::cri_log_text;

    #[test]
    fn cri_logs_join_partial_lines_and_keep_empty_ones() {
        let log = "2026-12-07T14:06:00.4Z stdout F nameserver 10.0.0.1\n\
                   2026-12-07T14:06:00.5Z stdout P answered \n\
                   2026-12-07T14:06:00.6Z stdout F by voyager-1\n\
                   2026-12-07T14:06:00.7Z stderr F \n";
        assert_eq!(
            cri_log_text(log),
            "nameserver 10.0.0.1\nanswered by voyager-1\n\n"
        );
    }
}
