//! Certificates for a test cluster: a CA, the API server's serving
//! certificate, an admin client certificate (group `system:masters`), the
//! service-account signing key, and an admin kubeconfig using them.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::{Error, Result};

/// Paths of the generated files.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The API server's certificate.
    pub server_cert: PathBuf,
    /// The API server's key.
    pub server_key: PathBuf,
    /// The admin client certificate.
    pub admin_cert: PathBuf,
    /// The admin client key.
    pub admin_key: PathBuf,
    /// The service-account signing key.
    pub sa_key: PathBuf,
    /// Its public half, which verifies tokens.
    pub sa_pub: PathBuf,
    /// An admin kubeconfig for `server`.
    pub kubeconfig: PathBuf,
}

fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(Error::io(format!("writing {}", path.display())))?;
    Ok(path)
}

fn dn(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    if let Some(o) = org {
        dn.push(DnType::OrganizationName, o);
    }
    dn
}

/// Generates everything into `dir`; `server` is the URL the kubeconfig
/// points at, `ips` the API server's addresses (SANs).
pub fn generate(dir: &Path, server_url: &str, ips: &[IpAddr]) -> Result<Pki> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name = dn("signpost-test-ca", None);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let names = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ];
    let mut server =
        CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())?;
    server
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    server.distinguished_name = dn("kube-apiserver", None);
    server.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate()?;
    let server_cert = server.signed_by(&server_key, &issuer)?;

    let mut admin = CertificateParams::new(Vec::<String>::new())?;
    admin.distinguished_name = dn("signpost-admin", Some("system:masters"));
    admin.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_key = KeyPair::generate()?;
    let admin_cert = admin.signed_by(&admin_key, &issuer)?;

    let sa_key = KeyPair::generate()?;
    let pki = Pki {
        ca: write(dir, "ca.crt", &ca_cert.pem())?,
        server_cert: write(dir, "apiserver.crt", &server_cert.pem())?,
        server_key: write(dir, "apiserver.key", &server_key.serialize_pem())?,
        admin_cert: write(dir, "admin.crt", &admin_cert.pem())?,
        admin_key: write(dir, "admin.key", &admin_key.serialize_pem())?,
        sa_key: write(dir, "sa.key", &sa_key.serialize_pem())?,
        sa_pub: write(dir, "sa.pub", &sa_key.public_key_pem())?,
        kubeconfig: dir.join("admin.kubeconfig"),
    };
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: signpost\n  cluster:\n    server: {server_url}\n    certificate-authority: {ca}\n\
         users:\n- name: admin\n  user:\n    client-certificate: {cert}\n    client-key: {key}\n\
         contexts:\n- name: signpost\n  context:\n    cluster: signpost\n    user: admin\ncurrent-context: signpost\n",
        ca = pki.ca.display(),
        cert = pki.admin_cert.display(),
        key = pki.admin_key.display(),
    );
    write(dir, "admin.kubeconfig", &kubeconfig)?;
    Ok(pki)
}
