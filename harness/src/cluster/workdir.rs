//! A test's work directory: removed when the test passes, kept (and its path
//! printed) when it panics, so the logs can be read.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The directory of one cluster: certificates, etcd data, logs.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    /// Creates `$TMPDIR/<name>` (and its `logs/`), replacing a leftover.
    pub fn create(name: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(path.join("logs"))
            .map_err(Error::io(format!("creating {}", path.display())))?;
        Ok(WorkDir { path })
    }

    /// A fresh directory for a cluster named `name`: `signpost-<name>-<pid>x<n>`,
    /// distinct for every call in this process, so two clusters that share a
    /// name (two tests running at once) never share, or remove, each other's
    /// certificates, etcd data and logs.
    pub fn for_cluster(name: &str) -> Result<Self> {
        Self::create(&crate::netns::unique(&format!("signpost-{name}-")))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The log directory.
    pub fn logs(&self) -> PathBuf {
        self.path.join("logs")
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("SIGNPOST_KEEP_LOGS").is_some() {
            eprintln!("signpost-harness: logs kept in {}", self.logs().display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two clusters of one name started at once (the two VM tests both say
    /// "vmipvs"): the second must not remove the first one's directory.
    #[test]
    fn clusters_of_one_name_get_their_own_directories() {
        let a = WorkDir::for_cluster("same").unwrap();
        std::fs::write(a.logs().join("kube-apiserver.log"), "first").unwrap();
        let b = WorkDir::for_cluster("same").unwrap();
        assert_ne!(a.path(), b.path());
        assert_eq!(
            std::fs::read_to_string(a.logs().join("kube-apiserver.log")).unwrap(),
            "first",
            "creating the second directory touched the first"
        );
    }
}
