//! The worker's cache of dataset versions (local executor): each version a run mounts is
//! fetched once per worker into `{cache}/{checksum}/`, each file checked against its sha256,
//! and then bound read-only into every run that names it. The folder appears whole (built
//! aside, then renamed) so a run never mounts half a version; its files are read-only to
//! everyone and the worker never writes them again.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use coderun_shared::config::LimitSettings;
use coderun_shared::datasets::Mount;
use coderun_shared::domain::FilePath;
use coderun_shared::storage::Storage;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

/// Files fetched into each cache folder since the process started: what tests read to see a
/// version fetched once however many runs mount it.
static FETCHED: LazyLock<Mutex<HashMap<PathBuf, u64>>> = LazyLock::new(Default::default);

/// The files fetched into the cache at `root` by this process.
pub fn fetched_files(root: &Path) -> u64 {
    FETCHED
        .lock()
        .expect("fetch counter")
        .get(root)
        .copied()
        .unwrap_or(0)
}

pub struct DatasetCache {
    root: PathBuf,
    http: reqwest::Client,
    /// One fetch of a version at a time; the others wait for it and then find it there.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl DatasetCache {
    pub fn new(root: PathBuf, http: reqwest::Client) -> Self {
        Self {
            root,
            http,
            fetching: Mutex::new(HashMap::new()),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder holding `mount`'s files, fetched first unless this worker has it.
    pub async fn ensure(
        &self,
        storage: &Storage,
        mount: &Mount,
        paths: &LimitSettings,
    ) -> anyhow::Result<PathBuf> {
        anyhow::ensure!(
            mount.checksum.len() == 64 && mount.checksum.bytes().all(|b| b.is_ascii_hexdigit()),
            "dataset {}@v{} has a malformed checksum",
            mount.name,
            mount.version
        );
        let dir = self.root.join(&mount.checksum);
        if tokio::fs::metadata(&dir).await.is_ok_and(|m| m.is_dir()) {
            return Ok(dir);
        }
        let lock = self
            .fetching
            .lock()
            .expect("fetch locks")
            .entry(mount.checksum.clone())
            .or_default()
            .clone();
        let _fetching = lock.lock().await;
        if tokio::fs::metadata(&dir).await.is_ok_and(|m| m.is_dir()) {
            return Ok(dir);
        }
        // Traversable by the runs' uids (bubblewrap binds as them), listable by nobody else.
        tokio::fs::create_dir_all(&self.root).await?;
        tokio::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o711)).await?;
        let building = self.root.join(format!(
            ".building-{}-{}",
            mount.checksum,
            Uuid::new_v4().simple()
        ));
        let built = self.fetch_into(storage, mount, paths, &building).await;
        if let Err(e) = built {
            let _ = tokio::fs::remove_dir_all(&building).await;
            return Err(e);
        }
        tokio::fs::rename(&building, &dir).await?;
        *FETCHED
            .lock()
            .expect("fetch counter")
            .entry(self.root.clone())
            .or_default() += mount.files.len() as u64;
        tracing::info!(
            dataset = %mount.name, version = mount.version, files = mount.files.len(),
            bytes = mount.size(), "dataset version fetched into the worker's cache"
        );
        Ok(dir)
    }

    async fn fetch_into(
        &self,
        storage: &Storage,
        mount: &Mount,
        paths: &LimitSettings,
        into: &Path,
    ) -> anyhow::Result<()> {
        let dir_mode = std::fs::Permissions::from_mode(0o755);
        tokio::fs::create_dir(into).await?;
        tokio::fs::set_permissions(into, dir_mode.clone()).await?;
        for file in &mount.files {
            // Paths were checked when they entered the draft; checked again, as host paths.
            let path = FilePath::parse(&file.path, paths)
                .map_err(|e| anyhow::anyhow!("dataset file `{}`: {}", file.path, e.0))?;
            let target = into.join(path.as_str());
            let mut parent = target.parent();
            let mut missing = Vec::new();
            while let Some(p) = parent {
                if p == into || tokio::fs::metadata(p).await.is_ok() {
                    break;
                }
                missing.push(p.to_owned());
                parent = p.parent();
            }
            for p in missing.iter().rev() {
                tokio::fs::create_dir(p).await?;
                tokio::fs::set_permissions(p, dir_mode.clone()).await?;
            }
            let url = storage.presigned_get_internal(&file.key).await?;
            let mut response = self.http.get(url).send().await?.error_for_status()?;
            let mut out = tokio::fs::File::create(&target).await?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            while let Some(chunk) = response.chunk().await? {
                size += chunk.len() as u64;
                anyhow::ensure!(
                    size <= file.size,
                    "dataset file `{}` is longer than its {} bytes",
                    file.path,
                    file.size
                );
                hasher.update(&chunk);
                out.write_all(&chunk).await?;
            }
            out.flush().await?;
            drop(out);
            let sha = hex::encode(hasher.finalize());
            anyhow::ensure!(
                size == file.size && sha == file.sha256,
                "dataset file `{}` of {}@v{} does not match its checksum (got {size} bytes, sha256 {sha})",
                file.path,
                mount.name,
                mount.version
            );
            tokio::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o444)).await?;
        }
        Ok(())
    }
}
