//! Datasets coderun owns: Postgres rows (the dataset, its draft, its immutable versions and
//! their files with sizes and sha256 checksums, uploads under way) and S3 objects (see
//! [`DatasetObjects`]). One step a method, like [`crate::lifecycle`]: the HTTP edge calls them.
//!
//! Rules it keeps:
//! - Staff (teachers, admins) create, upload and publish; admins delete. A student reads only
//!   published versions: an unpublished dataset or a draft is 404 to them, every write is 403.
//! - A file enters the draft only with its checksum known and checked (computed for a small PUT,
//!   read back from the assembled object for a multipart upload); a mismatch stores nothing.
//! - Publishing copies the draft to `datasets/{name}/v{N}/…` and then commits the version: a
//!   version row exists only once all its objects do, and is never changed afterwards. `N`
//!   comes from a counter on the dataset and is never reused.
//! - A run names `name@vN`; deleting a dataset or version is refused while a queued or active
//!   run names it, and otherwise leaves its objects to the sweep ([`sweep`]).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::config::Settings;
use crate::domain::{FilePath, Invalid, Role};
use crate::lifecycle::Actor;
use crate::objects::DatasetObjects;
use crate::runs::RunStatus;
use crate::storage::{self, PART_BYTES, Storage};

/// S3 allows at most this many parts in one multipart upload.
const MAX_PARTS: u64 = 10_000;
/// A title is at most this many characters; a description or source note at most 10,000.
pub const MAX_TITLE_CHARS: usize = 200;
pub const MAX_TEXT_CHARS: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such dataset, version, file or upload, or one the actor may not see.
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    /// A quota of `datasets.*` would be exceeded.
    #[error("{0}")]
    TooLarge(String),
    /// The uploaded bytes are not the ones announced; nothing was stored.
    #[error("{0}")]
    ChecksumMismatch(String),
    #[error(transparent)]
    Storage(#[from] storage::Error),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl From<Invalid> for Error {
    fn from(e: Invalid) -> Self {
        Error::Invalid(e.0)
    }
}

/// A dataset's name: a safe folder name (`$DATA_DIR/{name}`), 1–63 characters of
/// `a-z 0-9 _ -`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetName(String);

impl DatasetName {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let ok = !raw.is_empty()
            && raw.len() <= 63
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
            && raw
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !ok {
            return Err(Invalid(format!(
                "dataset name `{raw}` must be 1 to 63 characters of a-z, 0-9, '_' and '-', \
                 starting with a letter or digit"
            )));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `v{N}` → N.
pub fn parse_version(raw: &str) -> Result<i32, Invalid> {
    raw.strip_prefix('v')
        .filter(|n| !n.starts_with('0') && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse::<i32>().ok())
        .filter(|n| *n >= 1)
        .ok_or_else(|| Invalid(format!("version `{raw}` must be `v1`, `v2`, …")))
}

/// What a submission names: `name` (the latest published version) or `name@vN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetRef {
    pub name: DatasetName,
    pub version: Option<i32>,
}

impl DatasetRef {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let (name, version) = match raw.split_once('@') {
            Some((name, version)) => (name, Some(parse_version(version)?)),
            None => (raw, None),
        };
        Ok(Self {
            name: DatasetName::parse(name)?,
            version,
        })
    }
}

/// The exact version a run mounts, as `runs.datasets` records it: `name@vN`.
pub fn pinned(name: &str, version: i32) -> String {
    format!("{name}@v{version}")
}

/// One file of a draft or version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FileEntry {
    pub path: String,
    pub size: i64,
    /// Lowercase hex.
    pub sha256: String,
    /// A short-lived download URL (signed for `storage.public_endpoint`): set on the files of
    /// published versions in `GET /datasets/{name}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// A published version, as lists show it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VersionSummary {
    /// `v1`, `v2`, …
    pub version: String,
    /// Bytes of all its files.
    pub size: i64,
    pub file_count: i32,
    pub published_at: DateTime<Utc>,
    /// sha256 of its manifest (`sha256  path` lines sorted by path): equal checksums, equal
    /// contents.
    pub checksum: String,
    /// `name@vN`, what a submission may name to get exactly this version.
    #[serde(rename = "ref")]
    pub reference: String,
}

/// A dataset in the list of `GET /datasets` (the schema keeps its name `Dataset`, which the
/// web app's run panel uses).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Dataset)]
pub struct DatasetSummary {
    pub name: String,
    pub title: String,
    pub description: String,
    /// Where the data comes from and its licence.
    pub source: String,
    /// `null` until the first version is published (only staff see such datasets).
    pub latest_version: Option<String>,
    /// Oldest first.
    pub versions: Vec<VersionSummary>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A published version with its files.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VersionDetail {
    #[serde(flatten)]
    pub summary: VersionSummary,
    pub files: Vec<FileEntry>,
}

/// What the next version will hold.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Draft {
    pub files: Vec<FileEntry>,
    pub size: i64,
    pub file_count: i32,
    /// Multipart uploads under way.
    pub uploads: Vec<UploadInfo>,
}

/// `GET /datasets/{name}`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DatasetDetail {
    pub name: String,
    pub title: String,
    pub description: String,
    pub source: String,
    pub latest_version: Option<String>,
    /// Oldest first, each with its files.
    pub versions: Vec<VersionDetail>,
    /// Staff only; `null` for students.
    pub draft: Option<Draft>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A multipart upload under way.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UploadInfo {
    pub id: Uuid,
    pub path: String,
    pub size: i64,
    pub sha256: String,
    pub created_at: DateTime<Utc>,
}

/// One part's presigned PUT URL.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UploadPart {
    /// 1-based.
    pub number: i32,
    pub url: String,
    /// The bytes this part must carry (every part but the last is `part_size`).
    pub size: i64,
}

/// A created multipart upload: PUT each part's bytes to its URL, then complete.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CreatedUpload {
    pub id: Uuid,
    pub path: String,
    pub size: i64,
    pub sha256: String,
    pub part_size: i64,
    pub parts: Vec<UploadPart>,
    /// The part URLs stop working then; the upload is aborted after
    /// `datasets.upload_max_age_seconds`.
    pub expires_at: DateTime<Utc>,
}

/// A new dataset.
#[derive(Debug, Clone)]
pub struct NewDataset {
    pub name: DatasetName,
    pub title: String,
    pub description: String,
    pub source: String,
}

/// A file of a version a run mounts, with where to fetch it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountFile {
    pub path: String,
    pub key: String,
    pub size: u64,
    pub sha256: String,
}

/// A version a run mounts at `$DATA_DIR/{name}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub name: String,
    pub version: i32,
    /// The version's manifest checksum: a worker's cache key.
    pub checksum: String,
    pub files: Vec<MountFile>,
}

impl Mount {
    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// sha256 of `sha256  path\n` lines, sorted by path.
pub fn manifest_checksum(files: &[FileEntry]) -> String {
    let mut sorted: Vec<&FileEntry> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut hasher = Sha256::new();
    for f in sorted {
        hasher.update(format!("{}  {}\n", f.sha256, f.path).as_bytes());
    }
    hex::encode(hasher.finalize())
}

fn is_sha256(raw: &str) -> bool {
    raw.len() == 64
        && raw
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn check_text(what: &str, value: &str, max: usize) -> Result<(), Error> {
    if value.chars().count() > max {
        return Err(Error::Invalid(format!(
            "{what} must be at most {max} characters long"
        )));
    }
    if value.contains('\0') {
        return Err(Error::Invalid(format!("{what} must not contain NUL")));
    }
    Ok(())
}

impl NewDataset {
    pub fn parse(
        name: &str,
        title: &str,
        description: Option<&str>,
        source: Option<&str>,
    ) -> Result<Self, Error> {
        let name = DatasetName::parse(name)?;
        let title = title.trim();
        if title.is_empty() || title.chars().any(char::is_control) {
            return Err(Error::Invalid(
                "title must not be empty nor contain control characters".into(),
            ));
        }
        check_text("title", title, MAX_TITLE_CHARS)?;
        let description = description.unwrap_or_default();
        check_text("description", description, MAX_TEXT_CHARS)?;
        let source = source.unwrap_or_default();
        check_text("source", source, MAX_TEXT_CHARS)?;
        Ok(Self {
            name,
            title: title.to_owned(),
            description: description.to_owned(),
            source: source.to_owned(),
        })
    }
}

fn staff(actor: &Actor) -> Result<(), Error> {
    if actor.role.reads_everything() {
        Ok(())
    } else {
        Err(Error::Forbidden("only teachers and admins change datasets"))
    }
}

fn admin(actor: &Actor) -> Result<(), Error> {
    if actor.role == Role::Admin {
        Ok(())
    } else {
        Err(Error::Forbidden("only admins delete datasets"))
    }
}

fn not_found(name: &str) -> Error {
    Error::NotFound(format!("dataset `{name}` not found"))
}

/// The statuses of runs that still need their datasets.
fn active_statuses() -> Vec<String> {
    let active: Vec<RunStatus> = RunStatus::ALL
        .iter()
        .copied()
        .filter(|s| !s.is_terminal())
        .collect();
    RunStatus::names(&active)
}

struct DatasetRow {
    id: Uuid,
    name: String,
    title: String,
    description: String,
    source: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// The dataset operations on this process's stores, borrowed like [`crate::lifecycle::Lifecycle`].
#[derive(Clone, Copy)]
pub struct Datasets<'a> {
    pub settings: &'a Settings,
    pub db: &'a PgPool,
    pub storage: &'a Storage,
}

impl Datasets<'_> {
    fn objects(name: &str) -> DatasetObjects<'_> {
        DatasetObjects::new(name)
    }

    async fn row(&self, name: &str) -> Result<Option<DatasetRow>, Error> {
        Ok(sqlx::query_as!(
            DatasetRow,
            "SELECT id, name, title, description, source, created_at, updated_at
             FROM datasets WHERE name = $1",
            name
        )
        .fetch_optional(self.db)
        .await?)
    }

    async fn versions_of(
        &self,
        ids: &[Uuid],
    ) -> Result<BTreeMap<Uuid, Vec<(Uuid, VersionSummary)>>, Error> {
        let rows = sqlx::query!(
            "SELECT v.id, v.dataset_id, v.version, v.size, v.file_count, v.published_at,
                    v.checksum, d.name
             FROM dataset_versions v JOIN datasets d ON d.id = v.dataset_id
             WHERE v.dataset_id = ANY($1) ORDER BY v.dataset_id, v.version",
            ids
        )
        .fetch_all(self.db)
        .await?;
        let mut by_dataset: BTreeMap<Uuid, Vec<(Uuid, VersionSummary)>> = BTreeMap::new();
        for r in rows {
            by_dataset.entry(r.dataset_id).or_default().push((
                r.id,
                VersionSummary {
                    version: format!("v{}", r.version),
                    size: r.size,
                    file_count: r.file_count,
                    published_at: r.published_at,
                    checksum: r.checksum,
                    reference: pinned(&r.name, r.version),
                },
            ));
        }
        Ok(by_dataset)
    }

    /// Every dataset the actor may see, by name: students only published ones.
    pub async fn list(&self, actor: &Actor) -> Result<Vec<DatasetSummary>, Error> {
        let rows = sqlx::query_as!(
            DatasetRow,
            "SELECT id, name, title, description, source, created_at, updated_at
             FROM datasets ORDER BY name"
        )
        .fetch_all(self.db)
        .await?;
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let mut versions = self.versions_of(&ids).await?;
        let mut out = Vec::new();
        for r in rows {
            let versions: Vec<VersionSummary> = versions
                .remove(&r.id)
                .unwrap_or_default()
                .into_iter()
                .map(|(_, v)| v)
                .collect();
            if versions.is_empty() && !actor.role.reads_everything() {
                continue;
            }
            out.push(DatasetSummary {
                name: r.name,
                title: r.title,
                description: r.description,
                source: r.source,
                latest_version: versions.last().map(|v| v.version.clone()),
                versions,
                created_at: r.created_at,
                updated_at: r.updated_at,
            });
        }
        Ok(out)
    }

    /// The dataset with its versions' files, and for staff its draft.
    pub async fn get(&self, actor: &Actor, name: &str) -> Result<DatasetDetail, Error> {
        let r = self.row(name).await?.ok_or_else(|| not_found(name))?;
        let versions = self
            .versions_of(&[r.id])
            .await?
            .remove(&r.id)
            .unwrap_or_default();
        let is_staff = actor.role.reads_everything();
        if versions.is_empty() && !is_staff {
            return Err(not_found(name));
        }
        let version_ids: Vec<Uuid> = versions.iter().map(|(id, _)| *id).collect();
        let files = sqlx::query!(
            "SELECT version_id, path, size, sha256 FROM dataset_files
             WHERE version_id = ANY($1) ORDER BY path",
            &version_ids
        )
        .fetch_all(self.db)
        .await?;
        let mut by_version: BTreeMap<Uuid, Vec<FileEntry>> = BTreeMap::new();
        for f in files {
            by_version.entry(f.version_id).or_default().push(FileEntry {
                path: f.path,
                size: f.size,
                sha256: f.sha256,
                url: None,
            });
        }
        let objects = Self::objects(&r.name);
        for (id, summary) in &versions {
            let number = parse_version(&summary.version)?;
            for file in by_version.get_mut(id).into_iter().flatten() {
                file.url = Some(
                    self.storage
                        .presigned_get(&objects.file(number, &file.path))
                        .await?,
                );
            }
        }
        let latest_version = versions.last().map(|(_, v)| v.version.clone());
        let versions = versions
            .into_iter()
            .map(|(id, summary)| VersionDetail {
                summary,
                files: by_version.remove(&id).unwrap_or_default(),
            })
            .collect();
        let draft = if is_staff {
            Some(self.draft(r.id).await?)
        } else {
            None
        };
        Ok(DatasetDetail {
            name: r.name,
            title: r.title,
            description: r.description,
            source: r.source,
            latest_version,
            versions,
            draft,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }

    async fn draft(&self, dataset_id: Uuid) -> Result<Draft, Error> {
        let files: Vec<FileEntry> = sqlx::query_as!(
            FileEntry,
            "SELECT path, size, sha256, NULL::text AS url FROM dataset_draft_files
             WHERE dataset_id = $1 ORDER BY path",
            dataset_id
        )
        .fetch_all(self.db)
        .await?;
        let uploads = sqlx::query_as!(
            UploadInfo,
            "SELECT id, path, size, sha256, created_at FROM dataset_uploads
             WHERE dataset_id = $1 ORDER BY created_at",
            dataset_id
        )
        .fetch_all(self.db)
        .await?;
        Ok(Draft {
            size: files.iter().map(|f| f.size).sum(),
            file_count: files.len() as i32,
            files,
            uploads,
        })
    }

    /// Creates an empty dataset (staff).
    pub async fn create(&self, actor: &Actor, new: NewDataset) -> Result<DatasetDetail, Error> {
        staff(actor)?;
        let name = new.name.as_str();
        let prefix = Self::objects(name).prefix();
        let sweeping = sqlx::query_scalar!(
            "SELECT count(*) AS \"n!\" FROM dataset_sweeps WHERE starts_with(prefix, $1)",
            prefix
        )
        .fetch_one(self.db)
        .await?;
        if sweeping > 0 {
            return Err(Error::Conflict(format!(
                "a deleted dataset named `{name}` is still being removed; try again in a minute"
            )));
        }
        let inserted = sqlx::query!(
            "INSERT INTO datasets (id, name, title, description, source, created_by)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING",
            Uuid::new_v4(),
            name,
            new.title,
            new.description,
            new.source,
            actor.id
        )
        .execute(self.db)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(Error::Conflict(format!("dataset `{name}` exists already")));
        }
        tracing::info!(dataset = %name, "dataset created");
        self.get(actor, name).await
    }

    /// The dataset's id, for a staff write.
    async fn writable(&self, actor: &Actor, name: &str) -> Result<Uuid, Error> {
        staff(actor)?;
        // A name that breaks the rules names no dataset: 404, as for a read.
        DatasetName::parse(name).map_err(|_| not_found(name))?;
        Ok(self.row(name).await?.ok_or_else(|| not_found(name))?.id)
    }

    /// Refuses `adding` bytes (replacing `replacing`) in the draft of `dataset_id` when a quota
    /// would be exceeded, or a file more than `datasets.max_files`.
    async fn check_quota(
        &self,
        conn: &mut sqlx::PgConnection,
        dataset_id: Uuid,
        path: &str,
        adding: u64,
    ) -> Result<(), Error> {
        let q = &self.settings.datasets;
        let draft = sqlx::query!(
            "SELECT coalesce(sum(size) FILTER (WHERE path <> $2), 0)::bigint AS \"size!\",
                    count(*) FILTER (WHERE path <> $2) AS \"files!\"
             FROM dataset_draft_files WHERE dataset_id = $1",
            dataset_id,
            path
        )
        .fetch_one(&mut *conn)
        .await?;
        let after = draft.size.max(0) as u64 + adding;
        if after > q.max_dataset_bytes {
            return Err(Error::TooLarge(format!(
                "a dataset holds at most {} bytes (datasets.max_dataset_bytes); its draft would \
                 hold {after}",
                q.max_dataset_bytes
            )));
        }
        if draft.files + 1 > i64::from(q.max_files) {
            return Err(Error::TooLarge(format!(
                "a dataset holds at most {} files (datasets.max_files)",
                q.max_files
            )));
        }
        let total = self.total_bytes(conn).await?;
        if total.saturating_add(adding) > q.max_total_bytes {
            return Err(Error::TooLarge(format!(
                "all datasets together hold at most {} bytes (datasets.max_total_bytes) and \
                 hold {total} already; delete old versions first",
                q.max_total_bytes
            )));
        }
        Ok(())
    }

    async fn total_bytes(&self, conn: &mut sqlx::PgConnection) -> Result<u64, Error> {
        let total = sqlx::query_scalar!(
            "SELECT (coalesce((SELECT sum(size) FROM dataset_versions), 0)
                   + coalesce((SELECT sum(size) FROM dataset_draft_files), 0))::bigint AS \"n!\""
        )
        .fetch_one(&mut *conn)
        .await?;
        Ok(total.max(0) as u64)
    }

    /// Makes the object at `key` the draft's file at `path`; the file it replaces is swept.
    /// On a refusal the caller removes `key`.
    async fn enter_draft(
        &self,
        dataset_id: Uuid,
        path: &FilePath,
        key: &str,
        size: u64,
        sha256: &str,
        upload: Option<Uuid>,
    ) -> Result<(FileEntry, bool), Error> {
        let mut tx = self.db.begin().await?;
        // One writer of a dataset's draft at a time: the quota and the folder checks hold.
        sqlx::query!(
            "SELECT id FROM datasets WHERE id = $1 FOR UPDATE",
            dataset_id
        )
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| Error::NotFound("dataset not found".into()))?;
        let clash = sqlx::query_scalar!(
            "SELECT path FROM dataset_draft_files
             WHERE dataset_id = $1
               AND (starts_with(path, $2::text || '/') OR starts_with($2::text, path || '/'))
             LIMIT 1",
            dataset_id,
            path.as_str()
        )
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(clash) = clash {
            return Err(Error::Conflict(format!(
                "`{path}` and the draft's `{clash}` cannot both exist (one is a folder of the other)"
            )));
        }
        self.check_quota(&mut tx, dataset_id, path.as_str(), size)
            .await?;
        let old = sqlx::query_scalar!(
            "SELECT object_key FROM dataset_draft_files WHERE dataset_id = $1 AND path = $2",
            dataset_id,
            path.as_str()
        )
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(old) = &old {
            sqlx::query!("INSERT INTO dataset_sweeps (prefix) VALUES ($1)", old)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query!(
            "INSERT INTO dataset_draft_files (dataset_id, path, object_key, size, sha256)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (dataset_id, path) DO UPDATE
                SET object_key = EXCLUDED.object_key, size = EXCLUDED.size,
                    sha256 = EXCLUDED.sha256, updated_at = now()",
            dataset_id,
            path.as_str(),
            key,
            size as i64,
            sha256
        )
        .execute(&mut *tx)
        .await?;
        if let Some(upload) = upload {
            sqlx::query!("DELETE FROM dataset_uploads WHERE id = $1", upload)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query!(
            "UPDATE datasets SET updated_at = now() WHERE id = $1",
            dataset_id
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((
            FileEntry {
                path: path.as_str().to_owned(),
                size: size as i64,
                sha256: sha256.to_owned(),
                url: None,
            },
            old.is_none(),
        ))
    }

    /// Stores a small file (at most `limits.max_file_bytes`, checked by the edge) in the draft;
    /// `true` when it is new.
    pub async fn put_file(
        &self,
        actor: &Actor,
        name: &str,
        path: &FilePath,
        body: Bytes,
    ) -> Result<(FileEntry, bool), Error> {
        let dataset_id = self.writable(actor, name).await?;
        let size = body.len() as u64;
        {
            let mut conn = self.db.acquire().await?;
            self.check_quota(&mut conn, dataset_id, path.as_str(), size)
                .await?;
        }
        let sha256 = hex::encode(Sha256::digest(&body));
        let key = Self::objects(name).draft(Uuid::new_v4());
        self.storage
            .put(&key, body, "application/octet-stream")
            .await?;
        match self
            .enter_draft(dataset_id, path, &key, size, &sha256, None)
            .await
        {
            Ok(entered) => Ok(entered),
            Err(e) => {
                self.remove_quietly(&key).await;
                Err(e)
            }
        }
    }

    async fn remove_quietly(&self, key: &str) {
        if let Err(e) = self.storage.delete_keys(&[key.to_owned()]).await {
            tracing::warn!(%key, error = %e, "cannot remove a refused dataset object; the sweep will");
            let _ = sqlx::query!("INSERT INTO dataset_sweeps (prefix) VALUES ($1)", key)
                .execute(self.db)
                .await;
        }
    }

    /// Removes a file from the draft.
    pub async fn delete_file(
        &self,
        actor: &Actor,
        name: &str,
        path: &FilePath,
    ) -> Result<(), Error> {
        let dataset_id = self.writable(actor, name).await?;
        let mut tx = self.db.begin().await?;
        let key = sqlx::query_scalar!(
            "DELETE FROM dataset_draft_files WHERE dataset_id = $1 AND path = $2 RETURNING object_key",
            dataset_id,
            path.as_str()
        )
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no file `{path}` in the draft of `{name}`")))?;
        sqlx::query!("INSERT INTO dataset_sweeps (prefix) VALUES ($1)", key)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Starts a multipart upload of `size` bytes to the draft's `path`: presigned part URLs
    /// (for `storage.public_endpoint`) the client PUTs to directly.
    pub async fn create_upload(
        &self,
        actor: &Actor,
        name: &str,
        path: &FilePath,
        size: u64,
        sha256: &str,
    ) -> Result<CreatedUpload, Error> {
        let dataset_id = self.writable(actor, name).await?;
        let sha256 = sha256.to_ascii_lowercase();
        if !is_sha256(&sha256) {
            return Err(Error::Invalid(
                "sha256 must be 64 hexadecimal characters".into(),
            ));
        }
        {
            let mut conn = self.db.acquire().await?;
            self.check_quota(&mut conn, dataset_id, path.as_str(), size)
                .await?;
        }
        // Parts of at least 8 MiB, and few enough for S3's 10,000, in whole MiB.
        let mib = 1024 * 1024;
        let part_bytes = (PART_BYTES as u64).max(size.div_ceil(MAX_PARTS).div_ceil(mib) * mib);
        let count = size.div_ceil(part_bytes).max(1);
        let id = Uuid::new_v4();
        let key = Self::objects(name).draft(id);
        let upload_id = self.storage.start_multipart(&key).await?;
        let inserted = sqlx::query!(
            "INSERT INTO dataset_uploads
                (id, dataset_id, path, size, sha256, object_key, s3_upload_id, part_bytes, created_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            id,
            dataset_id,
            path.as_str(),
            size as i64,
            sha256,
            key,
            upload_id,
            part_bytes as i64,
            actor.id
        )
        .execute(self.db)
        .await;
        if let Err(e) = inserted {
            let _ = self.storage.abort_multipart(&key, &upload_id).await;
            return Err(e.into());
        }
        let valid = Duration::from_secs(self.settings.datasets.upload_presign_seconds.max(1));
        let mut parts = Vec::with_capacity(count as usize);
        for n in 1..=count {
            let start = (n - 1) * part_bytes;
            let end = (n * part_bytes).min(size);
            parts.push(UploadPart {
                number: n as i32,
                url: self
                    .storage
                    .presigned_part(&key, &upload_id, n as i32, valid)
                    .await?,
                size: end.saturating_sub(start) as i64,
            });
        }
        tracing::info!(dataset = %name, %path, size, parts = count, "dataset upload created");
        Ok(CreatedUpload {
            id,
            path: path.as_str().to_owned(),
            size: size as i64,
            sha256,
            part_size: part_bytes as i64,
            parts,
            expires_at: Utc::now() + chrono::Duration::seconds(valid.as_secs() as i64),
        })
    }

    /// Completes an upload: S3 assembles the parts, the object is read back and its size and
    /// sha256 checked against the announced ones. A mismatch removes the object and the upload
    /// and stores nothing.
    pub async fn complete_upload(
        &self,
        actor: &Actor,
        name: &str,
        upload: Uuid,
    ) -> Result<(FileEntry, bool), Error> {
        let dataset_id = self.writable(actor, name).await?;
        let row = sqlx::query!(
            "SELECT path, size, sha256, object_key, s3_upload_id FROM dataset_uploads
             WHERE id = $1 AND dataset_id = $2",
            upload,
            dataset_id
        )
        .fetch_optional(self.db)
        .await?
        .ok_or_else(|| Error::NotFound(format!("upload {upload} not found")))?;
        let path = FilePath::parse(&row.path, &self.settings.limits)?;
        let assembled = self
            .storage
            .complete_multipart(&row.object_key, &row.s3_upload_id)
            .await?;
        if !assembled && !self.storage.exists(&row.object_key).await? {
            return Err(Error::Conflict(format!(
                "upload {upload} has no parts yet; PUT each part to its URL first"
            )));
        }
        let got = self.storage.sha256_of(&row.object_key).await?;
        let matches = got
            .as_ref()
            .is_some_and(|(size, sha)| *size == row.size as u64 && *sha == row.sha256);
        if !matches {
            self.remove_quietly(&row.object_key).await;
            sqlx::query!("DELETE FROM dataset_uploads WHERE id = $1", upload)
                .execute(self.db)
                .await?;
            let (size, sha) = got.unwrap_or((0, String::new()));
            tracing::warn!(dataset = %name, %path, "dataset upload refused: checksum mismatch");
            return Err(Error::ChecksumMismatch(format!(
                "the uploaded `{path}` has {size} bytes and sha256 {sha}, not the announced {} \
                 bytes and sha256 {}; nothing was stored, start a new upload",
                row.size, row.sha256
            )));
        }
        match self
            .enter_draft(
                dataset_id,
                &path,
                &row.object_key,
                row.size as u64,
                &row.sha256,
                Some(upload),
            )
            .await
        {
            Ok(entered) => Ok(entered),
            Err(e) => {
                self.remove_quietly(&row.object_key).await;
                let _ = sqlx::query!("DELETE FROM dataset_uploads WHERE id = $1", upload)
                    .execute(self.db)
                    .await;
                Err(e)
            }
        }
    }

    /// The draft becomes the next version `v{N}`: its objects are copied under
    /// `datasets/{name}/v{N}/`, then the version is committed.
    pub async fn publish(&self, actor: &Actor, name: &str) -> Result<VersionDetail, Error> {
        let dataset_id = self.writable(actor, name).await?;
        let mut tx = self.db.begin().await?;
        let next = sqlx::query_scalar!(
            "SELECT next_version FROM datasets WHERE id = $1 FOR UPDATE",
            dataset_id
        )
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| not_found(name))?;
        let draft = sqlx::query!(
            "SELECT path, size, sha256, object_key FROM dataset_draft_files
             WHERE dataset_id = $1 ORDER BY path",
            dataset_id
        )
        .fetch_all(&mut *tx)
        .await?;
        if draft.is_empty() {
            return Err(Error::Conflict(format!(
                "the draft of `{name}` has no files; upload some first"
            )));
        }
        let files: Vec<FileEntry> = draft
            .iter()
            .map(|f| FileEntry {
                path: f.path.clone(),
                size: f.size,
                sha256: f.sha256.clone(),
                url: None,
            })
            .collect();
        let checksum = manifest_checksum(&files);
        let same = sqlx::query_scalar!(
            "SELECT version FROM dataset_versions WHERE dataset_id = $1 AND checksum = $2
             ORDER BY version DESC LIMIT 1",
            dataset_id,
            checksum
        )
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(same) = same {
            return Err(Error::Conflict(format!(
                "the draft holds exactly what v{same} holds; change it before publishing"
            )));
        }
        let size: i64 = files.iter().map(|f| f.size).sum();
        let total = self.total_bytes(&mut tx).await?;
        if total.saturating_add(size.max(0) as u64) > self.settings.datasets.max_total_bytes {
            return Err(Error::TooLarge(format!(
                "all datasets together hold at most {} bytes (datasets.max_total_bytes) and \
                 hold {total} already; delete old versions first",
                self.settings.datasets.max_total_bytes
            )));
        }
        let objects = Self::objects(name);
        for f in &draft {
            self.storage
                .copy(&f.object_key, &objects.file(next, &f.path))
                .await?;
        }
        let version_id = Uuid::new_v4();
        let published_at = sqlx::query_scalar!(
            "INSERT INTO dataset_versions
                (id, dataset_id, version, size, file_count, checksum, published_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING published_at",
            version_id,
            dataset_id,
            next,
            size,
            files.len() as i32,
            checksum,
            actor.id
        )
        .fetch_one(&mut *tx)
        .await?;
        let paths: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
        let sizes: Vec<i64> = files.iter().map(|f| f.size).collect();
        let shas: Vec<String> = files.iter().map(|f| f.sha256.clone()).collect();
        sqlx::query!(
            "INSERT INTO dataset_files (version_id, path, size, sha256)
             SELECT $1::uuid, * FROM unnest($2::text[], $3::bigint[], $4::text[])",
            version_id,
            &paths,
            &sizes,
            &shas
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!(
            "UPDATE datasets SET next_version = next_version + 1, updated_at = now() WHERE id = $1",
            dataset_id
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(dataset = %name, version = next, files = files.len(), size, "dataset version published");
        Ok(VersionDetail {
            summary: VersionSummary {
                version: format!("v{next}"),
                size,
                file_count: files.len() as i32,
                published_at,
                checksum,
                reference: pinned(name, next),
            },
            files,
        })
    }

    /// How many queued or active runs name `name@vN` (any version when `version` is `None`).
    async fn runs_using(
        &self,
        conn: &mut sqlx::PgConnection,
        name: &str,
        version: Option<i32>,
    ) -> Result<i64, Error> {
        let active = active_statuses();
        let exact = version.map(|v| pinned(name, v));
        let prefix = format!("{name}@");
        Ok(sqlx::query_scalar!(
            "SELECT count(*) AS \"n!\" FROM runs
             WHERE status = ANY($1) AND EXISTS (
                SELECT 1 FROM unnest(datasets) d
                WHERE CASE WHEN $2::text IS NULL THEN starts_with(d, $3) OR d = $4
                           ELSE d = $2 END)",
            &active,
            exact,
            prefix,
            name
        )
        .fetch_one(&mut *conn)
        .await?)
    }

    /// Deletes a dataset with every version, draft and upload (admin); its objects go in the
    /// background.
    pub async fn delete(&self, actor: &Actor, name: &str) -> Result<(), Error> {
        admin(actor)?;
        let mut tx = self.db.begin().await?;
        let id = sqlx::query_scalar!("SELECT id FROM datasets WHERE name = $1 FOR UPDATE", name)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| not_found(name))?;
        let using = self.runs_using(&mut tx, name, None).await?;
        if using > 0 {
            return Err(Error::Conflict(format!(
                "{using} queued or active run(s) use dataset `{name}`; delete it once they end"
            )));
        }
        sqlx::query!(
            "INSERT INTO dataset_sweeps (prefix, s3_upload_id)
             SELECT object_key, s3_upload_id FROM dataset_uploads WHERE dataset_id = $1",
            id
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!(
            "INSERT INTO dataset_sweeps (prefix) VALUES ($1)",
            Self::objects(name).prefix()
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!("DELETE FROM datasets WHERE id = $1", id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(dataset = %name, "dataset deleted");
        Ok(())
    }

    /// Deletes one version (admin); its objects go in the background. Its number is not reused.
    pub async fn delete_version(
        &self,
        actor: &Actor,
        name: &str,
        version: i32,
    ) -> Result<(), Error> {
        admin(actor)?;
        let mut tx = self.db.begin().await?;
        let id = sqlx::query_scalar!("SELECT id FROM datasets WHERE name = $1 FOR UPDATE", name)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| not_found(name))?;
        let using = self.runs_using(&mut tx, name, Some(version)).await?;
        if using > 0 {
            return Err(Error::Conflict(format!(
                "{using} queued or active run(s) use `{}`; delete it once they end",
                pinned(name, version)
            )));
        }
        let deleted = sqlx::query!(
            "DELETE FROM dataset_versions WHERE dataset_id = $1 AND version = $2",
            id,
            version
        )
        .execute(&mut *tx)
        .await?;
        if deleted.rows_affected() == 0 {
            return Err(Error::NotFound(format!(
                "dataset `{name}` has no version v{version}"
            )));
        }
        sqlx::query!(
            "INSERT INTO dataset_sweeps (prefix) VALUES ($1)",
            Self::objects(name).version_prefix(version)
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(dataset = %name, version, "dataset version deleted");
        Ok(())
    }
}

/// Resolves what a submission names (`name` or `name@vN`) to exact published versions,
/// `name@vN` each, in order. An unknown dataset or version is [`Error::Invalid`], naming what
/// exists.
pub async fn resolve(db: &PgPool, refs: &[String]) -> Result<Vec<String>, Error> {
    let mut pinned_refs = Vec::with_capacity(refs.len());
    for raw in refs {
        let r = DatasetRef::parse(raw)?;
        let name = r.name.as_str();
        let versions: Vec<i32> = sqlx::query_scalar!(
            "SELECT v.version FROM dataset_versions v JOIN datasets d ON d.id = v.dataset_id
             WHERE d.name = $1 ORDER BY v.version",
            name
        )
        .fetch_all(db)
        .await?;
        let Some(&latest) = versions.last() else {
            let known: Vec<String> = sqlx::query_scalar!(
                "SELECT DISTINCT d.name FROM datasets d JOIN dataset_versions v ON v.dataset_id = d.id
                 ORDER BY d.name"
            )
            .fetch_all(db)
            .await?;
            return Err(Error::Invalid(if known.is_empty() {
                format!("unknown dataset `{name}`; there are no published datasets")
            } else {
                format!(
                    "unknown dataset `{name}`; published datasets: {}",
                    known.join(", ")
                )
            }));
        };
        let version = match r.version {
            None => latest,
            Some(v) if versions.contains(&v) => v,
            Some(v) => {
                let list: Vec<String> = versions.iter().map(|v| format!("v{v}")).collect();
                return Err(Error::Invalid(format!(
                    "dataset `{name}` has no version v{v}; its versions: {}",
                    list.join(", ")
                )));
            }
        };
        let exact = pinned(name, version);
        if pinned_refs.contains(&exact) {
            return Err(Error::Invalid(format!("dataset `{name}` is named twice")));
        }
        pinned_refs.push(exact);
    }
    Ok(pinned_refs)
}

/// The files of each version a run names (`name@vN`, or a bare `name` from before versions:
/// its latest), with their object keys; `None` for one that no longer exists.
pub async fn mounts(db: &PgPool, refs: &[String]) -> Result<Vec<Result<Mount, String>>, Error> {
    let mut out = Vec::with_capacity(refs.len());
    for raw in refs {
        let Ok(r) = DatasetRef::parse(raw) else {
            out.push(Err(raw.clone()));
            continue;
        };
        let name = r.name.as_str();
        let version = sqlx::query!(
            "SELECT v.id, v.version, v.checksum FROM dataset_versions v
             JOIN datasets d ON d.id = v.dataset_id
             WHERE d.name = $1 AND ($2::integer IS NULL OR v.version = $2)
             ORDER BY v.version DESC LIMIT 1",
            name,
            r.version
        )
        .fetch_optional(db)
        .await?;
        let Some(version) = version else {
            out.push(Err(raw.clone()));
            continue;
        };
        let objects = DatasetObjects::new(name);
        let files = sqlx::query!(
            "SELECT path, size, sha256 FROM dataset_files WHERE version_id = $1 ORDER BY path",
            version.id
        )
        .fetch_all(db)
        .await?
        .into_iter()
        .map(|f| MountFile {
            key: objects.file(version.version, &f.path),
            path: f.path,
            size: f.size.max(0) as u64,
            sha256: f.sha256,
        })
        .collect();
        out.push(Ok(Mount {
            name: name.to_owned(),
            version: version.version,
            checksum: version.checksum,
            files,
        }));
    }
    Ok(out)
}

/// What one round of the dataset sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Uploads not completed within `datasets.upload_max_age_seconds`, aborted.
    pub abandoned_uploads: usize,
    /// Prefixes (deleted datasets and versions, replaced draft files) removed.
    pub removed: usize,
    pub failures: usize,
}

/// Aborts abandoned uploads, then removes the objects of deleted datasets, versions and
/// replaced draft files (retrying failures with a growing delay). Rows are claimed with
/// `SKIP LOCKED`, so every worker may sweep.
pub async fn sweep(
    db: &PgPool,
    storage: &Storage,
    max_upload_age: Duration,
) -> Result<Swept, Error> {
    let mut swept = Swept::default();
    swept.abandoned_uploads = sqlx::query!(
        "WITH old AS (
            DELETE FROM dataset_uploads
            WHERE id IN (SELECT id FROM dataset_uploads
                         WHERE created_at < now() - make_interval(secs => $1)
                         LIMIT 100 FOR UPDATE SKIP LOCKED)
            RETURNING object_key, s3_upload_id)
         INSERT INTO dataset_sweeps (prefix, s3_upload_id) SELECT object_key, s3_upload_id FROM old",
        max_upload_age.as_secs_f64()
    )
    .execute(db)
    .await?
    .rows_affected() as usize;

    let mut tx = db.begin().await?;
    let due = sqlx::query!(
        "SELECT id, prefix, s3_upload_id FROM dataset_sweeps WHERE not_before <= now()
         ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED"
    )
    .fetch_all(&mut *tx)
    .await?;
    for row in due {
        let mut result = Ok(());
        if let Some(upload_id) = &row.s3_upload_id {
            result = storage.abort_multipart(&row.prefix, upload_id).await;
        }
        if result.is_ok() {
            result = storage.delete_prefix(&row.prefix).await.map(|_| ());
        }
        match result {
            Ok(()) => {
                sqlx::query!("DELETE FROM dataset_sweeps WHERE id = $1", row.id)
                    .execute(&mut *tx)
                    .await?;
                swept.removed += 1;
            }
            Err(e) => {
                tracing::warn!(prefix = %row.prefix, error = %e, "cannot remove dataset objects; will retry");
                sqlx::query!(
                    "UPDATE dataset_sweeps SET attempts = attempts + 1, last_error = $2,
                        not_before = now() + make_interval(secs =>
                            least(power(2, least(attempts, 20))::bigint, 3600))
                     WHERE id = $1",
                    row.id,
                    e.to_string()
                )
                .execute(&mut *tx)
                .await?;
                swept.failures += 1;
            }
        }
    }
    tx.commit().await?;
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_safe_folder_names() {
        for ok in ["iris", "a", "scores-2024", "x_y", "0abc"] {
            assert!(DatasetName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "_a",
            "A",
            "a/b",
            "..",
            ".x",
            "a@b",
            "a b",
            &"a".repeat(64),
        ] {
            assert!(DatasetName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn references_name_a_dataset_and_maybe_a_version() {
        let r = DatasetRef::parse("iris@v2").unwrap();
        assert_eq!((r.name.as_str(), r.version), ("iris", Some(2)));
        assert_eq!(DatasetRef::parse("iris").unwrap().version, None);
        for bad in [
            "iris@2",
            "iris@v0",
            "iris@v01",
            "iris@v+1",
            "iris@",
            "@v1",
            "iris@v1@v2",
        ] {
            assert!(DatasetRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_manifest_checksum_ignores_order_but_not_content() {
        let a = FileEntry {
            path: "a".into(),
            size: 1,
            sha256: "0".repeat(64),
            url: None,
        };
        let b = FileEntry {
            path: "b".into(),
            size: 1,
            sha256: "1".repeat(64),
            url: None,
        };
        assert_eq!(
            manifest_checksum(&[a.clone(), b.clone()]),
            manifest_checksum(&[b.clone(), a.clone()])
        );
        let mut c = b.clone();
        c.sha256 = "2".repeat(64);
        assert_ne!(
            manifest_checksum(&[a.clone(), b]),
            manifest_checksum(&[a, c])
        );
    }
}
