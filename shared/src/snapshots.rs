//! Code snapshots: a task's files at submit time as one deterministic `.tar.gz`, stored once per
//! content at `snapshots/{sha256}.tar.gz` and shared by every run of the same code — so
//! resubmitting unchanged code, or retrying, uploads nothing.
//!
//! The bundle is built as the files are read from Postgres, never whole in memory: a first pass
//! ([`read_task`], the same statement that reads the task for its authorisation) hashes it,
//! keeping the bytes only when they fit in one upload part. Most submits stop there: the bucket
//! holds that content already. Otherwise a kept bundle is uploaded as is ([`store_kept`]), and a
//! bigger one is built again by [`store`], whose two passes run over one database snapshot (a
//! repeatable-read transaction) and upload it in parts as it is made. Memory is bounded by a
//! file and a few parts, whatever the task's size.
//!
//! The `snapshots` table says which contents are stored. A submit claims its row (bumping
//! `last_used_at`) before uploading, and the run's commit holds the content with a shared
//! advisory lock (`admit_run`, migrations 0006 and 0009); the sweep deletes only rows no kept
//! run references and nobody used for a grace period, under the exclusive side of that lock,
//! which waits for such commits, so it never removes a snapshot a submit is about to use.

use std::io::{self, Write};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::bundle::BundleWriter;
use crate::objects::RunObjects;
use crate::storage::{self, PART_BYTES, Storage};
use crate::tasks::Task;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Storage(#[from] storage::Error),
    #[error("the code bundle cannot be built: {0}")]
    Bundle(#[from] io::Error),
    #[error("the snapshot's two passes differ ({first} then {second})")]
    Unstable { first: String, second: String },
    #[error("the bundle builder stopped: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// A stored snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Lower-case hex sha256 of the `.tar.gz`: its name and its checksum.
    pub sha256: String,
    /// Bytes of the `.tar.gz`.
    pub size: u64,
    /// Whether this call uploaded it (false: the bucket held it already).
    pub uploaded: bool,
}

/// Builds the snapshot of the task's files and makes sure the bucket holds it.
pub async fn store(db: &PgPool, storage: &Storage, task_id: Uuid) -> Result<Snapshot, Error> {
    let mut tx = db.begin().await?;
    // Both passes must see the same files, whatever is saved meanwhile.
    sqlx::query!("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let first = build(&mut tx, task_id, None).await?;
    let mut snapshot = Snapshot {
        sha256: first.sha256.clone(),
        size: first.size,
        uploaded: false,
    };
    if claim(db, &snapshot.sha256, snapshot.size).await? {
        return Ok(snapshot);
    }
    let key = RunObjects::snapshot(&snapshot.sha256);
    match first.kept {
        Some(bytes) => {
            storage
                .put(&key, Bytes::from(bytes), "application/gzip")
                .await?
        }
        None => {
            let upload = storage.upload(&key, "application/gzip").await?;
            let (parts, mut received) = mpsc::channel::<Bytes>(1);
            let uploading = async move {
                let mut upload = upload;
                while let Some(part) = received.recv().await {
                    if let Err(e) = upload.part(part).await {
                        return (upload, Err(e));
                    }
                }
                (upload, Ok(()))
            };
            let (second, (upload, sent)) =
                tokio::join!(build(&mut tx, task_id, Some(parts)), uploading);
            let second = match (second, sent) {
                (Ok(second), Ok(())) => second,
                (Err(e), _) => {
                    upload.abort().await;
                    return Err(e);
                }
                (_, Err(e)) => {
                    upload.abort().await;
                    return Err(e.into());
                }
            };
            if second.sha256 != snapshot.sha256 {
                upload.abort().await;
                return Err(Error::Unstable {
                    first: snapshot.sha256,
                    second: second.sha256,
                });
            }
            upload.complete().await?;
        }
    }
    tx.rollback().await?;
    sqlx::query!(
        "UPDATE snapshots SET stored = true, last_used_at = now() WHERE sha256 = $1",
        &snapshot.sha256
    )
    .execute(db)
    .await?;
    snapshot.uploaded = true;
    Ok(snapshot)
}

/// The first pass of a submit's snapshot: the bundle's name and size, and its bytes when it
/// fits in one upload part.
#[derive(Debug, Clone)]
pub struct Hashed {
    pub sha256: String,
    pub size: u64,
    /// The whole bundle, when it fits in one part; `None` for a bigger one (then
    /// [`store`] builds it again to upload it).
    pub kept: Option<Vec<u8>>,
}

/// Tasks up to this many bytes of files are packed on the request's own thread: a hop to the
/// blocking pool costs more than packing them.
const PACK_INLINE_BYTES: i64 = 64 * 1024;

/// Reads the task and its files in one statement (one consistent view, no transaction) and
/// hashes the bundle as the rows arrive. `allowed` sees the task first: when it says no,
/// nothing more is read and no bundle is built (`None`). `Ok(None)`: no such task.
pub async fn read_task(
    db: &PgPool,
    task_id: Uuid,
    allowed: impl FnOnce(&Task) -> bool,
) -> Result<Option<(Task, Option<Hashed>)>, Error> {
    let mut rows = sqlx::query!(
        r#"SELECT t.id, t.owner_id, t.name, t.language, t.description, t.main_file, t.command,
                  t.created_at, t.updated_at, t.total_size, t.file_count,
                  f.path AS "path?", f.content AS "content?"
           FROM tasks t LEFT JOIN task_files f ON f.task_id = t.id
           WHERE t.id = $1 ORDER BY f.path"#,
        task_id,
    )
    .fetch(db);
    let Some(first) = rows.try_next().await? else {
        return Ok(None);
    };
    let task = Task {
        id: first.id,
        owner_id: first.owner_id,
        name: first.name,
        language: first.language,
        description: first.description,
        main_file: first.main_file,
        command: first.command,
        created_at: first.created_at,
        updated_at: first.updated_at,
        total_size: first.total_size,
        file_count: first.file_count,
    };
    if !allowed(&task) {
        return Ok(Some((task, None)));
    }
    let first_file = first.path.zip(first.content);
    let files = futures::stream::iter(first_file.map(Ok))
        .chain(rows.try_filter_map(|row| futures::future::ready(Ok(row.path.zip(row.content)))));
    let built = if task.total_size <= PACK_INLINE_BYTES {
        let mut writer = BundleWriter::new(PartSink::new(None));
        let mut files = std::pin::pin!(files);
        while let Some((path, content)) = files.try_next().await? {
            writer.add(&path, content.as_bytes())?;
        }
        writer.finish()?.finish()?
    } else {
        pack(files, None).await?
    };
    let hashed = Hashed {
        sha256: built.sha256,
        size: built.size,
        kept: built.kept,
    };
    Ok(Some((task, Some(hashed))))
}

/// Makes sure the bucket holds the bundle a first pass kept whole: claims its row, and
/// uploads it only when the bucket does not hold it yet.
pub async fn store_kept(
    db: &PgPool,
    storage: &Storage,
    sha256: &str,
    bytes: &[u8],
) -> Result<Snapshot, Error> {
    let size = bytes.len() as u64;
    let mut snapshot = Snapshot {
        sha256: sha256.to_owned(),
        size,
        uploaded: false,
    };
    if claim(db, sha256, size).await? {
        return Ok(snapshot);
    }
    storage
        .put(
            &RunObjects::snapshot(sha256),
            Bytes::copy_from_slice(bytes),
            "application/gzip",
        )
        .await?;
    sqlx::query!(
        "UPDATE snapshots SET stored = true, last_used_at = now() WHERE sha256 = $1",
        sha256
    )
    .execute(db)
    .await?;
    snapshot.uploaded = true;
    Ok(snapshot)
}

/// Claims the snapshot row for a submit about to use it (creating it, or bumping its
/// `last_used_at` so the sweep leaves it alone); returns whether the object is stored.
///
/// A row used in the last [`CLAIM_FRESH_SECONDS`] is only read: a class submitting the same
/// starter code would otherwise queue every submit behind one row's update and its commit.
/// The bump only keeps the sweep from choosing the row; what makes the run safe is
/// `admit_run`'s shared lock and its `stored` check (`snapshot_gone` stores it again).
async fn claim(db: &PgPool, sha256: &str, size: u64) -> Result<bool, sqlx::Error> {
    let fresh = sqlx::query_scalar!(
        "SELECT stored FROM snapshots
         WHERE sha256 = $1 AND last_used_at > now() - make_interval(secs => $2)",
        sha256,
        CLAIM_FRESH_SECONDS
    )
    .fetch_optional(db)
    .await?;
    if let Some(stored) = fresh {
        return Ok(stored);
    }
    sqlx::query_scalar!(
        "INSERT INTO snapshots (sha256, size) VALUES ($1, $2)
         ON CONFLICT (sha256) DO UPDATE SET last_used_at = now()
         RETURNING stored",
        sha256,
        (size as i64)
    )
    .fetch_one(db)
    .await
}

/// How recent a claim of a snapshot row makes another claim a read (see [`claim`]).
const CLAIM_FRESH_SECONDS: f64 = 10.0;

/// What one pass produced.
struct Built {
    sha256: String,
    size: u64,
    /// The whole bundle, when it fit in one part and no part was sent.
    kept: Option<Vec<u8>>,
}

/// One pass over the task's files, in path order: a blocking thread packs what an async reader
/// hands it one file at a time, hashing as it goes and either keeping the bytes (up to one
/// part) or sending them on as parts.
async fn build(
    conn: &mut PgConnection,
    task_id: Uuid,
    parts: Option<mpsc::Sender<Bytes>>,
) -> Result<Built, Error> {
    let rows = sqlx::query!(
        "SELECT path, content FROM task_files WHERE task_id = $1 ORDER BY path",
        task_id,
    )
    .fetch(&mut *conn)
    .map_ok(|row| (row.path, row.content));
    pack(rows, parts).await
}

/// Packs `files` (in the order given) on a blocking thread, which an async reader hands one
/// file at a time.
async fn pack(
    rows: impl futures::Stream<Item = Result<(String, String), sqlx::Error>>,
    parts: Option<mpsc::Sender<Bytes>>,
) -> Result<Built, Error> {
    let (files, mut to_pack) = mpsc::channel::<(String, String)>(1);
    let packer = tokio::task::spawn_blocking(move || -> io::Result<Built> {
        let mut writer = BundleWriter::new(PartSink::new(parts));
        while let Some((path, content)) = to_pack.blocking_recv() {
            writer.add(&path, content.as_bytes())?;
        }
        writer.finish()?.finish()
    });
    let mut rows = std::pin::pin!(rows);
    let mut read = Ok(());
    while let Some(row) = rows.try_next().await.transpose() {
        match row {
            Ok(row) => {
                if files.send(row).await.is_err() {
                    break; // the packer failed; its error says why
                }
            }
            Err(e) => {
                read = Err(e);
                break;
            }
        }
    }
    drop(rows);
    drop(files);
    let built = packer.await??;
    read?;
    Ok(built)
}

/// Where the packer writes: hashes and counts every byte, and keeps them (up to one part) or
/// sends them on in parts of [`PART_BYTES`].
struct PartSink {
    hash: Sha256,
    size: u64,
    buffer: Vec<u8>,
    parts: Option<mpsc::Sender<Bytes>>,
    /// Keeping mode only: the bundle outgrew one part, so nothing is kept.
    overflowed: bool,
}

impl PartSink {
    fn new(parts: Option<mpsc::Sender<Bytes>>) -> Self {
        Self {
            hash: Sha256::new(),
            size: 0,
            buffer: Vec::new(),
            parts,
            overflowed: false,
        }
    }

    fn send(&mut self) -> io::Result<()> {
        let part = Bytes::from(std::mem::take(&mut self.buffer));
        let parts = self.parts.as_ref().expect("sending mode");
        parts
            .blocking_send(part)
            .map_err(|_| io::Error::other("the upload of the snapshot stopped"))
    }

    fn finish(mut self) -> io::Result<Built> {
        let kept = if self.parts.is_some() {
            if !self.buffer.is_empty() {
                self.send()?;
            }
            None
        } else if self.overflowed {
            None
        } else {
            Some(std::mem::take(&mut self.buffer))
        };
        Ok(Built {
            sha256: hex::encode(self.hash.finalize()),
            size: self.size,
            kept,
        })
    }
}

impl Write for PartSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.hash.update(data);
        self.size += data.len() as u64;
        if self.parts.is_some() {
            self.buffer.extend_from_slice(data);
            if self.buffer.len() >= PART_BYTES {
                self.send()?;
            }
        } else if !self.overflowed {
            if self.buffer.len() + data.len() > PART_BYTES {
                self.overflowed = true;
                self.buffer = Vec::new();
            } else {
                self.buffer.extend_from_slice(data);
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(files: &[(String, String)], parts: Option<mpsc::Sender<Bytes>>) -> Built {
        let mut writer = BundleWriter::new(PartSink::new(parts));
        for (path, content) in files {
            writer.add(path, content.as_bytes()).unwrap();
        }
        writer.finish().unwrap().finish().unwrap()
    }

    #[test]
    fn a_streamed_bundle_has_the_bytes_and_hash_of_one_built_in_memory() {
        let files: Vec<(String, String)> = (0..40)
            .map(|i| {
                // Content that barely compresses (xorshift letters), so the bundle spans
                // several parts.
                let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (i + 1);
                let content: String = (0..400_000)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        char::from(b'a' + (state % 26) as u8)
                    })
                    .collect();
                (format!("f{i:02}.txt"), content)
            })
            .collect();
        let whole = crate::bundle::create(&files).unwrap();
        assert!(whole.bytes.len() > PART_BYTES, "more than one part");

        let kept = pack(&files[..1], None);
        let small = crate::bundle::create(&files[..1]).unwrap();
        assert_eq!(kept.sha256, small.sha256);
        assert_eq!(kept.kept.as_deref(), Some(&small.bytes[..]));

        let hashed = pack(&files, None);
        assert_eq!(hashed.sha256, whole.sha256);
        assert_eq!(hashed.size, whole.bytes.len() as u64);
        assert!(hashed.kept.is_none(), "more than a part is never kept");

        let (sender, mut receiver) = mpsc::channel(64);
        let sent = std::thread::spawn(move || pack(&files, Some(sender)));
        let mut joined = Vec::new();
        let mut sizes = Vec::new();
        while let Some(part) = receiver.blocking_recv() {
            sizes.push(part.len());
            joined.extend_from_slice(&part);
        }
        let sent = sent.join().unwrap();
        assert_eq!(joined, whole.bytes);
        assert_eq!(sent.sha256, whole.sha256);
        let (last, full) = sizes.split_last().unwrap();
        assert!(full.iter().all(|&n| n >= PART_BYTES), "{sizes:?}");
        assert!(*last > 0);
    }
}
