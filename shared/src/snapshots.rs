//! Code snapshots: a task's files at submit time as one deterministic `.tar.gz`, stored once per
//! content at `snapshots/{sha256}.tar.gz` and shared by every run of the same code — so
//! resubmitting unchanged code, or retrying, uploads nothing.
//!
//! The bundle is built as the files are read from Postgres, never whole in memory: a first pass
//! hashes it (keeping the bytes only when they fit in one upload part); when the bucket does not
//! hold that content yet, a second pass over the same database snapshot (one repeatable-read
//! transaction) uploads it in parts as it is made. Memory is bounded by a file and a few parts,
//! whatever the task's size.
//!
//! The `snapshots` table says which contents are stored. A submit claims its row (bumping
//! `last_used_at`) before uploading, and the run's insert checks the row again under a lock;
//! the sweep deletes only rows no kept run references and nobody used for a grace period, under
//! a row lock, so it never removes a snapshot a submit is about to use.

use std::io::{self, Write};

use bytes::Bytes;
use futures::TryStreamExt;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::bundle::BundleWriter;
use crate::objects::RunObjects;
use crate::storage::{self, PART_BYTES, Storage};

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

/// Claims the snapshot row for a submit about to use it (creating it, or bumping its
/// `last_used_at` so the sweep leaves it alone); returns whether the object is stored.
async fn claim(db: &PgPool, sha256: &str, size: u64) -> Result<bool, sqlx::Error> {
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

/// Inside the transaction that inserts a run: locks the snapshot's row against the sweep and
/// says whether it is still stored. `false` means the sweep removed it meanwhile (or it was
/// never recorded, for a run from before snapshots were shared): store it again, or refuse.
pub async fn hold(conn: &mut PgConnection, sha256: &str) -> Result<bool, sqlx::Error> {
    let held: Option<bool> = sqlx::query_scalar!(
        "UPDATE snapshots SET last_used_at = now() WHERE sha256 = $1 AND stored RETURNING stored",
        sha256
    )
    .fetch_optional(conn)
    .await?;
    Ok(held.is_some())
}

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
    let (files, mut to_pack) = mpsc::channel::<(String, String)>(1);
    let packer = tokio::task::spawn_blocking(move || -> io::Result<Built> {
        let mut writer = BundleWriter::new(PartSink::new(parts));
        while let Some((path, content)) = to_pack.blocking_recv() {
            writer.add(&path, content.as_bytes())?;
        }
        writer.finish()?.finish()
    });
    let mut rows = sqlx::query!(
        "SELECT path, content FROM task_files WHERE task_id = $1 ORDER BY path",
        task_id,
    )
    .fetch(&mut *conn)
    .map_ok(|row| (row.path, row.content));
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

/// Bytes a user's kept runs hold in the bucket: their logs, their outputs and the snapshots
/// they use (each snapshot once, however many of the user's runs share it).
pub async fn usage_of(db: &PgPool, owner_id: Uuid) -> Result<u64, sqlx::Error> {
    let bytes = sqlx::query_scalar!(
        r#"SELECT (
            coalesce((SELECT sum(coalesce(log_bytes, 0)) FROM runs
                      WHERE owner_id = $1 AND purged_at IS NULL), 0)
          + coalesce((SELECT sum(o.size) FROM run_outputs o JOIN runs r ON r.id = o.run_id
                      WHERE r.owner_id = $1 AND r.purged_at IS NULL), 0)
          + coalesce((SELECT sum(s.size) FROM snapshots s WHERE s.sha256 IN
                      (SELECT code_sha256 FROM runs WHERE owner_id = $1 AND purged_at IS NULL)), 0)
         )::bigint AS "bytes!""#,
        owner_id
    )
    .fetch_one(db)
    .await?;
    Ok(bytes.max(0) as u64)
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
