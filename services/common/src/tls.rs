//! Optional mutual TLS between services, for deployments without a mesh that does it
//! (in Kubernetes, Istio's sidecars encrypt and authenticate every hop instead).
//!
//! With TLS_CERT_FILE, TLS_KEY_FILE and TLS_CA_FILE set, a service's gRPC server accepts
//! only TLS connections whose client presents a certificate signed by that CA, and its
//! calls to other services (the gateway's to the backends, parking-lot's to delivery,
//! at `https://` URLs) present its own certificate and trust only that CA. The token on
//! each call still decides what the caller may do: mTLS says the peer is one of ours,
//! the token says who asks.
//!
//! [`write_local_ca`] makes a CA and a certificate per service for one machine
//! (`parkingctl certs`, used by `make run MTLS=1` and the tests).

use crate::config::TlsArgs;
use std::path::{Path, PathBuf};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The TLS settings could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS_CERT_FILE, TLS_KEY_FILE and TLS_CA_FILE go together; {0} is missing")]
    Incomplete(&'static str),
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("making a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0:?} cannot name a certificate: 1 to 64 of A-Z a-z 0-9 . _ @ : -")]
    Name(String),
    #[error("TLS_CERT_FILE, TLS_KEY_FILE, TLS_CA_FILE: {0}")]
    Unusable(String),
}

/// A service's certificate and the CA it trusts for its peers.
#[derive(Debug, Clone)]
pub struct Tls {
    identity: Identity,
    ca: Certificate,
    /// The same for the mesh's endpoints, which speak TLS themselves.
    mesh: mesh::endpoint::ClientTls,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

impl Tls {
    /// The settings' files, read now (so a bad path stops the start); `None` when none
    /// is set (plain HTTP/2).
    pub fn load(args: &TlsArgs) -> Result<Option<Tls>, TlsError> {
        match (&args.tls_cert_file, &args.tls_key_file, &args.tls_ca_file) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => {
                let (cert, key, ca) = (read(cert)?, read(key)?, read(ca)?);
                let mesh = mesh::endpoint::ClientTls::from_pem(&cert, &key, &ca)
                    .map_err(TlsError::Unusable)?;
                Ok(Some(Tls {
                    identity: Identity::from_pem(cert, key),
                    ca: Certificate::from_pem(ca),
                    mesh,
                }))
            }
            (None, _, _) => Err(TlsError::Incomplete("TLS_CERT_FILE")),
            (_, None, _) => Err(TlsError::Incomplete("TLS_KEY_FILE")),
            (_, _, None) => Err(TlsError::Incomplete("TLS_CA_FILE")),
        }
    }

    /// A server that requires a client certificate of the CA.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
    }

    /// The same client for the mesh's `https://` endpoints.
    pub fn mesh_client(&self) -> mesh::endpoint::ClientTls {
        self.mesh.clone()
    }

    /// A client that presents this service's certificate and trusts only the CA.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .identity(self.identity.clone())
            .ca_certificate(self.ca.clone())
    }
}

/// The files [`write_local_ca`] makes for service `name`.
pub fn local_files(dir: &Path, name: &str) -> TlsArgs {
    TlsArgs {
        tls_cert_file: Some(dir.join(format!("{name}.pem"))),
        tls_key_file: Some(dir.join(format!("{name}-key.pem"))),
        tls_ca_file: Some(dir.join("ca.pem")),
    }
}

/// Writes a new CA (`ca.pem`) and for each of `names` a certificate (`<name>.pem`) and key
/// (`<name>-key.pem`, owner-only) it signed, valid for `localhost`, 127.0.0.1 and the
/// name itself: enough for every service on one machine. The CA's key is not kept: to
/// add a service, make them all again.
pub fn write_local_ca(dir: &Path, names: &[&str]) -> Result<(), TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose, SanType,
    };
    if let Some(bad) = names.iter().find(|n| !crate::identity::valid_name(n)) {
        return Err(TlsError::Name((*bad).to_owned()));
    }
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "parking-mesh local CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    write(&dir.join("ca.pem"), ca.pem().as_bytes(), false)?;
    for name in names {
        let mut params = CertificateParams::new(vec!["localhost".to_owned(), (*name).to_owned()])?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        params.distinguished_name.push(DnType::CommonName, *name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        write(
            &dir.join(format!("{name}.pem")),
            cert.pem().as_bytes(),
            false,
        )?;
        write(
            &dir.join(format!("{name}-key.pem")),
            key.serialize_pem().as_bytes(),
            true,
        )?;
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8], secret: bool) -> Result<(), TlsError> {
    use std::io::Write;
    let error = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let _ = secret;
    let mut file = options.open(path).map_err(error)?;
    // A key file that existed before keeps its mode on open: make it owner-only anyway.
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(error)?;
    }
    file.write_all(bytes).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_ca_makes_loadable_service_files() {
        let dir = std::env::temp_dir().join(format!("tls-{}", std::process::id()));
        write_local_ca(&dir, &["gateway", "delivery"]).expect("written");
        let tls = Tls::load(&local_files(&dir, "delivery")).expect("readable");
        assert!(tls.is_some());
        assert!(Tls::load(&TlsArgs::default()).expect("none").is_none());
        let half = TlsArgs {
            tls_ca_file: None,
            ..local_files(&dir, "gateway")
        };
        assert!(matches!(
            Tls::load(&half),
            Err(TlsError::Incomplete("TLS_CA_FILE"))
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("delivery-key.pem"))
                .expect("key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "keys are owner-only");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
