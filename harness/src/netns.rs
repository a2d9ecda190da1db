//! Network namespaces as RAII guards: created with `ip netns add`, removed
//! (with every process still inside) in `Drop`, also when a test panics.

use std::ffi::OsStr;
use std::fs::File;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{Error, Result};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process: `<prefix><pid>x<n>` (fits interface names).
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command and returns its output, or an error with its stderr.
pub fn run<I, S>(program: impl AsRef<OsStr>, args: I) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let program = program.as_ref();
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let line = format!(
        "{} {}",
        program.to_string_lossy(),
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = Command::new(program)
        .args(&args)
        .output()
        .map_err(Error::io(format!("running {line}")))?;
    if !out.status.success() {
        return Err(Error::Command {
            command: line,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out)
}

/// Names of the network namespaces that exist now.
pub fn list() -> Result<Vec<String>> {
    let out = run("ip", ["netns", "list"])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect())
}

/// Runs `f` on a new thread that has joined the namespace called `name`.
pub fn within_named<F, R>(name: &str, f: F) -> Result<R>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let path = format!("/run/netns/{name}");
    let file = File::open(&path).map_err(Error::io(format!("opening {path}")))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| Error::Sys {
                context: format!("joining {path}"),
                source,
            })?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Removes every namespace this process created (with the processes inside):
/// for a signal handler, when the guards' `Drop` will not run. Names made
/// by [`unique`] with a three-letter prefix are this process's.
pub fn remove_all_of_this_process() {
    // Hooks first: what they tear down (a node's Pods) needs the
    // namespaces' processes (containerd) still running.
    let hooks: Vec<Hook> = std::mem::take(&mut *HOOKS.lock().unwrap_or_else(|e| e.into_inner()))
        .into_values()
        .collect();
    for hook in hooks {
        hook();
    }
    let me = format!("{}x", std::process::id() % 100_000);
    for name in list().unwrap_or_default() {
        if name.get(3..).is_some_and(|rest| rest.starts_with(&me)) {
            drop(NetNs { name });
        }
    }
}

type Hook = Box<dyn FnOnce() + Send>;

static HOOKS: std::sync::Mutex<std::collections::BTreeMap<u64, Hook>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());
static NEXT_HOOK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Registers teardown that [`remove_all_of_this_process`] runs before it
/// removes the namespaces (for what lives outside them, such as the
/// network namespaces a container runtime made for its Pods); the id
/// unregisters it with [`forget_teardown`] once `Drop` has done it.
pub fn on_teardown(hook: impl FnOnce() + Send + 'static) -> u64 {
    let id = NEXT_HOOK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    HOOKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, Box::new(hook));
    id
}

/// Unregisters a hook of [`on_teardown`].
pub fn forget_teardown(id: u64) {
    HOOKS.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
}

/// SIGINT and SIGTERM are caught by one thread that removes this run's
/// namespaces (and so every process in them) before exiting with 130: the
/// guards' `Drop` does not run when a signal ends the process. A handler,
/// not a blocked mask: children inherit a mask across exec, and then
/// ignore the SIGTERM that stops them. `program` names the run in the
/// message.
pub fn clean_up_on_signals(program: &'static str) {
    let (ready, registered) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            let _ = ready.send(());
            let name = tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            };
            eprintln!("{program}: {name}: removing this run's namespaces");
            remove_all_of_this_process();
            std::process::exit(130);
        });
    });
    // Namespaces come after the handlers: a signal between the two would
    // end the process without them.
    let _ = registered.recv_timeout(std::time::Duration::from_secs(5));
}

/// A network namespace owned by the test.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a namespace with its loopback up and nothing else: no route out.
    pub fn create(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        run("ip", ["netns", "add", &name])?;
        let ns = NetNs { name };
        ns.ip(["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> <args>`.
    pub fn ip<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut all: Vec<std::ffi::OsString> = vec!["-n".into(), self.name.clone().into()];
        all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        run("ip", all)
    }

    /// Sets a sysctl inside the namespace (`net.*` keys are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let out = self
            .command("sh")
            .args(["-c", &format!("echo {value} > {path}")])
            .output()
            .map_err(Error::io(format!("setting {key}")))?;
        if !out.status.success() {
            return Err(Error::Command {
                command: format!("sysctl {key}={value}"),
                stderr: String::from_utf8_lossy(&out.stderr).into(),
            });
        }
        Ok(())
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`,
    /// which also bind-mounts `/etc/netns/<ns>/*` over `/etc`).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// A command that runs `program` with only its network namespace
    /// switched (`nsenter --net`): the mount namespace stays the host's, so
    /// /sys and its cgroup mounts stay visible (`ip netns exec` remounts
    /// /sys, which containerd and kubelet cannot run without).
    pub fn entered_command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/var/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        c
    }

    /// Runs `f` on a new thread that has joined the namespace; sockets it
    /// opens (and threads it spawns) live in the namespace.
    pub fn within<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        within_named(&self.name, f)
    }

    /// PIDs of processes inside the namespace.
    pub fn pids(&self) -> Vec<i32> {
        run("ip", ["netns", "pids", &self.name])
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        for pid in self.pids() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.name));
        if let Err(e) = run("ip", ["netns", "delete", &self.name]) {
            eprintln!(
                "signpost-harness: could not delete namespace {}: {e}",
                self.name
            );
        }
    }
}
