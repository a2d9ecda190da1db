//! Long-running processes of a test (etcd, kube-apiserver, echo servers):
//! started in a namespace with their output in a log file, stopped in `Drop`.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::netns::NetNs;
use crate::{Error, Result};

/// A supervised process.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    child: Child,
    log: PathBuf,
    /// How it was started, for [`Daemon::respawn`].
    bin: PathBuf,
    args: Vec<String>,
    /// Started through `nsenter --net` (see [`NetNs::entered_command`]).
    entered: bool,
}

impl Daemon {
    /// Starts `bin args..` inside `ns`, stdout and stderr to `log`.
    pub fn spawn(
        ns: &NetNs,
        name: &str,
        bin: &Path,
        args: &[String],
        log: PathBuf,
    ) -> Result<Self> {
        Self::spawn_as(ns, name, bin, args, log, false)
    }

    /// As [`Daemon::spawn`], with only the network namespace switched
    /// ([`NetNs::entered_command`]), for processes that need the host's
    /// /sys (containerd, kubelet).
    pub fn spawn_entered(
        ns: &NetNs,
        name: &str,
        bin: &Path,
        args: &[String],
        log: PathBuf,
    ) -> Result<Self> {
        Self::spawn_as(ns, name, bin, args, log, true)
    }

    fn spawn_as(
        ns: &NetNs,
        name: &str,
        bin: &Path,
        args: &[String],
        log: PathBuf,
        entered: bool,
    ) -> Result<Self> {
        let out = File::create(&log).map_err(Error::io(format!("creating {}", log.display())))?;
        let child = Self::start(ns, name, bin, args, out, entered)?;
        Ok(Daemon {
            name: name.to_owned(),
            child,
            log,
            bin: bin.to_owned(),
            args: args.to_vec(),
            entered,
        })
    }

    fn start(
        ns: &NetNs,
        name: &str,
        bin: &Path,
        args: &[String],
        out: File,
        entered: bool,
    ) -> Result<Child> {
        let err = out.try_clone().map_err(Error::io("cloning log handle"))?;
        let mut cmd = if entered {
            ns.entered_command(bin)
        } else {
            ns.command(bin)
        };
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(Error::io(format!("starting {name} ({})", bin.display())))
    }

    /// Kills the process group (a crash) and starts the same command again
    /// in `ns`, its output appended to the same log.
    pub fn respawn(&mut self, ns: &NetNs) -> Result<()> {
        self.kill();
        let out = File::options()
            .append(true)
            .open(&self.log)
            .map_err(Error::io(format!("opening {}", self.log.display())))?;
        self.child = Self::start(ns, &self.name, &self.bin, &self.args, out, self.entered)?;
        Ok(())
    }

    /// Sends `signal` to the process group (SIGSTOP and SIGCONT to freeze
    /// and thaw it).
    pub fn signal(&self, signal: Signal) {
        let pgid = Pid::from_raw(-i32::try_from(self.child.id()).unwrap_or(i32::MAX));
        let _ = kill(pgid, signal);
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// An error if the process has exited, naming it and its log.
    pub fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(self.exited(status.to_string())),
            Err(e) => Err(Error::io(format!("waiting for {}", self.name))(e)),
        }
    }

    fn exited(&self, status: String) -> Error {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        Error::ProcessExited {
            name: self.name.clone(),
            status,
            log: self.log.clone(),
            tail,
        }
    }

    /// Kills the process group at once (a crash, as far as the process knows).
    pub fn kill(&mut self) {
        let pgid = Pid::from_raw(-i32::try_from(self.child.id()).unwrap_or(i32::MAX));
        let _ = kill(pgid, Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// Sends SIGTERM to the process group and returns at once (to watch a
    /// graceful shutdown; [`Daemon::wait_exit`] then collects it).
    pub fn terminate(&self) {
        let pgid = Pid::from_raw(-i32::try_from(self.child.id()).unwrap_or(i32::MAX));
        let _ = kill(pgid, Signal::SIGTERM);
    }

    /// The exit status once the process has exited, waiting up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the process group: SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let pgid = Pid::from_raw(-i32::try_from(self.child.id()).unwrap_or(i32::MAX));
        let _ = kill(pgid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = kill(pgid, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// True if a process with this pid exists.
pub fn alive(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(|p| kill(Pid::from_raw(p), None).is_ok())
}

/// A binary built in this workspace's target directory (next to the running
/// test executable), for example `signpost`.
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(Error::io("locating the test executable"))?;
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    Err(Error::MissingBinary {
        name: format!("{name} (build it with `cargo build -p {name}`)"),
        dir,
    })
}

/// Reads a sample from the Prometheus endpoint `127.0.0.1:<port>/metrics`
/// in the calling thread's network namespace, summed over its label sets
/// (for example kube-proxy's per-IP-family series); `None` when the endpoint
/// does not answer or has no such sample.
pub fn local_metric(port: u16, name: &str) -> Option<f64> {
    let (_, text) = local_get(port, "/metrics")?;
    let values: Vec<f64> = text
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// `GET path` from `127.0.0.1:<port>` in the calling thread's network
/// namespace: the status code and the body, `None` when nothing answers.
pub fn local_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_get_at(std::net::SocketAddr::from(([127, 0, 0, 1], port)), path)
}

/// `GET path` from `addr` in the calling thread's network namespace (a
/// probe at a Pod's or node's address, as a kubelet sends it).
pub fn http_get_at(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Some((status, body))
}
