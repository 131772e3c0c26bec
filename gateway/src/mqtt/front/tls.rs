//! TLS for the MQTT front, by configuration: a PEM certificate chain and its
//! private key (rustls, TLS 1.2 and 1.3, the provider's default suites).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// Why TLS could not be set up. Names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS certificate chain {}: {detail}: give a PEM file with the server certificate first, then its intermediates", path.display())]
    Certs { path: PathBuf, detail: String },
    #[error("cannot read the TLS private key {}: {detail}: give a PEM file with one PKCS#8, PKCS#1 or SEC1 private key", path.display())]
    Key { path: PathBuf, detail: String },
    #[error("the TLS certificate {} and key {} do not go together, or the key type is unsupported: {detail}", cert.display(), key.display())]
    Config {
        cert: PathBuf,
        key: PathBuf,
        detail: String,
    },
}

/// A TLS acceptor from PEM files.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| TlsError::Certs {
            path: cert.into(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Certs {
            path: cert.into(),
            detail: "no CERTIFICATE block in it".into(),
        });
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.into(),
        detail: e.to_string(),
    })?;
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .map_err(|e| TlsError::Config {
            cert: cert.into(),
            key: key.into(),
            detail: e.to_string(),
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
