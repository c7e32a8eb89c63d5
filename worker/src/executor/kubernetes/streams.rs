//! The connections the log followers stream over.
//!
//! A worker follows the log of every pod it owns for as long as the pod runs: a thousand
//! running Jobs are a thousand open responses. Over HTTP/1.1 each is a TCP connection of its
//! own, with its buffers and connection task in the worker (and a socket on the API server).
//! Here they are streams of a few HTTP/2 connections instead: each [`LogStreams`] shard is a
//! client with one connection, carrying at most [`STREAMS_PER_CONNECTION`] follows at a time —
//! below the 100 concurrent streams the Kubernetes API server grants a connection, so a follow
//! never waits for a stream — and a new shard opens when every one is full.
//!
//! HTTP/2 is negotiated (ALPN) on `https` servers, which every real API server is; a server
//! that answers with HTTP/1.1 gets a connection per follow as before. On a cleartext `http`
//! server (the local stand-in, `kubectl proxy`) HTTP/2 needs prior knowledge, which only
//! `kubernetes.log_streams_h2c` turns on: `kubectl proxy` speaks HTTP/1.1 only.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use k8s_openapi::api::core::v1::Pod;
use kube::client::ConfigExt;
use kube::{Api, Client};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Follows one connection carries at once (the API server grants 100 streams; the rest is
/// headroom).
pub const STREAMS_PER_CONNECTION: usize = 90;

/// How often an idle HTTP/2 connection is pinged: a connection the network lost is noticed
/// and its follows reopen instead of waiting on silence.
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// The shards of log-following connections; cheap to share.
pub struct LogStreams {
    config: kube::Config,
    namespace: String,
    h2c: bool,
    shards: Mutex<Vec<Shard>>,
}

struct Shard {
    pods: Api<Pod>,
    slots: Arc<Semaphore>,
}

impl Shard {
    fn new(config: &kube::Config, namespace: &str, h2c: bool) -> anyhow::Result<Self> {
        Ok(Self {
            pods: Api::namespaced(multiplexed_client(config, h2c)?, namespace),
            slots: Arc::new(Semaphore::new(STREAMS_PER_CONNECTION)),
        })
    }
}

/// One follow's place on a connection: give it back by dropping it.
pub struct LogStream {
    pub pods: Api<Pod>,
    _slot: OwnedSemaphorePermit,
}

impl LogStreams {
    /// Shards for the API server of `config`, opened as follows need them. The first one's
    /// client is built now, so settings it cannot use (a bad `tls-server-name`, unreadable
    /// certificates) stop the worker at start instead of every follow failing later.
    pub fn new(config: kube::Config, namespace: &str, h2c: bool) -> anyhow::Result<Self> {
        let first = Shard::new(&config, namespace, h2c)?;
        Ok(Self {
            config,
            namespace: namespace.to_owned(),
            h2c,
            shards: Mutex::new(vec![first]),
        })
    }

    /// A place for one follow: on the first shard with a free stream, else on a new one.
    pub fn acquire(&self) -> anyhow::Result<LogStream> {
        let mut shards = self.shards.lock().expect("log streams lock");
        for shard in shards.iter() {
            if let Ok(slot) = shard.slots.clone().try_acquire_owned() {
                return Ok(LogStream {
                    pods: shard.pods.clone(),
                    _slot: slot,
                });
            }
        }
        let shard = Shard::new(&self.config, &self.namespace, self.h2c)?;
        let slot = shard
            .slots
            .clone()
            .try_acquire_owned()
            .expect("a new shard has free streams");
        let stream = LogStream {
            pods: shard.pods.clone(),
            _slot: slot,
        };
        shards.push(shard);
        tracing::debug!(shards = shards.len(), "opened a log-streams connection");
        Ok(stream)
    }

    /// Connections opened so far.
    pub fn shards(&self) -> usize {
        self.shards.lock().expect("log streams lock").len()
    }
}

/// A kube client whose one pooled connection multiplexes requests over HTTP/2: negotiated by
/// ALPN on `https`, by prior knowledge on `http` when `h2c`. Authentication, the base URI and
/// the extra headers are kube's own layers, as in its default client. No read timeout: a
/// quiet program's follow is silent for as long as it likes, and the pings tell a dead
/// connection.
fn multiplexed_client(config: &kube::Config, h2c: bool) -> anyhow::Result<Client> {
    if config.proxy_url.is_some() {
        // Through a proxy, kube's own client (which speaks to it) and a connection per follow.
        return Ok(Client::try_from(config.clone())?);
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(config.connect_timeout);
    let mut tls = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(
            config
                .rustls_client_config()
                .context("the TLS settings of the kubeconfig")?,
        )
        .https_or_http();
    if let Some(name) = &config.tls_server_name {
        let name = rustls_pki_types::ServerName::try_from(name.clone())
            .with_context(|| format!("tls-server-name {name:?}"))?;
        tls = tls.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name));
    }
    let connector = tls.enable_all_versions().wrap_connector(http);
    let hyper = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(h2c && config.cluster_url.scheme_str() == Some("http"))
        .http2_keep_alive_interval(KEEP_ALIVE)
        .http2_keep_alive_while_idle(true)
        .timer(TokioTimer::new())
        .build(connector);
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(
            config
                .auth_layer()
                .context("the kubeconfig's credentials")?,
        )
        .layer(
            config
                .extra_headers_layer()
                .context("the kubeconfig's headers")?,
        )
        // The auth layer's errors are boxed: the connection's must be too.
        .map_err(tower::BoxError::from)
        .service(hyper);
    Ok(Client::new(service, config.default_namespace.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streams() -> LogStreams {
        let config = kube::Config::new("http://127.0.0.1:1".parse().expect("a URL"));
        LogStreams::new(config, "coderun-jobs", true).expect("usable settings")
    }

    #[tokio::test]
    async fn settings_no_connection_can_use_are_refused_when_the_streams_are_built() {
        let mut config = kube::Config::new("https://127.0.0.1:1".parse().expect("a URL"));
        config.tls_server_name = Some("not a host name".into());
        let error = match LogStreams::new(config, "coderun-jobs", false) {
            Ok(_) => panic!("built with a tls-server-name that is no name"),
            Err(e) => format!("{e:#}"),
        };
        assert!(error.contains("tls-server-name"), "{error}");
    }

    #[tokio::test]
    async fn a_connection_carries_at_most_its_share_of_follows_and_a_freed_place_is_reused() {
        let streams = streams();
        let mut held: Vec<LogStream> = (0..STREAMS_PER_CONNECTION)
            .map(|_| streams.acquire().expect("a place"))
            .collect();
        assert_eq!(streams.shards(), 1);
        held.push(streams.acquire().expect("a place"));
        assert_eq!(streams.shards(), 2, "the first connection was full");
        // A follow that ends gives its place back: the next one takes it, no new connection.
        held.swap_remove(0);
        held.push(streams.acquire().expect("a place"));
        held.push(streams.acquire().expect("a place"));
        assert_eq!(streams.shards(), 2);
        assert_eq!(held.len(), STREAMS_PER_CONNECTION + 2);
    }
}
