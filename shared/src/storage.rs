//! S3-compatible object storage (MinIO in a cluster, s3s-fs locally): one bucket laid out as
//! `snapshots/{sha256}.tar.gz`, `runs/{run_id}/…` and `datasets/{name}/…` (the keys are named
//! in [`crate::objects`]). Large objects go up in parts as they are made ([`Upload`]), so no
//! caller holds a whole snapshot or archive in memory.

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use bytes::Bytes;
use secrecy::ExposeSecret;

use crate::config::StorageSettings;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("object storage request failed: {0}")]
    S3(String),
    /// Object storage did not answer, or answered "later" (5xx, 429): worth another try.
    #[error("object storage is unavailable: {0}")]
    Unavailable(String),
}

impl Error {
    /// Whether the failure goes away by itself (see [`crate::transient`]).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }
}

fn s3_error(e: impl std::error::Error) -> Error {
    // The SDK's Display is terse ("service error"); the Debug chain names the cause.
    let debug = format!("{e:?}");
    if crate::transient::s3_debug_is_transient(&debug) {
        Error::Unavailable(debug)
    } else {
        Error::S3(debug)
    }
}

/// The bucket and a client for it; cheap to clone.
#[derive(Clone, Debug)]
pub struct Storage {
    client: Client,
    /// Signs the URLs handed to clients, for `storage.public_endpoint`; never sends a request.
    public: Client,
    bucket: String,
    presign: Duration,
}

fn client_for(settings: &StorageSettings, endpoint: &str) -> Client {
    let credentials = Credentials::new(
        settings.access_key.clone(),
        settings.secret_key.expose_secret().to_owned(),
        None,
        None,
        "coderun-settings",
    );
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new(settings.region.clone()))
        .credentials_provider(credentials)
        .force_path_style(settings.path_style)
        .build();
    Client::from_conf(config)
}

impl Storage {
    /// Builds the client from settings alone, never from the ambient AWS environment, so a
    /// developer's `~/.aws` cannot redirect coderun's storage.
    pub fn new(settings: &StorageSettings) -> Self {
        let public = match settings.public_endpoint.trim() {
            "" => &settings.endpoint,
            public => public,
        };
        Self {
            client: client_for(settings, &settings.endpoint),
            public: client_for(settings, public),
            bucket: settings.bucket.clone(),
            presign: Duration::from_secs(settings.presign_seconds),
        }
    }

    /// Connects, and creates the bucket when it is missing and `create` is set.
    pub async fn connect(settings: &StorageSettings) -> anyhow::Result<Self> {
        let storage = Self::new(settings);
        if storage.check().await.is_err() {
            if !settings.create_bucket {
                anyhow::bail!(
                    "bucket `{}` at {} is not reachable and storage.create_bucket is off",
                    settings.bucket,
                    settings.endpoint
                );
            }
            storage
                .client
                .create_bucket()
                .bucket(&storage.bucket)
                .send()
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot create bucket `{}` at {}: {:?}",
                        settings.bucket,
                        settings.endpoint,
                        e
                    )
                })?;
        }
        Ok(storage)
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Readiness: the bucket answers.
    pub async fn check(&self) -> Result<(), Error> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(s3_error)
    }

    pub async fn put(&self, key: &str, body: Bytes, content_type: &str) -> Result<(), Error> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map(|_| ())
            .map_err(s3_error)
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, Error> {
        let object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(s3_error)?;
        let data = object.body.collect().await.map_err(s3_error)?;
        Ok(data.into_bytes())
    }

    /// The object at `key`, or `None` when there is none.
    pub async fn get_optional(&self, key: &str) -> Result<Option<Bytes>, Error> {
        let object = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(object) => object,
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(s3_error(e)),
        };
        let data = object.body.collect().await.map_err(s3_error)?;
        Ok(Some(data.into_bytes()))
    }

    /// Whether an object exists at `key`.
    pub async fn exists(&self, key: &str) -> Result<bool, Error> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(false),
            Err(e) => Err(s3_error(e)),
        }
    }

    /// Bytes `start..end` (end exclusive, within the object) of the object at `key`.
    pub async fn get_range(&self, key: &str, start: u64, end: u64) -> Result<Bytes, Error> {
        if end <= start {
            return Ok(Bytes::new());
        }
        let object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes={start}-{}", end - 1))
            .send()
            .await
            .map_err(s3_error)?;
        let data = object.body.collect().await.map_err(s3_error)?;
        Ok(data.into_bytes())
    }

    /// [`get_range`](Self::get_range), or `None` when there is no object at `key`.
    pub async fn get_range_optional(
        &self,
        key: &str,
        start: u64,
        end: u64,
    ) -> Result<Option<Bytes>, Error> {
        let object = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes={start}-{}", end.max(start + 1) - 1))
            .send()
            .await
        {
            Ok(object) => object,
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(s3_error(e)),
        };
        let data = object.body.collect().await.map_err(s3_error)?;
        Ok(Some(data.into_bytes()))
    }

    /// Starts a multipart upload to `key`: the object appears only when it is
    /// [completed](Upload::complete), so a reader never sees half of it.
    pub async fn upload(&self, key: &str, content_type: &str) -> Result<Upload, Error> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .send()
            .await
            .map_err(s3_error)?;
        let id = created
            .upload_id()
            .ok_or_else(|| Error::S3("the multipart upload has no id".into()))?
            .to_owned();
        Ok(Upload {
            storage: self.clone(),
            key: key.to_owned(),
            id,
            parts: Vec::new(),
        })
    }

    /// Deletes every object below `prefix` (up to 1000 per request); returns how many.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize, Error> {
        let keys: Vec<String> = self
            .list(prefix)
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        self.delete_keys(&keys).await?;
        Ok(keys.len())
    }

    /// Deletes the objects at `keys` (missing ones are no error).
    pub async fn delete_keys(&self, keys: &[String]) -> Result<(), Error> {
        for chunk in keys.chunks(1000) {
            let objects = chunk
                .iter()
                .map(|key| {
                    ObjectIdentifier::builder()
                        .key(key)
                        .build()
                        .map_err(s3_error)
                })
                .collect::<Result<Vec<_>, Error>>()?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(s3_error)?;
            self.client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(s3_error)?;
        }
        Ok(())
    }

    /// A time-limited GET URL for `key` to hand to a client: signed for
    /// `storage.public_endpoint`, valid for `storage.presign_seconds`.
    pub async fn presigned_get(&self, key: &str) -> Result<String, Error> {
        Self::presign_get_with(&self.public, &self.bucket, key, self.presign).await
    }

    /// A GET URL for `key` a server fetches itself (`storage.endpoint`), valid for
    /// `storage.presign_seconds`.
    pub async fn presigned_get_internal(&self, key: &str) -> Result<String, Error> {
        self.presigned_get_for(key, self.presign).await
    }

    /// A GET URL for `key` for the servers and the pods they start (`storage.endpoint`),
    /// valid for `valid`.
    pub async fn presigned_get_for(&self, key: &str, valid: Duration) -> Result<String, Error> {
        Self::presign_get_with(&self.client, &self.bucket, key, valid).await
    }

    async fn presign_get_with(
        client: &Client,
        bucket: &str,
        key: &str,
        valid: Duration,
    ) -> Result<String, Error> {
        let config = PresigningConfig::expires_in(valid).map_err(s3_error)?;
        let request = client
            .get_object()
            .bucket(bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(s3_error)?;
        Ok(request.uri().to_string())
    }

    /// A PUT URL for `key`, valid for `valid`: how a pod uploads without a credential.
    pub async fn presigned_put(&self, key: &str, valid: Duration) -> Result<String, Error> {
        let config = PresigningConfig::expires_in(valid).map_err(s3_error)?;
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(s3_error)?;
        Ok(request.uri().to_string())
    }

    /// Every object key below `prefix` with its size.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, Error> {
        let mut objects = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(s3_error)?;
            for object in page.contents() {
                if let Some(key) = object.key() {
                    objects.push((key.to_owned(), object.size().unwrap_or(0).max(0) as u64));
                }
            }
        }
        Ok(objects)
    }

    /// Copies the object at `from` to `to` inside the bucket (server side; up to 5 GiB).
    pub async fn copy(&self, from: &str, to: &str) -> Result<(), Error> {
        self.client
            .copy_object()
            .bucket(&self.bucket)
            .copy_source(format!("{}/{}", self.bucket, encode_key(from)))
            .key(to)
            .send()
            .await
            .map(|_| ())
            .map_err(s3_error)
    }

    /// The size and sha256 (hex) of the object at `key`, read back as a stream (never whole in
    /// memory), or `None` when there is none.
    pub async fn sha256_of(&self, key: &str) -> Result<Option<(u64, String)>, Error> {
        use sha2::{Digest, Sha256};
        let object = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(object) => object,
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(s3_error(e)),
        };
        let mut body = object.body;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = body.try_next().await.map_err(s3_error)? {
            size += chunk.len() as u64;
            hasher.update(&chunk);
        }
        Ok(Some((size, hex::encode(hasher.finalize()))))
    }

    /// Starts a multipart upload a client sends itself (through [`presigned_part`]); returns
    /// its S3 upload id.
    ///
    /// [`presigned_part`]: Self::presigned_part
    pub async fn start_multipart(&self, key: &str) -> Result<String, Error> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/octet-stream")
            .send()
            .await
            .map_err(s3_error)?;
        created
            .upload_id()
            .map(str::to_owned)
            .ok_or_else(|| Error::S3("the multipart upload has no id".into()))
    }

    /// A PUT URL of part `number` of a client's multipart upload, signed for
    /// `storage.public_endpoint`.
    pub async fn presigned_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        valid: Duration,
    ) -> Result<String, Error> {
        let config = PresigningConfig::expires_in(valid).map_err(s3_error)?;
        let request = self
            .public
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .presigned(config)
            .await
            .map_err(s3_error)?;
        Ok(request.uri().to_string())
    }

    /// Completes a client's multipart upload with the parts S3 holds (listed, so the client
    /// need not report ETags). `Ok(false)`: no part arrived, or the upload is gone.
    pub async fn complete_multipart(&self, key: &str, upload_id: &str) -> Result<bool, Error> {
        let mut parts = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let listed = match self
                .client
                .list_parts()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .set_part_number_marker(marker.clone())
                .send()
                .await
            {
                Ok(listed) => listed,
                Err(e) if e.as_service_error().and_then(|e| e.code()) == Some("NoSuchUpload") => {
                    return Ok(false);
                }
                Err(e) => return Err(s3_error(e)),
            };
            for part in listed.parts() {
                parts.push(
                    CompletedPart::builder()
                        .set_e_tag(part.e_tag().map(str::to_owned))
                        .set_part_number(part.part_number())
                        .build(),
                );
            }
            if listed.is_truncated() == Some(true) {
                marker = listed.next_part_number_marker().map(str::to_owned);
                if marker.is_none() {
                    break;
                }
            } else {
                break;
            }
        }
        if parts.is_empty() {
            return Ok(false);
        }
        parts.sort_by_key(|p| p.part_number());
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map(|_| true)
            .map_err(s3_error)
    }

    /// Aborts a multipart upload (its parts go); one that is gone already is no error.
    pub async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), Error> {
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_upload()) => Ok(()),
            Err(e) => Err(s3_error(e)),
        }
    }
}

/// A key as a `CopySource` wants it: percent-encoded, `/` kept.
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// S3 refuses parts below 5 MiB except the last; parts of this size keep a streaming writer's
/// memory at a few of them.
pub const PART_BYTES: usize = 8 * 1024 * 1024;

/// A multipart upload under way. Dropping it without [`complete`](Self::complete) leaves the
/// parts to [`abort`](Self::abort) or to the bucket's lifecycle rule for abandoned uploads.
pub struct Upload {
    storage: Storage,
    key: String,
    id: String,
    parts: Vec<CompletedPart>,
}

impl Upload {
    /// Uploads the next part (every part but the last at least 5 MiB).
    pub async fn part(&mut self, body: Bytes) -> Result<(), Error> {
        let number = self.parts.len() as i32 + 1;
        let sent = self
            .storage
            .client
            .upload_part()
            .bucket(&self.storage.bucket)
            .key(&self.key)
            .upload_id(&self.id)
            .part_number(number)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(s3_error)?;
        self.parts.push(
            CompletedPart::builder()
                .set_e_tag(sent.e_tag().map(str::to_owned))
                .part_number(number)
                .build(),
        );
        Ok(())
    }

    /// Makes the object appear at its key. An upload with no part gets one empty part.
    pub async fn complete(mut self) -> Result<(), Error> {
        if self.parts.is_empty() {
            self.part(Bytes::new()).await?;
        }
        let parts = std::mem::take(&mut self.parts);
        self.storage
            .client
            .complete_multipart_upload()
            .bucket(&self.storage.bucket)
            .key(&self.key)
            .upload_id(&self.id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map(|_| ())
            .map_err(s3_error)
    }

    /// Discards the parts; the key is left as it was.
    pub async fn abort(self) {
        if let Err(e) = self
            .storage
            .client
            .abort_multipart_upload()
            .bucket(&self.storage.bucket)
            .key(&self.key)
            .upload_id(&self.id)
            .send()
            .await
        {
            tracing::warn!(key = %self.key, error = ?e, "cannot abort a multipart upload; the lifecycle rule will");
        }
    }
}
