//! A real node inside the node namespace: containerd (its CRI plugin, the
//! bridge CNI plugin on the rig's pod bridge) and upstream kubelet, so a
//! Pod given `nodeName: node-a` runs as containers whose resolv.conf the
//! kubelet writes. Images come from the machine, never from a registry:
//! a pause image and a busybox image are built from Debian's static
//! busybox as OCI layouts and imported before the kubelet starts.
//!
//! This host drops CAP_SYS_RESOURCE, so no process may lower its
//! oom_score_adj; the CRI plugin's `restrict_oom_score_adj` keeps the
//! sandbox's -998 (and a Guaranteed Pod's -997) at containerd's own value
//! instead of failing every sandbox in runc ("can't get final child's PID
//! from pipe: EOF", runc's nsexec dying on the write).
//!
//! Teardown (in `Drop`, also after a panic): kubelet first, then every
//! sandbox stopped and removed through CRI (which tears down its network
//! namespace and veth), containerd, any shim left, and the mounts under the
//! node's directory.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::image::{BUSYBOX, ImageSpec};
use crate::netns::{self, NetNs, run};
use crate::process::Daemon;
use crate::{Error, Result};

use super::{BRIDGE, NODE_IP, NODE_NAME, POD_GATEWAY};

/// The image every sandbox runs (busybox sleeping), built here.
pub const PAUSE_IMAGE: &str = "signpost.local/pause:1";
/// A busybox image (`/bin/busybox` and `/bin/sh`), built here.
pub const BUSYBOX_IMAGE: &str = "signpost.local/busybox:1";
/// Where kubelet-run Pods get addresses: the top of the pod bridge's /16,
/// away from the rig's own Pods, which count up from 10.244.0.2.
pub const KUBELET_POD_RANGE: (Ipv4Addr, Ipv4Addr) = (
    Ipv4Addr::new(10, 244, 240, 2),
    Ipv4Addr::new(10, 244, 255, 254),
);
/// The CNI plugins from Debian's containernetworking-plugins.
const CNI_BIN: &str = "/usr/lib/cni";

/// containerd and kubelet of the node, stopped in `Drop`.
#[derive(Debug)]
pub struct KubeletNode {
    kubelet: Option<Daemon>,
    containerd: Option<Daemon>,
    dir: PathBuf,
    socket: PathBuf,
    crictl: PathBuf,
    /// Teardown for a signal that ends the run before `Drop` (netns::on_teardown).
    hook: u64,
}

/// What the node needs from its cluster.
#[derive(Debug)]
pub(crate) struct NodeConfig<'a> {
    pub ns: &'a NetNs,
    pub dir: &'a Path,
    pub logs: &'a Path,
    pub kubeconfig: &'a Path,
    pub upstream_dir: &'a Path,
    /// The address kubelet writes as `nameserver` (cluster DNS).
    pub dns: Ipv4Addr,
}

impl KubeletNode {
    /// Starts containerd, imports the images, starts kubelet and waits
    /// for its health endpoint.
    pub(crate) fn start(cfg: &NodeConfig<'_>) -> Result<Self> {
        let dir = cfg.dir.join("node");
        for d in ["cni", "images", "pod-logs", "kubelet", "kubelet-pki"] {
            std::fs::create_dir_all(dir.join(d))
                .map_err(Error::io(format!("creating {}", dir.join(d).display())))?;
        }
        let kubelet_bin = crate::upstream::binary_in(cfg.upstream_dir, "kubelet")?;
        let crictl = crate::upstream::binary_in(cfg.upstream_dir, "crictl")?;
        for (path, what) in [
            ("/usr/bin/containerd", "containerd (apt: containerd)"),
            ("/usr/bin/ctr", "ctr (apt: containerd)"),
            ("/usr/sbin/runc", "runc (apt: runc)"),
            (BUSYBOX, "static busybox (apt: busybox-static)"),
            (
                "/usr/lib/cni/bridge",
                "CNI plugins (apt: containernetworking-plugins)",
            ),
        ] {
            if !Path::new(path).is_file() {
                return Err(Error::MissingPackage {
                    what: what.into(),
                    path: PathBuf::from(path),
                });
            }
        }
        let socket = dir.join("containerd.sock");
        let hook = {
            let (crictl, socket, dir) = (crictl.clone(), socket.clone(), dir.clone());
            netns::on_teardown(move || {
                // The kubelet first, or it starts again what is removed.
                let root = format!("--root-dir={}", dir.join("kubelet").display());
                for pid in pids_with_arg(&root) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                remove_pods(&crictl, &socket);
                kill_shims_and_unmount(&socket, &dir);
            })
        };
        let mut node = KubeletNode {
            kubelet: None,
            containerd: None,
            dir: dir.clone(),
            socket: socket.clone(),
            crictl,
            hook,
        };
        write(
            &dir.join("containerd.toml"),
            &containerd_config(&dir, &socket),
        )?;
        write(
            &dir.join("cni/10-signpost-pods.conflist"),
            &cni_config(&dir),
        )?;
        node.containerd = Some(Daemon::spawn_entered(
            cfg.ns,
            "containerd",
            Path::new("/usr/bin/containerd"),
            &[format!(
                "--config={}",
                dir.join("containerd.toml").display()
            )],
            cfg.logs.join("containerd.log"),
        )?);
        node.wait("containerd", Duration::from_secs(30), |n| {
            n.crictl(&["info"]).is_ok()
        })?;
        node.import(&ImageSpec::new(PAUSE_IMAGE).busybox()?.entrypoint(&[
            "/bin/busybox",
            "sleep",
            "2147483647",
        ]))?;
        node.import(
            &ImageSpec::new(BUSYBOX_IMAGE)
                .busybox()?
                .entrypoint(&["/bin/sh"]),
        )?;
        // No host name server reaches a Pod: kubelet copies only search
        // and options from here for dnsPolicy Default.
        write(&dir.join("host-resolv.conf"), "")?;
        write(
            &dir.join("kubelet.yaml"),
            &kubelet_config(&dir, &socket, cfg.dns),
        )?;
        let args = vec![
            format!("--config={}", dir.join("kubelet.yaml").display()),
            format!("--kubeconfig={}", cfg.kubeconfig.display()),
            format!("--root-dir={}", dir.join("kubelet").display()),
            format!("--cert-dir={}", dir.join("kubelet-pki").display()),
            format!("--hostname-override={NODE_NAME}"),
            format!("--node-ip={NODE_IP}"),
            "--v=2".into(),
        ];
        node.kubelet = Some(Daemon::spawn_entered(
            cfg.ns,
            "kubelet",
            &kubelet_bin,
            &args,
            cfg.logs.join("kubelet.log"),
        )?);
        node.wait("kubelet /healthz", Duration::from_secs(60), |n| {
            n.kubelet_healthy(cfg.ns)
        })?;
        Ok(node)
    }

    fn wait(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ok: impl FnMut(&Self) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            for d in [&mut self.containerd, &mut self.kubelet]
                .into_iter()
                .flatten()
            {
                d.check_running()?;
            }
            if ok(self) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: what.into(),
                    secs: timeout.as_secs(),
                    logs: self.dir.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn kubelet_healthy(&self, ns: &NetNs) -> bool {
        ns.within(|| crate::process::local_get(10248, "/healthz"))
            .ok()
            .flatten()
            .is_some_and(|(code, body)| code == 200 && body.trim() == "ok")
    }

    /// Builds `image` and imports it into the node's containerd, where the
    /// kubelet finds it without a pull.
    pub fn import(&self, image: &ImageSpec) -> Result<()> {
        let tar = image.build(&self.dir.join("images"))?;
        self.ctr(&["images", "import", &tar.display().to_string()])?;
        // The layout is unpacked into containerd's store: the tar is not needed again.
        let _ = std::fs::remove_file(&tar);
        Ok(())
    }

    /// `crictl ARGS` against this node's containerd.
    pub fn crictl(&self, args: &[&str]) -> Result<String> {
        let endpoint = format!("unix://{}", self.socket.display());
        let common = [
            "--runtime-endpoint",
            &endpoint,
            "--image-endpoint",
            &endpoint,
            "--timeout",
            "20s",
        ];
        text(run(&self.crictl, common.iter().chain(args)))
    }

    /// `ctr -n k8s.io ARGS` against this node's containerd.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        let socket = self.socket.display().to_string();
        let common = ["--address", &socket, "--namespace", "k8s.io"];
        text(run("/usr/bin/ctr", common.iter().chain(args)))
    }

    /// Where the kubelet writes container logs
    /// (`<namespace>_<pod>_<uid>/<container>/<restart>.log`).
    pub fn pod_logs(&self) -> PathBuf {
        self.dir.join("pod-logs")
    }

    /// The kubelet's log.
    pub fn kubelet_log(&self) -> Option<&Path> {
        self.kubelet.as_ref().map(Daemon::log)
    }
}

impl Drop for KubeletNode {
    fn drop(&mut self) {
        netns::forget_teardown(self.hook);
        if let Some(mut k) = self.kubelet.take() {
            k.stop(Duration::from_secs(5));
        }
        if self.containerd.is_some() {
            remove_pods(&self.crictl, &self.socket);
        }
        if let Some(mut c) = self.containerd.take() {
            c.stop(Duration::from_secs(5));
        }
        kill_shims_and_unmount(&self.socket, &self.dir);
    }
}

/// Every sandbox stopped and removed through CRI: each one's network
/// namespace and veth go too.
fn remove_pods(crictl: &Path, socket: &Path) {
    let endpoint = format!("unix://{}", socket.display());
    if let Err(e) = run(
        crictl,
        [
            "--runtime-endpoint",
            &endpoint,
            "--timeout",
            "20s",
            "rmp",
            "--all",
            "--force",
        ],
    ) {
        eprintln!("signpost-harness: removing the node's Pods: {e}");
    }
}

/// Shims leave containerd's process group (each names our socket); then
/// the mounts under the node's directory.
fn kill_shims_and_unmount(socket: &Path, dir: &Path) {
    for pid in pids_with_arg(&socket.display().to_string()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    unmount_under(dir);
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(Error::io(format!("writing {}", path.display())))
}

/// A command's standard output, from [`run`].
fn text(out: Result<std::process::Output>) -> Result<String> {
    out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// containerd with its own root, state, socket and runc root under `dir`
/// (nothing shared with a containerd the machine may run).
fn containerd_config(dir: &Path, socket: &Path) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
[grpc]
  address = "{sock}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{d}/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      Root = "{d}/runc"
"#,
        sock = socket.display(),
    )
}

/// The bridge plugin on the rig's pod bridge, addresses from
/// [`KUBELET_POD_RANGE`], the bridge's address as gateway.
fn cni_config(dir: &Path) -> String {
    let (start, end) = KUBELET_POD_RANGE;
    serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "signpost-pods",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": false,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "dataDir": dir.join("cni-ipam").display().to_string(),
                    "ranges": [[{
                        "subnet": "10.244.0.0/16",
                        "rangeStart": start.to_string(),
                        "rangeEnd": end.to_string(),
                        "gateway": POD_GATEWAY.to_string(),
                    }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                },
            },
            { "type": "loopback" },
        ],
    })
    .to_string()
}

/// kubelet on this host: cgroup v1 allowed, cgroupfs without QoS cgroups,
/// no eviction thresholds (the disk is shared), health on 127.0.0.1:10248,
/// the API on the node address with anonymous access (the rig's API
/// server reaches it for logs), cluster DNS at `dns`.
fn kubelet_config(dir: &Path, socket: &Path, dns: Ipv4Addr) -> String {
    let d = dir.display();
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
oomScoreAdj: 0
containerRuntimeEndpoint: unix://{sock}
clusterDNS: ["{dns}"]
clusterDomain: cluster.local
resolvConf: {d}/host-resolv.conf
podLogsDir: {d}/pod-logs
address: {NODE_IP}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
evictionHard:
  memory.available: "0%"
  nodefs.available: "0%"
  nodefs.inodesFree: "0%"
  imagefs.available: "0%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
localStorageCapacityIsolation: true
serializeImagePulls: false
"#,
        sock = socket.display(),
    )
}

/// Processes whose command line has `arg` as one argument.
fn pids_with_arg(arg: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == arg.as_bytes()))
        })
        .collect()
}

/// Lazily unmounts everything mounted below `dir` (rootfs overlays, shm,
/// kubelet volumes), deepest first.
fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = format!("{}/", dir.display());
    let mut points: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
    }
}
