//! Presigned URLs for the objects a Job moves — the code bundle and dataset objects (GET) and
//! the outputs archive (PUT) — with lifetimes of the executor's choosing, so the pod never
//! holds a credential (invariant 7).
//!
//! A client of its own, built from the storage settings like `Storage`'s: `Storage` presigns
//! GETs only, with one lifetime for every URL the API hands out.

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::presigning::PresigningConfig;
use coderun_shared::config::StorageSettings;
use secrecy::ExposeSecret;

#[derive(Clone, Debug)]
pub struct Presigner {
    client: Client,
    bucket: String,
}

impl Presigner {
    pub fn new(settings: &StorageSettings) -> Self {
        let credentials = Credentials::new(
            settings.access_key.clone(),
            settings.secret_key.expose_secret().to_owned(),
            None,
            None,
            "coderun-settings",
        );
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(&settings.endpoint)
            .region(Region::new(settings.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(settings.path_style)
            .build();
        Self {
            client: Client::from_conf(config),
            bucket: settings.bucket.clone(),
        }
    }

    /// A GET URL of `key`, valid for `valid`.
    pub async fn get(&self, key: &str, valid: Duration) -> anyhow::Result<String> {
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(PresigningConfig::expires_in(valid)?)
            .await?;
        Ok(request.uri().to_string())
    }

    /// A PUT URL of `key`, valid for `valid`.
    pub async fn put(&self, key: &str, valid: Duration) -> anyhow::Result<String> {
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(PresigningConfig::expires_in(valid)?)
            .await?;
        Ok(request.uri().to_string())
    }
}
