//! A task's files as a zip archive, written as they are read from Postgres: one query streams
//! the rows (one consistent snapshot of the task), a blocking thread deflates them into a zip
//! that needs no seeking (sizes and checksums follow each file in a data descriptor), and the
//! bytes leave in small chunks — to an HTTP body, or in parts to the bucket. Memory is bounded
//! by a file and a few chunks, whatever the task's size.

use std::io::{self, Write};

use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use sqlx::PgPool;
use tokio::sync::mpsc;
use uuid::Uuid;
use zip::write::SimpleFileOptions;

use crate::storage::{self, PART_BYTES, Storage};

/// Bytes sent to an HTTP body at a time.
const BODY_CHUNK: usize = 64 * 1024;

type File = Result<(String, String), String>;

/// The zip of the task's files as a stream of chunks. A failure half-way ends the stream with
/// an error, so the client sees a broken download rather than a zip missing files.
pub fn stream(db: PgPool, task_id: Uuid) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let (chunks, received) = mpsc::channel::<io::Result<Bytes>>(2);
    start(db, task_id, chunks, BODY_CHUNK);
    futures::stream::unfold(received, |mut received| async move {
        received.recv().await.map(|chunk| (chunk, received))
    })
}

/// Builds the zip of the task's files into the bucket at `key`, in parts as it is made.
pub async fn upload(
    db: PgPool,
    storage: &Storage,
    task_id: Uuid,
    key: &str,
) -> Result<(), storage::Error> {
    let (chunks, mut received) = mpsc::channel::<io::Result<Bytes>>(1);
    start(db, task_id, chunks, PART_BYTES);
    let mut upload = storage.upload(key, "application/zip").await?;
    while let Some(chunk) = received.recv().await {
        let sent = match chunk {
            Ok(part) => upload.part(part).await,
            Err(e) => Err(storage::Error::S3(format!(
                "building the archive failed: {e}"
            ))),
        };
        if let Err(e) = sent {
            upload.abort().await;
            return Err(e);
        }
    }
    upload.complete().await
}

/// Starts the reader (an async task) and the packer (a blocking thread).
fn start(db: PgPool, task_id: Uuid, chunks: mpsc::Sender<io::Result<Bytes>>, chunk_size: usize) {
    let (files, to_pack) = mpsc::channel::<File>(1);
    tokio::spawn(async move {
        let mut rows = sqlx::query!(
            "SELECT path, content FROM task_files WHERE task_id = $1 ORDER BY path",
            task_id,
        )
        .fetch(&db)
        .map_ok(|row| (row.path, row.content));
        loop {
            let next = match rows.try_next().await {
                Ok(Some(row)) => Ok(row),
                Ok(None) => break,
                Err(e) => Err(format!("reading the task's files: {e}")),
            };
            let failed = next.is_err();
            if files.send(next).await.is_err() || failed {
                break;
            }
        }
    });
    tokio::task::spawn_blocking(move || {
        let out = ChunkWriter {
            buffer: Vec::with_capacity(chunk_size),
            chunk_size,
            chunks: chunks.clone(),
        };
        if let Err(e) = pack(to_pack, out) {
            let _ = chunks.blocking_send(Err(e));
        }
    });
}

fn pack(mut files: mpsc::Receiver<File>, out: ChunkWriter) -> io::Result<()> {
    let mut zip = zip::ZipWriter::new_stream(out);
    let options = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o644);
    while let Some(file) = files.blocking_recv() {
        let (path, content) = file.map_err(io::Error::other)?;
        zip.start_file(path, options).map_err(io::Error::other)?;
        zip.write_all(content.as_bytes())?;
    }
    let mut out = zip.finish().map_err(io::Error::other)?.into_inner();
    out.send()
}

/// Collects what the zip writer writes and sends it on in chunks of `chunk_size`.
struct ChunkWriter {
    buffer: Vec<u8>,
    chunk_size: usize,
    chunks: mpsc::Sender<io::Result<Bytes>>,
}

impl ChunkWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(self.chunk_size),
        ));
        self.chunks
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the archive's reader left"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= self.chunk_size {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
