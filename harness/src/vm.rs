//! The kernel VM rig: a Debian cloud kernel with IPVS, booted under qemu TCG
//! with no network device, running a script from an initramfs and talking to
//! the host only over the serial console.
//!
//! [`image`] builds (once, cached under `~/.cache/signpost/vm/<kernel>-<rig>`)
//! the kernel from Debian's `linux-image-*-cloud-amd64` package and a base
//! initramfs: bash as `/init`, iproute2, ipvsadm, nft, kmod and the netfilter,
//! IPVS, veth and dummy modules with their dependencies (`modprobe -d
//! --show-depends`, then `depmod -b`). [`run`] appends the binaries under
//! test and a script as a second cpio archive, boots, and returns the
//! console and the script's exit code.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// Bump when the base image's contents change.
const RIG_VERSION: &str = "10";

/// Userland programs copied into the base image (with their libraries).
const PROGRAMS: &[&str] = &[
    "bash",
    "ip",
    "ipvsadm",
    "nft",
    "kmod",
    "mount",
    "mkdir",
    "ln",
    "cat",
    "sleep",
    "ls",
    "rm",
    "sysctl",
    "grep",
    "ps",
    "timeout",
    "env",
    "seq",
    // For upstream kube-proxy in IPVS mode (iptables-nft, ipset, conntrack).
    "xtables-nft-multi",
    "ipset",
    "conntrack",
];

/// Module trees included with their dependency closure.
const MODULES: &[&str] = &[
    "ip_set",
    "ip_set_hash_ip",
    "ip_set_hash_ipport",
    "ip_set_hash_ipportip",
    "ip_set_hash_ipportnet",
    "ip_set_hash_net",
    "ip_set_bitmap_port",
    "xt_set",
    "xt_mark",
    "xt_comment",
    "xt_conntrack",
    "xt_MASQUERADE",
    "xt_addrtype",
    "xt_nat",
    "xt_tcpudp",
    "xt_multiport",
    "xt_statistic",
    "xt_physdev",
    // kube-proxy's IPVS filter rejects with iptables' REJECT target (without
    // it the whole filter table's restore fails, and ClusterIPs reach the node).
    "ipt_REJECT",
    "ip6t_REJECT",
    "virtio_pci",
    "virtio_net",
    "ip_vs",
    "ip_vs_rr",
    "ip_vs_wrr",
    "ip_vs_sh",
    "ip_vs_lc",
    "nf_tables",
    "nft_masq",
    "nft_chain_nat",
    "nft_nat",
    "nft_reject_inet",
    "nft_reject_ipv4",
    "nft_reject_ipv6",
    "nft_ct",
    "nft_fib_inet",
    "nft_compat",
    "nf_conntrack",
    "nf_nat",
    "veth",
    "dummy",
    // The conformance harness's node: the pod bridge, bridged traffic through the IP hooks.
    "bridge",
    "br_netfilter",
    "nf_conntrack_netlink",
    "nft_numgen",
    "nft_hash",
    "nft_limit",
];

/// A built kernel and base initramfs.
#[derive(Debug, Clone)]
pub struct Image {
    /// The kernel image.
    pub kernel: PathBuf,
    /// The base initramfs (gzip cpio).
    pub base_initrd: PathBuf,
    /// The kernel release (`6.1.0-…-cloud-amd64`).
    pub release: String,
}

fn cache_root() -> PathBuf {
    std::env::var_os("SIGNPOST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/signpost")
        })
        .join("vm")
}

fn sh(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.output().map_err(Error::io(format!("running {what}")))?;
    if !out.status.success() {
        return Err(Error::Command {
            command: what.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The kernel package: `$SIGNPOST_VM_KERNEL_PKG`, else what the
/// `linux-image-cloud-amd64` meta package depends on.
fn kernel_package() -> Result<String> {
    if let Ok(p) = std::env::var("SIGNPOST_VM_KERNEL_PKG") {
        return Ok(p);
    }
    let ask = || {
        sh(
            Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]),
            "apt-cache depends linux-image-cloud-amd64",
        )
    };
    let deps = match ask() {
        Ok(d) => d,
        Err(_) => {
            sh(
                Command::new("apt-get").args(["update", "-qq"]),
                "apt-get update",
            )?;
            ask()?
        }
    };
    deps.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_owned)
        .ok_or_else(|| Error::Command {
            command: "apt-cache depends linux-image-cloud-amd64".into(),
            stderr: "no linux-image dependency".into(),
        })
}

/// Copies `bin` and the shared libraries `ldd` names into `root`, keeping paths.
pub fn copy_with_libs(bin: &Path, dest_in_root: &Path, root: &Path) -> Result<()> {
    let dest = root.join(dest_in_root.strip_prefix("/").unwrap_or(dest_in_root));
    if let Some(d) = dest.parent() {
        std::fs::create_dir_all(d).map_err(Error::io(format!("creating {}", d.display())))?;
    }
    std::fs::copy(bin, &dest).map_err(Error::io(format!("copying {}", bin.display())))?;
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .map_err(Error::io("running ldd"))?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-linux-x86-64.so.2 (0x…)`
        let path = line
            .split("=>")
            .nth(1)
            .unwrap_or(line)
            .split_whitespace()
            .next()
            .unwrap_or("");
        if !path.starts_with('/') {
            continue;
        }
        let lib = Path::new(path);
        let target = root.join(path.trim_start_matches('/'));
        if target.exists() {
            continue;
        }
        if let Some(d) = target.parent() {
            std::fs::create_dir_all(d).map_err(Error::io(format!("creating {}", d.display())))?;
        }
        std::fs::copy(lib, &target).map_err(Error::io(format!("copying {path}")))?;
    }
    Ok(())
}

fn which(program: &str) -> Result<PathBuf> {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(dir).join(program);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(Error::MissingBinary {
        name: program.to_owned(),
        dir: PathBuf::from("/usr/sbin:/usr/bin (install it: ci/bootstrap)"),
    })
}

fn cpio_gz(dir: &Path, out: &Path) -> Result<()> {
    let script = format!(
        "cd {} && find . -print0 | cpio --null -o -H newc --quiet | gzip -1 > {}",
        dir.display(),
        out.display()
    );
    sh(Command::new("bash").args(["-c", &script]), "cpio | gzip").map(drop)
}

const INIT: &str = r#"#!/bin/bash
# Signpost VM init: mount, load modules, run /test/run.sh, report, power off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /run /tmp /var /run/netns
mount -t tmpfs tmp /run
mkdir -p /run/netns
mount -t tmpfs tmp /tmp
ln -sf /run /var/run
# nft reads /dev/stdin; bash process substitution uses /dev/fd.
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
echo /sbin/modprobe > /proc/sys/kernel/modprobe
for m in ip_vs ip_vs_rr nf_conntrack nf_conntrack_netlink nf_tables veth dummy; do modprobe $m || echo "SIGNPOST-VM: modprobe $m failed"; done
ip link set lo up
# A network device exists only when the host asked for user networking
# (restricted: it reaches nothing but the host's explicit forwards).
modprobe virtio_pci 2>/dev/null; modprobe virtio_net 2>/dev/null
for i in $(seq 1 50); do ip link show eth0 >/dev/null 2>&1 && break; sleep 0.1; done
if ip link show eth0 >/dev/null 2>&1; then
  ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && echo "SIGNPOST-VM: eth0 10.0.2.15/24 (the test namespace is 10.0.2.2)"
fi
echo 1 > /proc/sys/kernel/sysrq
echo "SIGNPOST-VM: booted $(cat /proc/sys/kernel/osrelease)"
cd /test
bash /test/run.sh
status=$?
# Keep kernel messages off the console while the marker is written.
echo 1 > /proc/sys/kernel/printk
echo "SIGNPOST-VM-EXIT $status"
sleep 0.2
echo o > /proc/sysrq-trigger
sleep 5
"#;

/// Builds the image, or returns the cached one.
pub fn image() -> Result<Image> {
    let pkg = kernel_package()?;
    let release = pkg.trim_start_matches("linux-image-").to_owned();
    let dir = cache_root().join(format!("{release}-{RIG_VERSION}"));
    let kernel = dir.join("vmlinuz");
    let base_initrd = dir.join("base.cpio.gz");
    let image = Image {
        kernel: kernel.clone(),
        base_initrd: base_initrd.clone(),
        release: release.clone(),
    };
    if dir.join("ready").exists() {
        return Ok(image);
    }
    let started = Instant::now();
    eprintln!("vm rig: building the image for {pkg} in {}", dir.display());
    let _ = std::fs::remove_dir_all(&dir);
    let pkgdir = dir.join("pkg");
    std::fs::create_dir_all(&pkgdir).map_err(Error::io("creating the vm cache"))?;
    let download = || {
        sh(
            Command::new("apt-get")
                .current_dir(&pkgdir)
                .args(["download", &pkg]),
            &format!("apt-get download {pkg}"),
        )
    };
    if download().is_err() {
        // Stale or missing package lists on a fresh machine.
        sh(
            Command::new("apt-get").args(["update", "-qq"]),
            "apt-get update",
        )?;
        download()?;
    }
    let deb = std::fs::read_dir(&pkgdir)
        .map_err(Error::io("listing the package dir"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| Error::Command {
            command: format!("apt-get download {pkg}"),
            stderr: "no .deb".into(),
        })?;
    let unpacked = pkgdir.join("root");
    sh(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked),
        "dpkg-deb -x",
    )?;
    std::fs::copy(unpacked.join(format!("boot/vmlinuz-{release}")), &kernel)
        .map_err(Error::io("copying the kernel"))?;
    sh(
        Command::new("depmod")
            .arg("-b")
            .arg(&unpacked)
            .arg(&release),
        "depmod (package tree)",
    )?;

    // The root: modules (closure of MODULES), programs, init.
    let root = dir.join("root");
    let mut files = std::collections::BTreeSet::new();
    for m in MODULES {
        let deps = sh(
            Command::new("modprobe").arg("-d").arg(&unpacked).args([
                "-S",
                &release,
                "--show-depends",
                m,
            ]),
            &format!("modprobe --show-depends {m}"),
        )?;
        for line in deps.lines() {
            if let Some(path) = line.strip_prefix("insmod ") {
                files.insert(path.split_whitespace().next().unwrap_or("").to_owned());
            }
        }
    }
    for f in &files {
        let rel = Path::new(f)
            .strip_prefix(&unpacked)
            .map_err(|_| Error::Command {
                command: "module path".into(),
                stderr: f.clone(),
            })?;
        let target = root.join(rel);
        std::fs::create_dir_all(target.parent().unwrap_or(&root))
            .map_err(Error::io("creating module dirs"))?;
        std::fs::copy(f, &target).map_err(Error::io(format!("copying {f}")))?;
    }
    for meta in [
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        let from = unpacked.join(format!("lib/modules/{release}/{meta}"));
        if from.exists() {
            std::fs::copy(&from, root.join(format!("lib/modules/{release}/{meta}")))
                .map_err(Error::io("copying module metadata"))?;
        }
    }
    // Debian's tree is /lib/modules (usrmerge makes /lib a link to usr/lib on the host).
    sh(
        Command::new("depmod").arg("-b").arg(&root).arg(&release),
        "depmod (image tree)",
    )?;
    for p in PROGRAMS {
        let bin = which(p)?;
        copy_with_libs(&bin, &bin, &root)?;
    }
    // iptables-nft dispatches on its name; its extensions are dlopen()ed.
    let usr_sbin = root.join("usr/sbin");
    std::fs::create_dir_all(&usr_sbin).map_err(Error::io("creating usr/sbin"))?;
    for name in [
        "iptables",
        "iptables-save",
        "iptables-restore",
        "ip6tables",
        "ip6tables-save",
        "ip6tables-restore",
        "iptables-nft",
        "ip6tables-nft",
    ] {
        let _ = std::os::unix::fs::symlink("xtables-nft-multi", usr_sbin.join(name));
    }
    let xt = Path::new("/usr/lib/x86_64-linux-gnu/xtables");
    if xt.is_dir() {
        let dest = root.join("usr/lib/x86_64-linux-gnu/xtables");
        std::fs::create_dir_all(&dest).map_err(Error::io("creating xtables dir"))?;
        for e in std::fs::read_dir(xt)
            .map_err(Error::io("listing xtables"))?
            .flatten()
        {
            let _ = std::fs::copy(e.path(), dest.join(e.file_name()));
        }
    }
    let sbin = root.join("sbin");
    std::fs::create_dir_all(&sbin).map_err(Error::io("creating sbin"))?;
    let kmod = which("kmod")?;
    for alias in ["modprobe", "insmod", "lsmod", "depmod"] {
        std::os::unix::fs::symlink(&kmod, sbin.join(alias)).map_err(Error::io("linking kmod"))?;
    }
    for d in [
        "proc", "sys", "dev", "run", "tmp", "test", "etc", "usr/bin", "usr/sbin",
    ] {
        std::fs::create_dir_all(root.join(d)).map_err(Error::io("creating dirs"))?;
    }
    // usrmerge: /bin, /lib and /lib64 are links into /usr on Debian.
    for (link, to) in [("bin", "usr/bin"), ("lib64", "usr/lib64")] {
        if !root.join(link).exists() {
            let _ = std::os::unix::fs::symlink(to, root.join(link));
        }
    }
    if root.join("usr/lib").exists() && !root.join("lib").exists() {
        let _ = std::os::unix::fs::symlink("usr/lib", root.join("lib"));
    }
    std::fs::write(root.join("init"), INIT).map_err(Error::io("writing init"))?;
    sh(
        Command::new("chmod").arg("+x").arg(root.join("init")),
        "chmod init",
    )?;
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/bash\n")
        .map_err(Error::io("writing passwd"))?;
    // ipset and iptables name protocols (getprotobyname).
    for f in ["etc/protocols", "etc/services"] {
        let from = Path::new("/").join(f);
        if from.is_file() {
            std::fs::copy(&from, root.join(f)).map_err(Error::io(format!("copying /{f}")))?;
        }
    }
    cpio_gz(&root, &base_initrd)?;
    std::fs::write(dir.join("ready"), &pkg).map_err(Error::io("marking ready"))?;
    eprintln!(
        "vm rig: image ready in {:.1?} ({} modules)",
        started.elapsed(),
        files.len()
    );
    Ok(image)
}

/// What a VM run printed and how its script exited.
#[derive(Debug, Clone)]
pub struct Output {
    /// The serial console.
    pub console: String,
    /// The script's exit code (`None` if the VM never reported one).
    pub code: Option<i32>,
    /// How long from qemu start to power-off.
    pub elapsed: Duration,
}

impl Output {
    /// Whether the script ran and exited 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// User networking for a VM that must reach a server of the test: qemu
/// runs inside `netns` (a namespace of the test with no route out), and
/// the guest (10.0.2.15) reaches that namespace's `127.0.0.1:<port>` as
/// `10.0.2.2:<port>`. Nothing else is reachable: the namespace has only
/// loopback and the test's own devices. (qemu's `guestfwd` carries one
/// connection and `restrict=on` forbids the host alias, so this is the
/// containment instead.)
#[derive(Debug)]
pub struct Forwards<'a> {
    /// Where qemu runs (its user networking is contained by it).
    pub netns: &'a crate::netns::NetNs,
}

/// Boots `image` with `files` (host path → path in the VM, libraries
/// included) and `/test/run.sh` = `script`; waits at most `timeout`. The
/// VM has no network device.
pub fn run(
    image: &Image,
    files: &[(PathBuf, &str)],
    script: &str,
    timeout: Duration,
) -> Result<Output> {
    run_with(image, files, script, timeout, None)
}

/// [`run`], with restricted user networking when `forwards` is given.
pub fn run_with(
    image: &Image,
    files: &[(PathBuf, &str)],
    script: &str,
    timeout: Duration,
    forwards: Option<Forwards<'_>>,
) -> Result<Output> {
    run_observed(image, files, script, timeout, forwards, |_| {})
}

/// [`run_with`], calling `on_line` with each console line as it arrives
/// (for progress of long guest programs).
pub fn run_observed(
    image: &Image,
    files: &[(PathBuf, &str)],
    script: &str,
    timeout: Duration,
    forwards: Option<Forwards<'_>>,
    mut on_line: impl FnMut(&str),
) -> Result<Output> {
    let qemu = which("qemu-system-x86_64")?;
    let qemu = qemu.as_path();
    let work = tempfile::tempdir().map_err(Error::io("creating a vm work dir"))?;
    let extra = work.path().join("extra");
    std::fs::create_dir_all(extra.join("test")).map_err(Error::io("creating /test"))?;
    for (host, guest) in files {
        copy_with_libs(host, Path::new(guest), &extra)?;
    }
    std::fs::write(extra.join("test/run.sh"), script).map_err(Error::io("writing run.sh"))?;
    let extra_gz = work.path().join("extra.cpio.gz");
    cpio_gz(&extra, &extra_gz)?;
    let initrd = work.path().join("initrd.cpio.gz");
    let mut all = std::fs::read(&image.base_initrd).map_err(Error::io("reading base initrd"))?;
    all.extend(std::fs::read(&extra_gz).map_err(Error::io("reading extra initrd"))?);
    std::fs::write(&initrd, all).map_err(Error::io("writing initrd"))?;

    let started = Instant::now();
    let mut cmd = match forwards.as_ref().map(|f| f.netns) {
        Some(ns) => ns.command(qemu),
        None => Command::new(qemu),
    };
    cmd.args(["-accel", "tcg,thread=multi", "-m", "2048", "-smp", "2"]);
    match &forwards {
        None => {
            cmd.args(["-nic", "none"]);
        }
        Some(_) => {
            cmd.args([
                "-netdev",
                "user,id=n0",
                "-device",
                "virtio-net-pci,netdev=n0",
            ]);
        }
    }
    let mut child = cmd
        .args(["-nographic", "-no-reboot", "-monitor", "none"])
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args([
            "-append",
            "console=ttyS0 panic=-1 quiet loglevel=3 rdinit=/init",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(Error::io("starting qemu-system-x86_64"))?;
    let stdout = child.stdout.take().expect("piped");
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        let mut r = std::io::BufReader::new(stdout);
        let mut buf = Vec::new();
        while matches!(r.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
            let line = String::from_utf8_lossy(&buf).into_owned();
            all.push_str(&line);
            let _ = lines_tx.send(line);
            buf.clear();
        }
        all
    });
    loop {
        while let Ok(line) = lines.try_recv() {
            on_line(line.trim_end_matches(['\r', '\n']));
        }
        if child
            .try_wait()
            .map_err(Error::io("waiting for qemu"))?
            .is_some()
        {
            break;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let console = reader.join().unwrap_or_default();
            return Err(Error::Command {
                command: format!("qemu (timed out after {timeout:?})"),
                stderr: tail(&console, 60),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let console = reader.join().unwrap_or_default();
    while let Ok(line) = lines.try_recv() {
        on_line(line.trim_end_matches(['\r', '\n']));
    }
    let code = exit_code(&console);
    Ok(Output {
        console,
        code,
        elapsed: started.elapsed(),
    })
}

/// The exit status the guest's init printed. The kernel's own console
/// messages can land on the same line as the marker (printk does not wait for
/// a user-space line to end), so the marker is searched anywhere in a line and
/// only the digits right after it are read.
fn exit_code(console: &str) -> Option<i32> {
    const MARKER: &str = "SIGNPOST-VM-EXIT ";
    console
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find(MARKER)? + MARKER.len()..];
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            digits.parse().ok()
        })
        .next_back()
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Whether this machine can run the VM rig; `Err` says why not.
pub fn available() -> std::result::Result<(), String> {
    for p in ["qemu-system-x86_64", "ipvsadm", "nft", "cpio", "kmod"] {
        which(p).map_err(|e| e.to_string())?;
    }
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root to build the image (module tree ownership)".into());
    }
    Ok(())
}

/// Standard base64 (kubeconfig `*-data` fields).
fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A kubeconfig for a guest booted with [`Forwards`] in `cluster`'s node
/// namespace: credentials inline, the API server at 10.0.2.2:6443 (the
/// namespace's loopback), verified by its certificate's name `kubernetes`.
pub fn guest_kubeconfig(cluster: &crate::LocalCluster<crate::Running>) -> Result<PathBuf> {
    let text = std::fs::read_to_string(cluster.kubeconfig())
        .map_err(Error::io("reading the kubeconfig"))?;
    let data = |key: &str| -> Result<String> {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(key))
            .ok_or_else(|| Error::Kubeconfig(format!("no {key}")))?;
        let path = line.split_once(':').map(|x| x.1.trim()).unwrap_or("");
        Ok(base64(
            &std::fs::read(path).map_err(Error::io(format!("reading {path}")))?,
        ))
    };
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://10.0.2.2:6443\n    tls-server-name: kubernetes\n    certificate-authority-data: {}\nusers:\n- name: u\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n",
        data("certificate-authority:")?,
        data("client-certificate:")?,
        data("client-key:")?,
    );
    let path = cluster.logs().join("guest.kubeconfig");
    std::fs::write(&path, kubeconfig).map_err(Error::io("writing the guest kubeconfig"))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_the_standard_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64(plain.as_bytes()), enc);
        }
    }

    #[test]
    fn the_exit_marker_is_read_even_with_kernel_messages_on_its_line() {
        assert_eq!(super::exit_code("SIGNPOST-VM-EXIT 0\n"), Some(0));
        assert_eq!(
            super::exit_code("PASS e2e\nSIGNPOST-VM-EXIT 0[   12.465774] sysrq: Power Off\n"),
            Some(0)
        );
        assert_eq!(
            super::exit_code("[    1.0] x SIGNPOST-VM-EXIT 3\r\n"),
            Some(3)
        );
        assert_eq!(super::exit_code("SIGNPOST-VM: booted\n"), None);
        assert_eq!(super::exit_code("SIGNPOST-VM-EXIT \n"), None);
    }
}
