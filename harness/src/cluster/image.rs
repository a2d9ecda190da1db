//! Container images built from this machine's files, never pulled: a spec
//! lists the files (a program with the shared libraries `ldd` names for it,
//! static busybox with its applets, text files, links) and the image's
//! entrypoint; [`ImageSpec::build`] writes it as an OCI image layout tar
//! that `ctr images import` takes.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::netns::run;
use crate::{Error, Result};

/// Static busybox from Debian's busybox-static.
pub const BUSYBOX: &str = "/bin/busybox";

/// The search path of every image built here: `/usr/bin` (programs copied
/// from the machine) before `/bin` (busybox applets).
const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone)]
enum Entry {
    /// A copy of this machine's file.
    Copy(PathBuf),
    /// A symbolic link to this target.
    Link(String),
    /// A file with this text.
    Text(String),
}

/// An image: its reference, its files by path in the image, its
/// entrypoint and command.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    name: String,
    files: BTreeMap<String, Entry>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
}

impl ImageSpec {
    /// An empty image called `name` (a full reference, e.g.
    /// `registry.k8s.io/pause:3.10.2`), with `/tmp` and `/etc`.
    pub fn new(name: &str) -> Self {
        ImageSpec {
            name: name.to_owned(),
            files: BTreeMap::new(),
            entrypoint: Vec::new(),
            cmd: Vec::new(),
        }
    }

    /// The image's reference.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This machine's file `host`, at `at` in the image.
    pub fn file(mut self, host: impl Into<PathBuf>, at: &str) -> Self {
        self.files.insert(at.to_owned(), Entry::Copy(host.into()));
        self
    }

    /// A text file at `at`.
    pub fn text(mut self, at: &str, text: &str) -> Self {
        self.files
            .insert(at.to_owned(), Entry::Text(text.to_owned()));
        self
    }

    /// A symbolic link at `at` to `target`.
    pub fn link(mut self, at: &str, target: &str) -> Self {
        self.files
            .insert(at.to_owned(), Entry::Link(target.to_owned()));
        self
    }

    /// This machine's program `host` at `at`, with every shared library
    /// `ldd` names for it at the path it names (the dynamic loader's
    /// default directories, so no loader cache is needed).
    pub fn program(mut self, host: &str, at: &str) -> Result<Self> {
        require(host)?;
        self = self.file(host, at);
        let out = run("ldd", [host])?;
        let listing = String::from_utf8_lossy(&out.stdout);
        if let Some(line) = listing.lines().find(|l| l.contains("not found")) {
            return Err(Error::Command {
                command: format!("ldd {host}"),
                stderr: format!("a library is missing: {}", line.trim()),
            });
        }
        for lib in shared_libraries(&listing) {
            self = self.file(&lib, &lib);
        }
        Ok(self)
    }

    /// Static busybox at `/bin/busybox` with a link in `/bin` for each of
    /// its applets (`sh`, `sleep`, `nslookup`, ...).
    pub fn busybox(mut self) -> Result<Self> {
        require(BUSYBOX)?;
        self = self.file(BUSYBOX, "/bin/busybox");
        let out = run(BUSYBOX, ["--list"])?;
        for applet in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if applet != "busybox" && !applet.contains('/') {
                self = self.link(&format!("/bin/{applet}"), "busybox");
            }
        }
        Ok(self)
    }

    /// The entrypoint.
    pub fn entrypoint(mut self, args: &[&str]) -> Self {
        self.entrypoint = args.iter().map(|s| s.to_string()).collect();
        self
    }

    /// The command (the entrypoint's default arguments).
    pub fn cmd(mut self, args: &[&str]) -> Self {
        self.cmd = args.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Writes the image as an OCI image layout tar under `dir`; its path.
    pub fn build(&self, dir: &Path) -> Result<PathBuf> {
        let slug: String = self
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let work = dir.join(&slug);
        let rootfs = work.join("rootfs");
        let blobs = work.join("layout/blobs/sha256");
        if work.exists() {
            std::fs::remove_dir_all(&work)
                .map_err(Error::io(format!("clearing {}", work.display())))?;
        }
        for d in [rootfs.join("tmp"), rootfs.join("etc"), blobs.clone()] {
            mkdir(&d)?;
        }
        for (at, entry) in &self.files {
            let dest = rootfs.join(at.trim_start_matches('/'));
            if let Some(parent) = dest.parent() {
                mkdir(parent)?;
            }
            match entry {
                Entry::Copy(host) => {
                    std::fs::copy(host, &dest).map_err(Error::io(format!(
                        "copying {} into image {}",
                        host.display(),
                        self.name
                    )))?;
                }
                Entry::Text(text) => write(&dest, text)?,
                Entry::Link(target) => std::os::unix::fs::symlink(target, &dest)
                    .map_err(Error::io(format!("linking {}", dest.display())))?,
            }
        }
        let layer = work.join("layer.tar");
        let fixed = [
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--sort=name",
            "--mtime=@0",
        ];
        run(
            "tar",
            fixed.iter().map(OsStr::new).chain([
                OsStr::new("-C"),
                rootfs.as_os_str(),
                OsStr::new("-cf"),
                layer.as_os_str(),
                OsStr::new("."),
            ]),
        )?;
        let (layer_digest, layer_size) = add_blob(&blobs, &layer)?;
        let mut config = json!({ "Env": [PATH] });
        if !self.entrypoint.is_empty() {
            config["Entrypoint"] = json!(self.entrypoint);
        }
        if !self.cmd.is_empty() {
            config["Cmd"] = json!(self.cmd);
        }
        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_digest}")] },
        });
        let (config_digest, config_size) = add_text_blob(&blobs, &config.to_string())?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": format!("sha256:{config_digest}"),
                "size": config_size,
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": format!("sha256:{layer_digest}"),
                "size": layer_size,
            }],
        });
        let (manifest_digest, manifest_size) = add_text_blob(&blobs, &manifest.to_string())?;
        let layout = work.join("layout");
        write(
            &layout.join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        let index = json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{manifest_digest}"),
                "size": manifest_size,
                "annotations": {
                    "io.containerd.image.name": self.name,
                    "org.opencontainers.image.ref.name": self.name,
                },
            }],
        });
        write(&layout.join("index.json"), &index.to_string())?;
        let tar = work.join("image.tar");
        run(
            "tar",
            [
                OsStr::new("-C"),
                layout.as_os_str(),
                OsStr::new("-cf"),
                tar.as_os_str(),
            ]
            .into_iter()
            .chain(["oci-layout", "index.json", "blobs"].map(OsStr::new)),
        )?;
        std::fs::remove_dir_all(&rootfs).map_err(Error::io("removing an image's rootfs"))?;
        Ok(tar)
    }
}

/// The absolute library paths in `ldd`'s output (`libc.so.6 => /lib/...`
/// and the loader's own `/lib64/ld-linux-x86-64.so.2`).
fn shared_libraries(ldd: &str) -> Vec<String> {
    ldd.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| path.to_owned())
        })
        .collect()
}

fn require(path: &str) -> Result<()> {
    if Path::new(path).is_file() {
        Ok(())
    } else {
        Err(Error::MissingPackage {
            what: format!("{path} (for a container image; ci/bootstrap installs it)"),
            path: PathBuf::from(path),
        })
    }
}

fn mkdir(d: &Path) -> Result<()> {
    std::fs::create_dir_all(d).map_err(Error::io(format!("creating {}", d.display())))
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(Error::io(format!("writing {}", path.display())))
}

/// Moves `file` into `blobs` under its digest; the hex digest and size.
fn add_blob(blobs: &Path, file: &Path) -> Result<(String, u64)> {
    let out = run("sha256sum", [file])?;
    let sum = String::from_utf8_lossy(&out.stdout);
    let digest = sum
        .split_whitespace()
        .next()
        .filter(|d| d.len() == 64)
        .ok_or_else(|| Error::Command {
            command: "sha256sum".into(),
            stderr: format!("no digest in {sum:?}"),
        })?
        .to_owned();
    let size = std::fs::metadata(file)
        .map_err(Error::io("sizing a blob"))?
        .len();
    std::fs::rename(file, blobs.join(&digest)).map_err(Error::io("naming a blob"))?;
    Ok((digest, size))
}

fn add_text_blob(blobs: &Path, text: &str) -> Result<(String, u64)> {
    let tmp = blobs.join("incoming");
    write(&tmp, text)?;
    add_blob(blobs, &tmp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_each_library_path_once_per_line() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            shared_libraries(out),
            vec![
                "/lib/x86_64-linux-gnu/libc.so.6".to_owned(),
                "/lib64/ld-linux-x86-64.so.2".to_owned()
            ]
        );
    }
}
