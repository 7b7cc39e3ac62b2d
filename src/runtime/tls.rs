//! TLS for the metrics server (`--metrics-secure`): a certificate from `--metrics-cert-dir`
//! (reread when its files change, as when cert-manager renews a mounted Secret) or a
//! self-signed one made at start-up, and a listener that hands axum finished TLS connections.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The certificate chain's file in `--metrics-cert-dir` (PEM), as a `kubernetes.io/tls` Secret
/// names it.
pub const CERT_FILE: &str = "tls.crt";
/// The private key's file in `--metrics-cert-dir` (PEM: PKCS#8, PKCS#1 or SEC1).
pub const KEY_FILE: &str = "tls.key";
/// Longest time a client may take over its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The crypto provider kube and the AWS SDK use too (ring).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Where the serving certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// Made at start-up, for `localhost` and `127.0.0.1` (a scraper that reaches it by
    /// another name cannot verify it and must skip verification).
    SelfSigned,
    /// `tls.crt` and `tls.key` in this directory.
    Dir(PathBuf),
}

/// The rustls server configuration for `source` (HTTP/1.1 only). Fails when the directory's
/// files cannot be read or do not hold a matching certificate and key.
pub fn server_config(source: &CertSource) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = provider();
    let resolver: Arc<dyn ResolvesServerCert> = match source {
        CertSource::SelfSigned => Arc::new(Fixed(Arc::new(self_signed(&provider)?))),
        CertSource::Dir(dir) => Arc::new(DirResolver::load(dir.clone(), provider.clone())?),
    };
    config(provider, resolver)
}

fn config(
    provider: Arc<CryptoProvider>,
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A new key and a self-signed certificate for it, for `localhost` and `127.0.0.1`.
fn self_signed(provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .map_err(|e| format!("self-signed certificate: {e}"))?;
    let key = PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into());
    CertifiedKey::from_der(vec![made.cert.der().clone()], key, provider)
        .map_err(|e| format!("self-signed certificate: {e}"))
}

/// A certificate chain and its key from PEM text.
fn certified_key(cert_pem: &[u8], key_pem: &[u8], provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{CERT_FILE}: {e}"))?;
    if chain.is_empty() {
        return Err(format!("{CERT_FILE}: no certificate"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("{KEY_FILE}: {e}"))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| format!("{CERT_FILE} and {KEY_FILE}: {e}"))
}

/// Always the same certificate.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// What identifies one version of the two files: their modification times and sizes.
type Stamp = [(SystemTime, u64); 2];

fn stamp(dir: &Path) -> Result<Stamp, String> {
    let one = |name: &str| -> Result<(SystemTime, u64), String> {
        let m = std::fs::metadata(dir.join(name))
            .and_then(|m| Ok((m.modified()?, m.len())))
            .map_err(|e| format!("{name}: {e}"))?;
        Ok(m)
    };
    Ok([one(CERT_FILE)?, one(KEY_FILE)?])
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>, String> {
    std::fs::read(dir.join(name)).map_err(|e| format!("{name}: {e}"))
}

/// The certificate in a directory, reread on a handshake that finds the files changed. A
/// change that cannot be loaded (half-written, mismatched) keeps the last good certificate and
/// is tried again on the next handshake.
#[derive(Debug)]
struct DirResolver {
    dir: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Mutex<(Stamp, Arc<CertifiedKey>)>,
}

impl DirResolver {
    fn load(dir: PathBuf, provider: Arc<CryptoProvider>) -> Result<DirResolver, String> {
        let (stamp, key) = Self::read(&dir, &provider)?;
        Ok(DirResolver {
            dir,
            provider,
            current: Mutex::new((stamp, Arc::new(key))),
        })
    }

    fn read(dir: &Path, provider: &CryptoProvider) -> Result<(Stamp, CertifiedKey), String> {
        let loaded = || -> Result<(Stamp, CertifiedKey), String> {
            let before = stamp(dir)?;
            let key = certified_key(&read(dir, CERT_FILE)?, &read(dir, KEY_FILE)?, provider)?;
            Ok((before, key))
        };
        loaded().map_err(|e| format!("--metrics-cert-dir {}: {e}", dir.display()))
    }

    /// The certificate to serve now.
    fn current(&self) -> Arc<CertifiedKey> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        match stamp(&self.dir) {
            Ok(now) if now != current.0 => match Self::read(&self.dir, &self.provider) {
                Ok((stamp, key)) => {
                    tracing::info!(dir = %self.dir.display(), "metrics certificate reloaded");
                    *current = (stamp, Arc::new(key));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics certificate changed but cannot be loaded; serving the previous one")
                }
            },
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read the metrics certificate's files; serving the previous one")
            }
        }
        current.1.clone()
    }
}

impl ResolvesServerCert for DirResolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A TCP listener whose connections are handed on once their TLS handshake has finished. Each
/// handshake runs in a task of its own (bounded by `HANDSHAKE_TIMEOUT`), so that a slow or
/// silent client holds up nobody else; failed handshakes are logged at debug level and dropped.
pub struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `tcp` (until the `TlsListener` is dropped).
    pub fn new(tcp: tokio::net::TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = tx.closed() => return,
                    accepted = tcp.accept() => accepted,
                };
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little, as axum does.
                        tracing::warn!(error = %e, "metrics server: accept failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics server: TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "metrics server: TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task only ends once this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA and a serving certificate it signed for 127.0.0.1, as PEM: (ca, cert, key).
    fn issued(cn: &str) -> (String, String, String) {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (ca_cert.pem(), cert.pem(), key.serialize_pem())
    }

    #[test]
    fn certified_key_needs_a_certificate_and_its_own_key() {
        let p = provider();
        let (_, cert, key) = issued("a");
        let (_, _, other_key) = issued("b");
        // (case, cert PEM, key PEM, substring of the error or None)
        let table: [(&str, &str, &str, Option<&str>); 4] = [
            ("matching pair", &cert, &key, None),
            (
                "key of another certificate",
                &cert,
                &other_key,
                Some("tls.crt and tls.key"),
            ),
            ("no certificate", "", &key, Some("tls.crt: no certificate")),
            ("no key", &cert, "", Some("tls.key")),
        ];
        for (case, cert, key, want) in table {
            let got = certified_key(cert.as_bytes(), key.as_bytes(), &p);
            match want {
                None => assert!(got.is_ok(), "{case}: {:?}", got.err()),
                Some(needle) => {
                    let err = got.err().unwrap_or_else(|| panic!("{case}: accepted"));
                    assert!(err.contains(needle), "{case}: {err}");
                }
            }
        }
    }

    fn pem_certs(pem: &str) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .map(Result::unwrap)
            .collect()
    }

    /// Connects to `addr` as `name`, trusting `roots`; returns the DER of the certificate the
    /// server showed.
    async fn handshake(addr: SocketAddr, roots: Vec<CertificateDer<'static>>, name: &str) -> Result<Vec<u8>, String> {
        let mut store = rustls::RootCertStore::empty();
        for c in roots {
            store.add(c).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        Ok(tls.get_ref().1.peer_certificates().unwrap()[0].to_vec())
    }

    async fn serve(config: Arc<rustls::ServerConfig>) -> SocketAddr {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listener = TlsListener::new(tcp, config).unwrap();
        let addr = listener.local;
        tokio::spawn(axum::serve(listener, axum::Router::new()).into_future());
        addr
    }

    #[tokio::test]
    async fn a_cert_dir_is_served_and_reread_when_its_files_change() {
        let dir = tempfile::tempdir().unwrap();
        let ip = "127.0.0.1";
        let (ca1, cert1, key1) = issued("first");
        std::fs::write(dir.path().join(CERT_FILE), &cert1).unwrap();
        std::fs::write(dir.path().join(KEY_FILE), &key1).unwrap();
        let addr = serve(server_config(&CertSource::Dir(dir.path().into())).unwrap()).await;
        let first = handshake(addr, pem_certs(&ca1), ip).await.unwrap();

        // A renewal by another CA: the next handshake shows the new certificate.
        let (ca2, cert2, key2) = issued("second");
        std::fs::write(dir.path().join(CERT_FILE), format!("{cert2}\n")).unwrap();
        std::fs::write(dir.path().join(KEY_FILE), format!("{key2}\n")).unwrap();
        let second = handshake(addr, pem_certs(&ca2), ip).await.unwrap();
        assert_ne!(first, second);
        let old = handshake(addr, pem_certs(&ca1), ip).await;
        assert!(old.is_err(), "the old CA still verifies: {old:?}");

        // A half-written renewal (a key that does not match) keeps the last good certificate.
        std::fs::write(dir.path().join(KEY_FILE), format!("{key1}\n\n")).unwrap();
        assert_eq!(handshake(addr, pem_certs(&ca2), ip).await.unwrap(), second);
    }

    #[test]
    fn a_cert_dir_without_the_files_is_refused_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let err = server_config(&CertSource::Dir(dir.path().into())).unwrap_err();
        assert!(err.contains("--metrics-cert-dir") && err.contains("tls.crt"), "{err}");
    }

    #[tokio::test]
    async fn the_self_signed_certificate_is_valid_for_localhost() {
        let p = provider();
        let made = Arc::new(self_signed(&p).unwrap());
        let addr = serve(config(p, Arc::new(Fixed(made.clone()))).unwrap()).await;
        let trust = || vec![made.cert[0].clone()];
        for name in ["localhost", "127.0.0.1"] {
            let shown = handshake(addr, trust(), name).await;
            assert_eq!(shown.as_deref(), Ok(made.cert[0].as_ref()), "{name}");
        }
        let other = handshake(addr, trust(), "other.example").await;
        assert!(other.is_err(), "valid for a name it was not made for: {other:?}");
        // Each start makes a new key pair.
        assert_ne!(self_signed(&provider()).unwrap().cert, made.cert);
    }
}
