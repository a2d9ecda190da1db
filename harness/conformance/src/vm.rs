//! IPVS proxies on a kernel without IPVS: the run moves into the kernel VM
//! rig. The host starts the control plane (etcd, kube-apiserver, the
//! EndpointSlice controller under test) in a node namespace with no route
//! out; the guest (a Debian cloud kernel under qemu TCG, reaching only that
//! namespace's loopback as 10.0.2.2) becomes the cluster's node: this same
//! harness runs there with `--cluster kubeconfig:`, starts the proxy and
//! DNS under test, its Pods and its observers, and sends its reports back
//! over the serial console, where the host writes them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use signpost_harness::process::{Daemon, workspace_binary};
use signpost_harness::{LocalCluster, Running, upstream, vm};

use crate::sut::{self, DnsChoice, EndpointsChoice, ProxyChoice, Sut};
use crate::{Error, Result};

/// The most a whole run in the VM may take.
pub const TIMEOUT: Duration = Duration::from_secs(3600);
/// The most the demo in the VM may take (it takes under a minute; one run
/// in CI hung for 30 minutes, so it is bounded on its own).
pub const DEMO_TIMEOUT: Duration = Duration::from_secs(600);

const BEGIN: &str = "SIGNPOST-FILE ";
/// Name prefix of the guest's component logs on the console.
pub const GUEST_LOG: &str = "guest-log.";
const DATA: &str = "SPF ";
const END: &str = "SIGNPOST-FILE-END ";

/// What the guest sent back: its exit code and its report files.
#[derive(Debug)]
pub struct Outcome {
    /// `signpost-conform`'s exit code in the guest (0 certified, 1 not, 2 error).
    pub code: i32,
    /// The report files written under `out`.
    pub written: Vec<PathBuf>,
}

/// Certifies `sut` (an IPVS proxy) in the kernel VM rig: `guest_args` are
/// the harness flags for the guest (scenarios, walks, deadline, name); the
/// reports land in `out`.
pub fn certify(sut: &Sut, guest_args: &[String], out: &Path) -> Result<Outcome> {
    let image = vm::image()?;
    eprintln!(
        "signpost-conform: {} needs IPVS; this kernel has none: running it in the kernel VM rig",
        sut.proxy
    );
    let c = LocalCluster::new("conform-vm")?;
    let c = match sut.endpoints {
        EndpointsChoice::KubeControllerManager => c.with_controller_manager(),
        EndpointsChoice::Signpost => c.with_garbage_collector_only(),
    };
    let cluster = c.start()?;
    // The EndpointSlice controller needs only the API server: it runs with
    // the control plane on the host.
    let _endpoints: Option<Daemon> = sut::start_endpoints(&cluster, sut.endpoints)?;
    let kubeconfig = vm::guest_kubeconfig(&cluster)?;

    // Our binaries go in without debug info: a debug build is ~300 MB,
    // and the initramfs lives in the guest's memory.
    let small =
        tempfile::tempdir().map_err(|e| Error::Io(format!("a temporary directory: {e}")))?;
    let me = std::env::current_exe()
        .map_err(|e| Error::Io(format!("locating signpost-conform: {e}")))?;
    let mut files: Vec<(PathBuf, &str)> = vec![
        (stripped(&me, small.path())?, "/test/signpost-conform"),
        (
            stripped(&workspace_binary("signpost-echo")?, small.path())?,
            "/test/signpost-echo",
        ),
        (kubeconfig, "/test/kubeconfig"),
        (which("getent")?, "/usr/bin/getent"),
    ];
    if matches!(sut.proxy, ProxyChoice::SignpostIpvs) || sut.dns == DnsChoice::Signpost {
        files.push((
            stripped(&workspace_binary("signpost")?, small.path())?,
            "/test/signpost",
        ));
    }
    if sut.proxy == ProxyChoice::KubeProxyIpvs {
        files.push((upstream::binary("kube-proxy")?, "/test/upstream/kube-proxy"));
    }
    if sut.dns == DnsChoice::CoreDns {
        files.push((upstream::binary("coredns")?, "/test/upstream/coredns"));
    }
    let features: Vec<PathBuf> = std::fs::read_dir(crate::world::features_dir())
        .map_err(|e| Error::Io(format!("{}: {e}", crate::world::features_dir().display())))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "feature"))
        .collect();
    let guest_paths: Vec<String> = features
        .iter()
        .map(|p| {
            format!(
                "/test/features/{}",
                p.file_name().unwrap_or_default().to_string_lossy()
            )
        })
        .collect();
    for (p, g) in features.iter().zip(&guest_paths) {
        files.push((p.clone(), g.as_str()));
    }
    let script = guest_script(sut, guest_args);
    eprintln!(
        "signpost-conform: booting the VM (control plane on the host in {:.1}s; logs: {})",
        cluster.startup_time().as_secs_f64(),
        cluster.logs().display()
    );
    let (run, saved) = boot_as_node(&image, &cluster, &files, &script, TIMEOUT, |line| {
        if !line.starts_with(DATA) {
            eprintln!("vm| {line}");
        }
    })?;
    let code = run.code.ok_or_else(|| {
        Error::Observe(format!(
            "the VM ended without an exit status (console: {})",
            saved.display()
        ))
    })?;
    let received = collect(&run.console)?;
    std::fs::create_dir_all(out).map_err(|e| Error::Io(format!("{}: {e}", out.display())))?;
    let mut written = Vec::new();
    for (name, data) in received {
        // The guest's component logs go with the host's logs, the reports to `out`.
        let path = match name.strip_prefix(GUEST_LOG) {
            Some(log) => cluster.logs().join(format!("guest-{log}")),
            None => out.join(&name),
        };
        std::fs::write(&path, data).map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
        if !name.starts_with(GUEST_LOG) {
            written.push(path);
        }
    }
    eprintln!(
        "signpost-conform: the VM run took {:.0}s (console: {})",
        run.elapsed.as_secs_f64(),
        saved.display()
    );
    Ok(Outcome { code, written })
}

/// The start of every guest script: the files glibc's resolver wants, the
/// modules the node needs, a quiet console.
const GUEST_PRELUDE: &str = "set -e\n\
     mkdir -p /etc /tmp/out\n\
     [ -e /bin/sh ] || ln -s bash /bin/sh\n\
     : > /etc/resolv.conf; : > /etc/hosts\n\
     echo 'hosts: files dns' > /etc/nsswitch.conf\n\
     for m in bridge br_netfilter ip_vs_rr; do modprobe $m; done\n\
     # Kernel messages would interleave with the output on the console.\n\
     echo 1 > /proc/sys/kernel/printk\n\
     export HOME=/tmp SIGNPOST_UPSTREAM_BIN=/test/upstream SIGNPOST_FEATURES_DIR=/test/features SIGNPOST_KEEP_LOGS=1\n";

/// The harness flags that make a program in the guest the node of the
/// host's cluster.
const GUEST_CLUSTER: [&str; 4] = [
    "--cluster",
    "kubeconfig:/test/kubeconfig",
    "--uplink",
    "eth0/10.0.2.15/24",
];

/// Runs `signpost-demo` (the running executable) in the kernel VM rig as
/// the node of a cluster whose control plane and EndpointSlice controller
/// (Signpost's) run on the host, as [`certify`] does; `guest_args` are
/// the demo's flags. The guest's output is printed as it arrives. Returns
/// the demo's exit code in the guest.
pub fn demo(guest_args: &[String]) -> Result<i32> {
    let image = vm::image()?;
    let cluster = LocalCluster::new("demo-vm")?
        .with_garbage_collector_only()
        .start()?;
    let _endpoints = sut::start_endpoints(&cluster, EndpointsChoice::Signpost)?;
    let kubeconfig = vm::guest_kubeconfig(&cluster)?;
    let small =
        tempfile::tempdir().map_err(|e| Error::Io(format!("a temporary directory: {e}")))?;
    let me =
        std::env::current_exe().map_err(|e| Error::Io(format!("locating signpost-demo: {e}")))?;
    let files: Vec<(PathBuf, &str)> = vec![
        (stripped(&me, small.path())?, "/test/signpost-demo"),
        (
            stripped(&workspace_binary("signpost-echo")?, small.path())?,
            "/test/signpost-echo",
        ),
        (
            stripped(&workspace_binary("signpost")?, small.path())?,
            "/test/signpost",
        ),
        (kubeconfig, "/test/kubeconfig"),
        (which("getent")?, "/usr/bin/getent"),
    ];
    let args: Vec<String> = guest_args
        .iter()
        .map(String::as_str)
        .chain(GUEST_CLUSTER)
        .map(shell_word)
        .collect();
    let script = format!("{GUEST_PRELUDE}/test/signpost-demo {}\n", args.join(" "));
    println!(
        "  control plane and signpost endpoints up on the host in {:.1} s; booting the kernel VM (the node: signpost proxy --mode ipvs, signpost dns, the Pods)",
        cluster.startup_time().as_secs_f64()
    );
    let (run, saved) = boot_as_node(&image, &cluster, &files, &script, DEMO_TIMEOUT, {
        // Firmware and boot messages are not the demo's: from the
        // guest's first line on, everything but kernel messages.
        let mut booted = false;
        move |line: &str| {
            if let Some(b) = line.find("SIGNPOST-VM: booted") {
                booted = true;
                println!("vm| {}", &line[b..]);
            } else if booted
                && !line.starts_with('[')
                && !line.starts_with("SIGNPOST-VM-EXIT")
                && !line.starts_with("signpost-harness: logs kept")
            {
                println!("vm| {line}");
            }
        }
    })?;
    println!(
        "  the VM run took {:.0} s (console: {})",
        run.elapsed.as_secs_f64(),
        saved.display()
    );
    run.code.ok_or_else(|| {
        Error::Observe(format!(
            "the VM ended without an exit status (console: {})",
            saved.display()
        ))
    })
}

/// Boots the VM as the node of `cluster` (the guest reaches its API
/// server), runs `script` there, and keeps the console with the cluster's
/// logs (returned with the run).
fn boot_as_node(
    image: &vm::Image,
    cluster: &LocalCluster<Running>,
    files: &[(PathBuf, &str)],
    script: &str,
    timeout: Duration,
    on_line: impl FnMut(&str),
) -> Result<(vm::Output, PathBuf)> {
    let run = vm::run_observed(
        image,
        files,
        script,
        timeout,
        Some(vm::Forwards {
            netns: cluster.node_namespace(),
        }),
        on_line,
    )?;
    let saved = cluster.logs().join("vm-console.log");
    let _ = std::fs::write(&saved, &run.console);
    Ok((run, saved))
}

/// The guest's script: the prelude, then the harness as the node of the
/// host's cluster.
fn guest_script(sut: &Sut, guest_args: &[String]) -> String {
    let mut args: Vec<String> = GUEST_CLUSTER.iter().map(|a| (*a).to_owned()).collect();
    args.extend([
        "--proxy".to_owned(),
        sut.proxy.to_string(),
        "--dns".to_owned(),
        sut.dns.to_string(),
        "--endpoints".to_owned(),
        sut.endpoints.to_string(),
        "--out".to_owned(),
        "/tmp/out".to_owned(),
        "--emit-reports".to_owned(),
    ]);
    if let Some(m) = sut.mutant {
        args.push(format!("--mutant={}", m.name()));
    }
    args.extend(guest_args.iter().cloned());
    let quoted: Vec<String> = args.iter().map(|a| shell_word(a)).collect();
    format!(
        "{GUEST_PRELUDE}\
         status=0\n\
         /test/signpost-conform {} || status=$?\n\
         # The components' logs come back too (the host keeps them with its own).\n\
         for d in /tmp/signpost-conform-*/logs; do /test/signpost-conform --emit-logs \"$d\" || true; done\n\
         exit $status\n",
        quoted.join(" ")
    )
}

fn shell_word(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.:/=,".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// `bin` without debug info, written into `dir` (binutils' `strip`).
fn stripped(bin: &Path, dir: &Path) -> Result<PathBuf> {
    let name = bin.file_name().unwrap_or_default();
    let dest = dir.join(name);
    let out = std::process::Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&dest)
        .arg(bin)
        .output()
        .map_err(|e| {
            Error::Unsupported(format!(
                "running strip (binutils) on {}: {e}",
                bin.display()
            ))
        })?;
    if !out.status.success() {
        return Err(Error::Io(format!(
            "strip {}: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(dest)
}

fn which(program: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::Unsupported(format!(
                "{program} is not installed (the VM's Pods need it)"
            ))
        })
}

/// FNV-1a, 64 bits: a check that a file crossed the console whole.
fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The lines that carry `files` over a console: per file a header with
/// its name and length, hex data lines, and a trailer with a checksum.
pub fn encode(files: &[(String, Vec<u8>)]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    for (name, data) in files {
        let _ = writeln!(s, "{BEGIN}{name} {}", data.len());
        for chunk in data.chunks(48) {
            s.push_str(DATA);
            for b in chunk {
                let _ = write!(s, "{b:02x}");
            }
            s.push('\n');
        }
        let _ = writeln!(s, "{END}{name} {:016x}", fnv(data));
    }
    s
}

/// Prints the files in `dir` to stdout as [`encode`] lines (the guest
/// side), each name prefixed with `prefix`.
pub fn emit_dir(dir: &Path, prefix: &str) -> Result<()> {
    let mut files = Vec::new();
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::Io(format!("{}: {e}", dir.display())))?;
    for e in entries.flatten() {
        let path = e.path();
        if path.is_file() {
            let data =
                std::fs::read(&path).map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
            let name = format!("{prefix}{}", e.file_name().to_string_lossy());
            files.push((name, data));
        }
    }
    files.sort();
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(encode(&files).as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Error::Io(format!("writing the reports to the console: {e}")))
}

/// The files [`encode`] put in `console`, checked by length and checksum.
/// Console lines may end in `\r`; other lines between are ignored.
pub fn collect(console: &str) -> Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    let mut current: Option<(String, usize, Vec<u8>)> = None;
    for raw in console.lines() {
        let line = raw.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix(BEGIN) {
            let (name, len) = rest
                .rsplit_once(' ')
                .and_then(|(n, l)| Some((n.to_owned(), l.parse::<usize>().ok()?)))
                .ok_or_else(|| Error::Observe(format!("bad report header {line:?}")))?;
            check_name(&name)?;
            current = Some((name, len, Vec::with_capacity(len)));
        } else if let Some(hex) = line.strip_prefix(DATA) {
            let Some((name, _, data)) = current.as_mut() else {
                return Err(Error::Observe("report data outside a file".into()));
            };
            if hex.len() % 2 != 0 {
                return Err(Error::Observe(format!("{name}: a data line of odd length")));
            }
            for pair in hex.as_bytes().chunks(2) {
                let digits = std::str::from_utf8(pair).unwrap_or("");
                let b = u8::from_str_radix(digits, 16)
                    .map_err(|_| Error::Observe(format!("{name}: not hex: {digits:?}")))?;
                data.push(b);
            }
        } else if let Some(rest) = line.strip_prefix(END) {
            let Some((name, len, data)) = current.take() else {
                return Err(Error::Observe("report trailer without a header".into()));
            };
            let want = format!("{name} {:016x}", fnv(&data));
            if data.len() != len || rest != want {
                return Err(Error::Observe(format!(
                    "{name}: damaged on the console ({} of {len} bytes, trailer {rest:?})",
                    data.len()
                )));
            }
            files.push((name, data));
        }
    }
    if let Some((name, ..)) = current {
        return Err(Error::Observe(format!(
            "{name}: the console ended inside it"
        )));
    }
    Ok(files)
}

/// A report's name from the guest: a plain file name, nothing that climbs out of `--out`.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::Observe(format!("refusing a report named {name:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_cross_the_console_whole_among_other_lines() {
        let files = vec![
            ("a.json".to_owned(), b"{\"x\": 1}\n".to_vec()),
            (
                "b.html".to_owned(),
                (0..=255u8).cycle().take(1000).collect(),
            ),
            ("empty.xml".to_owned(), Vec::new()),
        ];
        let enc = encode(&files);
        let console = format!(
            "booting\r\n{}\r\nSIGNPOST-VM-EXIT 0\n",
            enc.replace('\n', "\r\nvm noise\r\n")
        );
        assert_eq!(collect(&console).unwrap(), files);
    }

    #[test]
    fn a_damaged_or_truncated_file_is_an_error_not_a_report() {
        let enc = encode(&[("a.json".to_owned(), b"hello world".to_vec())]);
        let flipped = enc.replacen("68", "69", 1);
        assert!(collect(&flipped).is_err());
        let cut: String = enc.lines().take(2).map(|l| format!("{l}\n")).collect();
        assert!(collect(&cut).is_err());
        let climbing = encode(&[("../x".to_owned(), b"1".to_vec())]);
        assert!(collect(&climbing).is_err());
    }
}
