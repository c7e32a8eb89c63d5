//! The object keys of the bucket, in one place: a run's objects under `runs/{run_id}/` (its log,
//! the log's line index, its outputs, the outputs archive a pod uploads) and the snapshots its
//! code is run from, `snapshots/{sha256}.tar.gz`, stored once per content and shared by every
//! run of the same code. Nothing else formats a key, so the layout can be read here whole.

use uuid::Uuid;

/// Where a dataset's objects live: published files at `datasets/{name}/v{N}/{path}` (immutable),
/// draft files and uploads under way at `datasets/{name}/.draft/{uuid}` (a name no version
/// takes, so a draft object is never mistaken for a published one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatasetObjects<'a> {
    name: &'a str,
}

impl<'a> DatasetObjects<'a> {
    pub fn new(name: &'a str) -> Self {
        Self { name }
    }

    /// Every object of the dataset is below this prefix.
    pub fn prefix(&self) -> String {
        format!("datasets/{}/", self.name)
    }

    /// Every file of version `version` is below this prefix.
    pub fn version_prefix(&self, version: i32) -> String {
        format!("datasets/{}/v{version}/", self.name)
    }

    /// A published file.
    pub fn file(&self, version: i32, path: &str) -> String {
        format!("{}{path}", self.version_prefix(version))
    }

    /// A draft file or an upload under way, named by a fresh id (a replaced draft file keeps
    /// its old object until the sweep removes it, so a reader never sees half of the new one).
    pub fn draft(&self, id: Uuid) -> String {
        format!("datasets/{}/.draft/{id}", self.name)
    }
}

/// Where a run's objects live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunObjects {
    run_id: Uuid,
}

impl RunObjects {
    pub fn new(run_id: Uuid) -> Self {
        Self { run_id }
    }

    /// Every object the run owns is below this prefix (snapshots are not: they are shared).
    pub fn prefix(&self) -> String {
        format!("runs/{}/", self.run_id)
    }

    /// The combined stdout and stderr, written when the run ends.
    pub fn log(&self) -> String {
        format!("{}log.txt", self.prefix())
    }

    /// The byte offset of every n-th line of `log.txt`, so a page is one ranged read.
    pub fn log_index(&self) -> String {
        format!("{}log.idx", self.prefix())
    }

    /// The archive of `$OUTPUT_DIR` a Kubernetes pod uploads, unpacked and deleted by the worker.
    pub fn outputs_archive(&self) -> String {
        format!("{}outputs.tar.gz", self.prefix())
    }

    /// The prefix of the run's output files.
    pub fn outputs(&self) -> String {
        format!("{}output/", self.prefix())
    }

    /// One output file, by its path below `$OUTPUT_DIR`.
    pub fn output(&self, path: &str) -> String {
        format!("{}{path}", self.outputs())
    }

    /// The code snapshot a run with bundle `sha256` executes.
    pub fn snapshot(sha256: &str) -> String {
        format!("{SNAPSHOTS}{sha256}.tar.gz")
    }
}

/// The prefix of every snapshot.
pub const SNAPSHOTS: &str = "snapshots/";

/// Where archives built for a redirect go (the API's `/archive` when it cannot stream); the
/// bucket's lifecycle rule expires them.
pub fn archive_key(task_id: Uuid, nonce: Uuid) -> String {
    format!("archives/{task_id}/{nonce}.zip")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runs_keys_share_its_prefix_and_snapshots_are_keyed_by_content() {
        let id = Uuid::nil();
        let objects = RunObjects::new(id);
        let prefix = objects.prefix();
        assert_eq!(prefix, format!("runs/{id}/"));
        for key in [
            objects.log(),
            objects.log_index(),
            objects.outputs_archive(),
            objects.output("a/b.txt"),
        ] {
            assert!(key.starts_with(&prefix), "{key}");
        }
        assert_eq!(
            objects.output("a/b.txt"),
            format!("runs/{id}/output/a/b.txt")
        );
        assert_eq!(RunObjects::snapshot("ab12"), "snapshots/ab12.tar.gz");
    }
}
