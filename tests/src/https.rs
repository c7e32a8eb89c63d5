//! An https server for tests: serves an axum router over TLS with one of the certificates in
//! `tests/fixtures/tls/` (all for `localhost` and 127.0.0.1): `localhost.pem`, signed by the
//! test authority [`ca_file`], or `untrusted.pem`, which no authority vouches for.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Which certificate the server presents.
#[derive(Debug, Clone, Copy)]
pub enum Certificate {
    /// Signed by the test authority in [`ca_file`].
    SignedByTestCa,
    /// Self-signed: nothing trusts it.
    Untrusted,
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/tls")
}

/// The PEM file of the test certificate authority.
pub fn ca_file() -> PathBuf {
    fixtures().join("ca.pem")
}

/// Serves `router` over TLS on `listener` until the runtime ends; a failed handshake drops that
/// connection only.
pub fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    certificate: Certificate,
) -> anyhow::Result<()> {
    let name = match certificate {
        Certificate::SignedByTestCa => "localhost",
        Certificate::Untrusted => "untrusted",
    };
    let chain = CertificateDer::pem_file_iter(fixtures().join(format!("{name}.pem")))
        .context("read the test certificate")?
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(fixtures().join(format!("{name}.key")))
        .context("read the test key")?;
    // An explicit provider: the process may have more than one compiled in.
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, router) = (acceptor.clone(), router.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(router))
                    .await;
            });
        }
    });
    Ok(())
}
