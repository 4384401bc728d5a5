//! TLS configuration shared by ulog's network plugins (`net` and `forward`).
//!
//! Both plugin crates speak TLS through rustls with its `ring` provider; this
//! crate holds the one copy of the setup they share: reading PEM certificate
//! chains and private keys, building server and client configurations, and
//! turning a host into the name a server certificate is checked against.
//!
//! The provider is passed to rustls explicitly, so nothing depends on a
//! process-wide default being installed. Files are read only when a function
//! here is called; plugins call them when they start or first connect, never
//! while a routes file is merely being checked.
#![deny(missing_docs)]

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{VerifierBuilderError, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};

/// Where common Linux and BSD systems keep their bundle of trusted CAs.
///
/// [`client_config`] uses the first that exists when it is given no CA file,
/// so the same configuration works across distributions.
pub const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Why a TLS configuration could not be built.
///
/// Every variant about a file names it: a plugin that fails to start should
/// tell the operator which path to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not valid PEM.
    #[error("{path}: invalid PEM: {source}")]
    InvalidPem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser reported.
        source: std::io::Error,
    },
    /// A file holds no PEM certificate.
    #[error("{0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    /// A file holds no PEM private key.
    #[error("{0} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey(PathBuf),
    /// A CA file holds certificates, but none usable as a trust anchor.
    #[error("{0} holds no usable CA certificate")]
    NoUsableCa(PathBuf),
    /// No CA file was given and none of [`SYSTEM_CA_BUNDLES`] exists.
    #[error("no `tls_ca_path` given and no system CA bundle found (looked at {})", SYSTEM_CA_BUNDLES.join(", "))]
    NoSystemRoots,
    /// The certificate verifier could not be built from a CA file.
    #[error("{path}: {source}")]
    Verifier {
        /// The CA file.
        path: PathBuf,
        /// Why rustls refused it.
        source: VerifierBuilderError,
    },
    /// rustls refused the certificates, key or protocol settings.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider every configuration here is built with.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn open(path: &Path) -> Result<BufReader<File>, TlsError> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })
}

fn invalid_pem(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::InvalidPem {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads every certificate in a PEM file, in file order (leaf first for a
/// chain), skipping other PEM items.
///
/// # Errors
/// An unreadable file, invalid PEM, or a file without any certificate (an
/// empty chain or trust store is always a mistake, so it is refused here).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut open(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid_pem(path))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_path_buf()));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file, so
/// the key may share a file with its certificate.
///
/// # Errors
/// An unreadable file, invalid PEM, or a file without a key.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut open(path)?)
        .map_err(invalid_pem(path))?
        .ok_or_else(|| TlsError::NoKey(path.to_path_buf()))
}

/// A server configuration presenting the certificate chain in `cert_path`
/// with the key in `key_path`. Clients are not asked for certificates: the
/// plugins authenticate clients, if at all, inside their own protocol.
///
/// # Errors
/// Unreadable files, or a key that does not fit the certificate.
pub fn server_config(cert_path: &Path, key_path: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(cert_path)?;
    let key = load_key(key_path)?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

/// How a client checks the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// The certificate must chain to a trusted CA and be valid for the
    /// server name.
    Full,
    /// The certificate must chain to a trusted CA, but may be for any name:
    /// for servers reached by an address their certificate does not list.
    ChainOnly,
    /// Any certificate is accepted: the connection is encrypted but not
    /// authenticated. For tests and trusted networks only. The handshake
    /// signatures are still checked, so the handshake itself stays sound.
    Insecure,
}

/// A client configuration checking servers as `verify` says.
///
/// With [`Verify::Full`] or [`Verify::ChainOnly`] the CAs in `ca_path` are
/// trusted, or, when it is `None`, those of the first of
/// [`SYSTEM_CA_BUNDLES`] that exists. Certificates in the CA file that
/// cannot serve as trust anchors are skipped, as system bundles may hold a
/// few such. With [`Verify::Insecure`] no CA file is read.
///
/// # Errors
/// No CA file found, an unreadable one, or one without a usable CA.
pub fn client_config(
    ca_path: Option<&Path>,
    verify: Verify,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let config = match verify {
        Verify::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth(),
        Verify::Full | Verify::ChainOnly => {
            let path = match ca_path {
                Some(p) => p.to_path_buf(),
                None => system_ca_bundle().ok_or(TlsError::NoSystemRoots)?,
            };
            let mut roots = RootCertStore::empty();
            let (added, _unusable) = roots.add_parsable_certificates(load_certs(&path)?);
            if added == 0 {
                return Err(TlsError::NoUsableCa(path));
            }
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|source| TlsError::Verifier { path, source })?;
            if verify == Verify::Full {
                builder.with_webpki_verifier(webpki).with_no_client_auth()
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AnyName(webpki)))
                    .with_no_client_auth()
            }
        }
    };
    Ok(Arc::new(config))
}

/// The first of [`SYSTEM_CA_BUNDLES`] that exists.
fn system_ca_bundle() -> Option<PathBuf> {
    SYSTEM_CA_BUNDLES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// The name a client checks the server certificate against (and sends as
/// SNI): a DNS name or an IP address.
///
/// # Errors
/// Text that is neither; the message quotes it, ready to be reported against
/// the parameter it came from.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host:?} is not a valid TLS server name: {e}"))
}

/// [`Verify::ChainOnly`]: the full webpki check, with a name mismatch as the
/// one error forgiven.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// [`Verify::Insecure`]: accepts any certificate, but still verifies the
/// handshake signatures against the certificate presented, so a peer must at
/// least hold the key of the certificate it sends.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{ClientConnection, ServerConnection};

    /// A self-signed certificate for `names`, written as `cert.pem` and
    /// `key.pem` under `dir`.
    fn write_cert(dir: &Path, prefix: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let ck = rcgen::generate_simple_self_signed(names).unwrap();
        let cert = dir.join(format!("{prefix}cert.pem"));
        let key = dir.join(format!("{prefix}key.pem"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
        (cert, key)
    }

    /// Runs a handshake in memory between `client` (connecting as `name`)
    /// and `server`; the first error either side reports.
    fn handshake(
        client: Arc<ClientConfig>,
        server: Arc<ServerConfig>,
        name: &str,
    ) -> Result<(), rustls::Error> {
        let mut c = ClientConnection::new(client, server_name(name).unwrap())?;
        let mut s = ServerConnection::new(server)?;
        let mut wire = Vec::new();
        for _ in 0..20 {
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(());
            }
            wire.clear();
            c.write_tls(&mut wire).unwrap();
            s.read_tls(&mut &wire[..]).unwrap();
            s.process_new_packets()?;
            wire.clear();
            s.write_tls(&mut wire).unwrap();
            c.read_tls(&mut &wire[..]).unwrap();
            c.process_new_packets()?;
        }
        panic!("handshake did not finish");
    }

    #[test]
    fn missing_and_empty_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = server_config(&missing, &missing).unwrap_err();
        assert!(matches!(e, TlsError::Read { .. }), "{e}");
        assert!(e.to_string().contains("nope.pem"), "{e}");
        let e = client_config(Some(&missing), Verify::Full).unwrap_err();
        assert!(e.to_string().contains("nope.pem"), "{e}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem\n").unwrap();
        let e = load_certs(&empty).unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate(_)), "{e}");
        assert!(e.to_string().contains("empty.pem"), "{e}");
        let e = load_key(&empty).unwrap_err();
        assert!(matches!(e, TlsError::NoKey(_)), "{e}");
        assert!(e.to_string().contains("empty.pem"), "{e}");
        assert!(client_config(Some(&empty), Verify::Full).is_err());
        assert!(client_config(Some(&empty), Verify::ChainOnly).is_err());
    }

    #[test]
    fn insecure_reads_no_ca_file() {
        let missing = Path::new("/nonexistent/ca.pem");
        assert!(client_config(Some(missing), Verify::Insecure).is_ok());
        assert!(client_config(None, Verify::Insecure).is_ok());
    }

    #[test]
    fn a_key_that_does_not_fit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = write_cert(dir.path(), "a", &["localhost"]);
        let (_, other_key) = write_cert(dir.path(), "b", &["localhost"]);
        let e = server_config(&cert, &other_key).unwrap_err();
        assert!(matches!(e, TlsError::Rustls(_)), "{e}");
    }

    #[test]
    fn server_names() {
        assert!(matches!(
            server_name("localhost"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(matches!(
            server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(server_name("::1"), Ok(ServerName::IpAddress(_))));
        let e = server_name("bad name!").unwrap_err();
        assert!(
            e.starts_with("\"bad name!\" is not a valid TLS server name"),
            "{e}"
        );
    }

    #[test]
    fn verification_modes() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_cert(dir.path(), "", &["localhost"]);
        let (stranger, _) = write_cert(dir.path(), "s", &["localhost"]);
        let server = server_config(&cert, &key).unwrap();
        let client = |ca: &Path, verify| client_config(Some(ca), verify).unwrap();

        // Trusted CA, right name: every mode connects.
        for verify in [Verify::Full, Verify::ChainOnly, Verify::Insecure] {
            handshake(client(&cert, verify), server.clone(), "localhost").unwrap();
        }
        // Trusted CA, wrong name: only Full refuses.
        let e = handshake(client(&cert, Verify::Full), server.clone(), "other.example");
        assert!(
            matches!(e, Err(rustls::Error::InvalidCertificate(_))),
            "{e:?}"
        );
        handshake(
            client(&cert, Verify::ChainOnly),
            server.clone(),
            "other.example",
        )
        .unwrap();
        handshake(
            client(&cert, Verify::Insecure),
            server.clone(),
            "other.example",
        )
        .unwrap();
        // Untrusted CA: only Insecure connects.
        for verify in [Verify::Full, Verify::ChainOnly] {
            let e = handshake(client(&stranger, verify), server.clone(), "localhost");
            // rcgen gives both certificates the same issuer name, so webpki
            // reports a bad signature rather than an unknown issuer.
            assert!(
                matches!(e, Err(rustls::Error::InvalidCertificate(_))),
                "{verify:?}: {e:?}"
            );
        }
        handshake(client(&stranger, Verify::Insecure), server, "localhost").unwrap();
    }
}
