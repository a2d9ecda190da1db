//! A cluster in a `kindest/node` container, through testcontainers (cargo
//! feature `kind`). It needs a Docker engine and the kind node image, which
//! Signpost's CI machines do not have: this backend is compiled in CI
//! (`cargo check -p signpost-harness --features kind`) but only run by people
//! with Docker. It boots the node the way kind does (`kubeadm init` inside
//! the privileged container), installs the image's bundled CNI, and hands
//! out an admin kubeconfig pointing at the mapped API port on 127.0.0.1.

use std::time::Duration;

use testcontainers::core::{ExecCommand, IntoContainerPort, Mount, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

use crate::{Error, Result};

/// The kind node image tag matching the pinned Kubernetes version.
pub const DEFAULT_NODE_TAG: &str = "v1.37.2";

/// A running kind node.
pub struct KindCluster {
    container: ContainerAsync<GenericImage>,
    kubeconfig: String,
}

impl std::fmt::Debug for KindCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KindCluster")
            .field("container", &self.container.id())
            .finish()
    }
}

fn docker(context: &str) -> impl FnOnce(testcontainers::TestcontainersError) -> Error + '_ {
    move |e| Error::Command {
        command: context.to_owned(),
        stderr: e.to_string(),
    }
}

impl KindCluster {
    /// Starts a single-node cluster from `kindest/node:<tag>`.
    pub async fn start(tag: &str) -> Result<Self> {
        let image = GenericImage::new("kindest/node", tag)
            .with_exposed_port(6443.tcp())
            .with_wait_for(WaitFor::seconds(2));
        let container = image
            .with_privileged(true)
            .with_mount(Mount::tmpfs_mount("/run"))
            .with_mount(Mount::tmpfs_mount("/tmp"))
            .with_startup_timeout(Duration::from_secs(120))
            .start()
            .await
            .map_err(docker("starting kindest/node"))?;
        let cluster = KindCluster {
            container,
            kubeconfig: String::new(),
        };
        cluster
            .exec(&[
                "kubeadm",
                "init",
                "--ignore-preflight-errors=all",
                "--pod-network-cidr=10.244.0.0/16",
                "--service-cidr=10.96.0.0/12",
                "--apiserver-cert-extra-sans=127.0.0.1,localhost",
            ])
            .await?;
        let kc = "--kubeconfig=/etc/kubernetes/admin.conf";
        cluster
            .exec(&[
                "kubectl",
                kc,
                "apply",
                "-f",
                "/kind/manifests/default-cni.yaml",
            ])
            .await?;
        cluster
            .exec(&[
                "kubectl",
                kc,
                "taint",
                "nodes",
                "--all",
                "node-role.kubernetes.io/control-plane-",
            ])
            .await?;
        let admin = cluster.exec(&["cat", "/etc/kubernetes/admin.conf"]).await?;
        let port = cluster
            .container
            .get_host_port_ipv4(6443)
            .await
            .map_err(docker("reading the API port"))?;
        let kubeconfig = admin
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("server:") {
                    format!("    server: https://127.0.0.1:{port}")
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        Ok(KindCluster {
            kubeconfig,
            ..cluster
        })
    }

    async fn exec(&self, cmd: &[&str]) -> Result<String> {
        let line = cmd.join(" ");
        let mut res = self
            .container
            .exec(ExecCommand::new(cmd.iter().copied()))
            .await
            .map_err(docker(&line))?;
        let out = res.stdout_to_vec().await.map_err(docker(&line))?;
        match res.exit_code().await.map_err(docker(&line))? {
            Some(0) | None => Ok(String::from_utf8_lossy(&out).into_owned()),
            Some(code) => Err(Error::Command {
                command: line,
                stderr: format!("exit code {code}"),
            }),
        }
    }

    /// The admin kubeconfig (YAML), pointing at 127.0.0.1.
    pub fn kubeconfig(&self) -> &str {
        &self.kubeconfig
    }
}
