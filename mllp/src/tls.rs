//! TLS for MLLP: the listener's certificate (and optional client-certificate check, mutual
//! TLS) and a destination's trust anchors (and optional client certificate), loaded from PEM
//! files and reloaded when those files change.
//!
//! rustls with the `ring` provider, TLS 1.2 and 1.3 only: an older protocol fails the
//! handshake. Certificates are checked against the CA bundle given — the OS trust store is
//! never consulted, since an HL7 peer is a known system with a known (usually private) CA.
//!
//! Reload is checked at each handshake: the files' modification times and sizes are read
//! (one `stat` each) and, when one changed, the material is loaded again and swapped in for
//! new handshakes; connections already up keep the session they have. Material that does not
//! load (a half-written or bad PEM, a key that does not match its certificate) is refused with
//! a warning naming the file, and the previous material stays in use until the files change
//! again.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{
    self, CertificateError, ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion,
};
use tracing::{info, warn};

/// The protocol versions offered and accepted: TLS 1.3 and 1.2, nothing older.
static VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Why TLS material could not be loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// A file holds no usable PEM item of the kind expected.
    #[error("{}: {what}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong, e.g. `no CERTIFICATE found`.
        what: String,
    },
    /// rustls refused the material (a key that does not match its certificate, a CA it
    /// cannot use).
    #[error("{}: {source}", path.display())]
    Rejected {
        /// The file (for a key/certificate mismatch, the key).
        path: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
    /// The name to check the server's certificate against is not a DNS name or IP address.
    #[error("`{name}` is not a valid TLS server name")]
    ServerName {
        /// The name given.
        name: String,
    },
}

/// Where a listener's TLS material is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// The server's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// The server's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA bundle (PEM) that client certificates must chain to; when set, a client without a
    /// valid certificate is refused (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// Where a destination's TLS material is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// CA bundle (PEM) that the server's certificate must chain to.
    pub ca: PathBuf,
    /// Client certificate chain (PEM) for mutual TLS; needs `key`.
    pub cert: Option<PathBuf>,
    /// Client private key (PEM); needs `cert`.
    pub key: Option<PathBuf>,
    /// Name the server's certificate must be valid for; default: the host of the address.
    pub server_name: Option<String>,
}

/// A listener's TLS: the current [`ServerConfig`], reloaded when its files change.
/// Cloning shares the material; two are equal when they name the same files.
#[derive(Clone)]
pub struct ServerTls {
    files: Arc<ServerTlsFiles>,
    watched: Arc<Watched<ServerConfig>>,
}

impl ServerTls {
    /// Loads the certificate, key and (if set) client CA bundle.
    ///
    /// # Errors
    ///
    /// [`TlsError`] naming the file that is missing, unreadable or unusable.
    pub fn load(files: ServerTlsFiles) -> Result<Self, TlsError> {
        let mut paths = vec![files.cert.clone(), files.key.clone()];
        paths.extend(files.client_ca.clone());
        let build_files = files.clone();
        let watched = Watched::load(paths, move || server_config(&build_files))?;
        Ok(Self {
            files: Arc::new(files),
            watched: Arc::new(watched),
        })
    }

    /// The files this was loaded from.
    pub fn files(&self) -> &ServerTlsFiles {
        &self.files
    }

    /// Whether clients must present a certificate (mutual TLS).
    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// The config for a new handshake: reloaded first if a file changed since the last one.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.watched.current()
    }
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ServerTls").field(&self.files).finish()
    }
}

impl PartialEq for ServerTls {
    fn eq(&self, other: &Self) -> bool {
        self.files == other.files
    }
}

impl Eq for ServerTls {}

/// A destination's TLS: the current [`ClientConfig`], reloaded when its files change.
/// Cloning shares the material; two are equal when they name the same files.
#[derive(Clone)]
pub struct ClientTls {
    files: Arc<ClientTlsFiles>,
    watched: Arc<Watched<ClientConfig>>,
}

impl ClientTls {
    /// Loads the CA bundle and (if set) the client certificate and key.
    ///
    /// # Errors
    ///
    /// [`TlsError`] naming the file that is missing, unreadable or unusable, or the server
    /// name if it is not a valid one.
    pub fn load(files: ClientTlsFiles) -> Result<Self, TlsError> {
        if let Some(name) = &files.server_name {
            server_name(name)?;
        }
        if files.cert.is_some() != files.key.is_some() {
            let path = files.cert.clone().or(files.key.clone()).unwrap_or_default();
            return Err(TlsError::Pem {
                path,
                what: "a client certificate needs both cert and key".into(),
            });
        }
        let mut paths = vec![files.ca.clone()];
        paths.extend(files.cert.clone());
        paths.extend(files.key.clone());
        let build_files = files.clone();
        let watched = Watched::load(paths, move || client_config(&build_files))?;
        Ok(Self {
            files: Arc::new(files),
            watched: Arc::new(watched),
        })
    }

    /// The files this was loaded from.
    pub fn files(&self) -> &ClientTlsFiles {
        &self.files
    }

    /// The config for a new handshake: reloaded first if a file changed since the last one.
    pub fn config(&self) -> Arc<ClientConfig> {
        self.watched.current()
    }

    /// The name to check the server's certificate against: `server_name` if set, otherwise
    /// the host part of `addr` (`host:port`, `[v6]:port`).
    ///
    /// # Errors
    ///
    /// [`TlsError::ServerName`] if that is neither a DNS name nor an IP address.
    pub fn server_name_for(&self, addr: &str) -> Result<ServerName<'static>, TlsError> {
        match &self.files.server_name {
            Some(name) => server_name(name),
            None => {
                let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                server_name(host)
            }
        }
    }
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ClientTls").field(&self.files).finish()
    }
}

impl PartialEq for ClientTls {
    fn eq(&self, other: &Self) -> bool {
        self.files == other.files
    }
}

impl Eq for ClientTls {}

/// Why a handshake failed, in words for a log line: the certificate problem by name (none
/// presented, unknown CA, bad signature, expired, not yet valid), a protocol the listener does
/// not speak, or bytes that are not TLS at all.
pub fn describe_handshake_error(error: &io::Error) -> String {
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return match error.kind() {
            io::ErrorKind::UnexpectedEof => {
                "the peer closed the connection during the handshake".to_owned()
            }
            _ => format!("i/o error during the handshake: {error}"),
        };
    };
    match tls {
        rustls::Error::NoCertificatesPresented => "no client certificate presented".to_owned(),
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "certificate expired".to_owned()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "certificate not yet valid".to_owned()
            }
            CertificateError::UnknownIssuer => {
                "certificate signed by an unknown CA (unknown issuer)".to_owned()
            }
            CertificateError::BadSignature => "certificate has a bad signature".to_owned(),
            other => format!("invalid certificate: {other:?}"),
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateHandshakeMessage { .. } => {
            format!("not a TLS handshake (plaintext sent to a TLS port?): {tls}")
        }
        rustls::Error::InappropriateMessage { .. } => {
            format!("not a TLS handshake (plaintext sent to a TLS port?): {tls}")
        }
        rustls::Error::PeerIncompatible(_) => {
            format!(
                "peer offers no protocol version or cipher this side accepts (TLS 1.2 and 1.3 only): {tls}"
            )
        }
        other => format!("TLS error: {other}"),
    }
}

/// The crypto provider: `ring`, as built.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(files: &ServerTlsFiles) -> Result<ServerConfig, TlsError> {
    let chain = certs(&files.cert)?;
    let der = private_key(&files.key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|source| TlsError::Rejected {
            path: files.cert.clone(),
            source,
        })?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = root_store(ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::Pem {
                    path: ca.clone(),
                    what: format!("unusable as a client CA bundle: {e}"),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    // Fails if the key is not the certificate's: named as the key file's problem.
    builder
        .with_single_cert(chain, der)
        .map_err(|source| TlsError::Rejected {
            path: files.key.clone(),
            source,
        })
}

fn client_config(files: &ClientTlsFiles) -> Result<ClientConfig, TlsError> {
    let roots = root_store(&files.ca)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|source| TlsError::Rejected {
            path: files.ca.clone(),
            source,
        })?
        .with_root_certificates(roots);
    match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            let chain = certs(cert)?;
            let der = private_key(key)?;
            builder
                .with_client_auth_cert(chain, der)
                .map_err(|source| TlsError::Rejected {
                    path: key.clone(),
                    source,
                })
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            what: format!("bad PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "no CERTIFICATE found".into(),
        });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        path: path.to_owned(),
        what: match e {
            rustls_pki_types::pem::Error::NoItemsFound => "no PRIVATE KEY found".to_owned(),
            e => format!("bad PEM: {e}"),
        },
    })
}

fn root_store(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(path)? {
        roots.add(cert).map_err(|source| TlsError::Rejected {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(roots)
}

fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_owned()).map_err(|_| TlsError::ServerName {
        name: name.to_owned(),
    })
}

/// What identifies a version of a file: its modification time, size and (on Unix) inode, so
/// that a file replaced by a rename is seen even within the clock's granularity. `None`:
/// unreadable.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamps(paths: &[PathBuf]) -> Vec<Stamp> {
    paths
        .iter()
        .map(|p| {
            // `metadata` follows symbolic links: a swapped link target counts as a change.
            let meta = std::fs::metadata(p).ok()?;
            #[cfg(unix)]
            let inode = std::os::unix::fs::MetadataExt::ino(&meta);
            #[cfg(not(unix))]
            let inode = 0;
            Some((meta.modified().ok()?, meta.len(), inode))
        })
        .collect()
}

type Build<C> = Box<dyn Fn() -> Result<C, TlsError> + Send + Sync>;

/// A config built from files, rebuilt when their stamps change.
struct Watched<C> {
    paths: Vec<PathBuf>,
    build: Build<C>,
    state: Mutex<(Vec<Stamp>, Arc<C>)>,
}

impl<C> Watched<C> {
    fn load(
        paths: Vec<PathBuf>,
        build: impl Fn() -> Result<C, TlsError> + Send + Sync + 'static,
    ) -> Result<Self, TlsError> {
        let before = stamps(&paths);
        let config = build()?;
        Ok(Self {
            paths,
            build: Box::new(build),
            state: Mutex::new((before, Arc::new(config))),
        })
    }

    /// The current config, rebuilt first if a file changed. A rebuild that fails is logged
    /// once (naming the file) and the previous config kept; it is tried again when the files
    /// change again.
    fn current(&self) -> Arc<C> {
        // A few `stat`s per handshake, and a read of a few small files when one changed:
        // cheap enough to do inline on the connection's task, and it needs no watcher thread.
        let now = stamps(&self.paths);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.0 != now {
            state.0 = now;
            match (self.build)() {
                Ok(config) => {
                    info!(files = ?self.paths, "TLS certificates reloaded; new handshakes use them");
                    state.1 = Arc::new(config);
                }
                Err(error) => warn!(
                    error = %error,
                    "TLS files changed but do not load; keeping the previous certificates"
                ),
            }
        }
        Arc::clone(&state.1)
    }
}
