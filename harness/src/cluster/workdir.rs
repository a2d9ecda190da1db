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
