//! How a client reaches the store and proves who it is: the endpoints, and
//! for `https://` endpoints the cluster's CA and a client certificate (etcd
//! with `--client-cert-auth` refuses a client without one). The cluster's
//! certificate authority and its certificates are made here too, in pure
//! Rust (`overlay-ctl cert`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use super::StoreError;

/// Where the cluster store is, and the TLS material to reach it with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// Comma-separated `http://` or `https://` URLs, one per etcd member.
    pub endpoints: String,
    pub tls: Option<TlsFiles>,
}

/// PEM files: the CA that signed the store's certificate, and this
/// client's certificate and key (absent: the server is checked, the client
/// not named).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl From<&str> for Access {
    fn from(endpoints: &str) -> Access {
        Access {
            endpoints: endpoints.to_owned(),
            tls: None,
        }
    }
}

impl From<&String> for Access {
    fn from(endpoints: &String) -> Access {
        Access::from(endpoints.as_str())
    }
}

impl From<&Access> for Access {
    fn from(a: &Access) -> Access {
        a.clone()
    }
}

impl Access {
    /// The access with TLS material from optional paths (as `agent.toml`
    /// and the command line give them): a certificate needs its key and the
    /// CA, and the CA alone checks the server only.
    pub fn new(
        endpoints: &str,
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Access, StoreError> {
        let tls = match (ca, cert, key) {
            (None, None, None) => None,
            (Some(ca), cert, key) if cert.is_some() == key.is_some() => Some(TlsFiles {
                ca: ca.to_owned(),
                cert: cert.map(Path::to_owned),
                key: key.map(Path::to_owned),
            }),
            (None, _, _) => {
                return Err(StoreError::Tls(
                    "a client certificate needs the CA too (store_ca)".into(),
                ));
            }
            _ => {
                return Err(StoreError::Tls(
                    "store_cert and store_key go together".into(),
                ));
            }
        };
        Ok(Access {
            endpoints: endpoints.to_owned(),
            tls,
        })
    }

    /// The TLS configuration for `url`: `None` for `http://` (a lab store,
    /// with a warning), and an error where scheme and material disagree.
    pub(super) fn client_tls(&self, url: &str) -> Result<Option<ClientTlsConfig>, StoreError> {
        match (url.starts_with("https://"), &self.tls) {
            (false, None) => {
                warn_plain(url);
                Ok(None)
            }
            (false, Some(_)) => Err(StoreError::Endpoint(format!(
                "`{url}`: TLS material is configured, so the endpoint must be https://"
            ))),
            (true, None) => Err(StoreError::Endpoint(format!(
                "`{url}`: an https:// store needs its CA (store_ca, OVERLAY_STORE_CA)"
            ))),
            (true, Some(files)) => files.config().map(Some),
        }
    }
}

/// Says once per process that the store is spoken to in the clear.
fn warn_plain(url: &str) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        tracing::warn!(
            "store {url}: plain HTTP, unauthenticated: anyone on the network can read and write \
             the cluster's state; use https:// with certificates outside a lab"
        );
    });
}

impl TlsFiles {
    fn config(&self) -> Result<ClientTlsConfig, StoreError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| StoreError::Tls(format!("reading {}: {e}", p.display())))
        };
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&self.ca)?));
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(tls)
    }
}

/// A certificate and its key, PEM-encoded.
pub struct Issued {
    pub cert: String,
    pub key: String,
}

/// A new certificate authority for the cluster (ten years).
pub fn new_ca(name: &str) -> Result<Issued, StoreError> {
    let key = KeyPair::generate().map_err(cert_error)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_error)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let cert = params.self_signed(&key).map_err(cert_error)?;
    Ok(Issued {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A certificate for `name` (its common name, which etcd takes as the user
/// name), signed by `ca`, valid for the server `ips` and `dns` names too.
pub fn issue(
    ca: &Issued,
    name: &str,
    ips: &[IpAddr],
    dns: &[String],
) -> Result<Issued, StoreError> {
    let ca_key = KeyPair::from_pem(&ca.key).map_err(cert_error)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key).map_err(cert_error)?;
    let key = KeyPair::generate().map_err(cert_error)?;
    let mut params = CertificateParams::new(dns.to_vec()).map_err(cert_error)?;
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let cert = params.signed_by(&key, &issuer).map_err(cert_error)?;
    Ok(Issued {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// The common name of a PEM certificate: the etcd user it signs in as.
pub fn certificate_name(pem: &str) -> Result<String, StoreError> {
    let bad = |why: String| StoreError::Tls(format!("certificate: {why}"));
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let cert = pem.parse_x509().map_err(|e| bad(e.to_string()))?;
    let name = cert.subject().iter_common_name().next();
    match name.map(|cn| cn.as_str()) {
        Some(Ok(name)) => Ok(name.to_owned()),
        _ => Err(bad("no common name".into())),
    }
}

impl Access {
    /// The identity this access signs in with (its certificate's common
    /// name), if it has a certificate.
    pub fn identity(&self) -> Result<Option<String>, StoreError> {
        let Some(cert) = self.tls.as_ref().and_then(|t| t.cert.as_ref()) else {
            return Ok(None);
        };
        let pem = std::fs::read_to_string(cert)
            .map_err(|e| StoreError::Tls(format!("reading {}: {e}", cert.display())))?;
        certificate_name(&pem).map(Some)
    }
}

fn cert_error(e: rcgen::Error) -> StoreError {
    StoreError::Tls(format!("certificate: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_material_must_be_whole_and_match_the_scheme() {
        let p = |s: &str| Some(Path::new(s).to_owned());
        let err =
            |r: Result<Access, StoreError>| r.err().map(|e| e.to_string()).unwrap_or_default();
        let cert = p("n1.crt");
        let key = p("n1.key");
        assert!(
            err(Access::new(
                "https://x:2379",
                None,
                cert.as_deref(),
                key.as_deref()
            ))
            .contains("needs the CA")
        );
        assert!(
            err(Access::new(
                "https://x:2379",
                p("ca").as_deref(),
                cert.as_deref(),
                None
            ))
            .contains("go together")
        );
        let plain = Access::new("http://x:2379", p("ca").as_deref(), None, None).unwrap();
        let e = plain.client_tls("http://x:2379").err().unwrap().to_string();
        assert!(e.contains("must be https://"), "{e}");
        let none = Access::from("https://x:2379");
        let e = none.client_tls("https://x:2379").err().unwrap().to_string();
        assert!(e.contains("needs its CA"), "{e}");
        assert!(
            Access::from("http://x:2379")
                .client_tls("http://x:2379")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn issued_certificates_name_their_holder() {
        let ca = new_ca("CA").unwrap();
        let n1 = issue(&ca, "n1", &["192.0.2.1".parse().unwrap()], &[]).unwrap();
        assert!(n1.cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(n1.key.contains("PRIVATE KEY"));
        assert_ne!(n1.cert, issue(&ca, "n1", &[], &[]).unwrap().cert);
        assert_eq!(certificate_name(&n1.cert).unwrap(), "n1");
    }
}
