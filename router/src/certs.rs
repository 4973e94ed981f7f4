//! Development certificates: a CA, the gateway's server certificate and one client certificate
//! per device. The device id lives in the client certificate as the DNS name
//! `<id>.device.seam` (and as the common name), which is what the gateway reads it from.
//! `seam-router certs` writes them for the demo; the tests make theirs here too.

use crate::error::{Error, Result};
use crate::identity::{DEVICE_SUFFIX, check_device_id};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::path::Path;

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// A dev CA able to sign gateway and device certificates.
pub struct DevCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

fn tls(e: rcgen::Error) -> Error {
    Error::Tls(e.to_string())
}

impl DevCa {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> Result<DevCa> {
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().map_err(tls)?;
        let issuer = CertifiedIssuer::self_signed(p, key).map_err(tls)?;
        Ok(DevCa { issuer })
    }

    /// The CA's certificate and key.
    pub fn pem(&self) -> Pem {
        Pem {
            cert: self.issuer.pem(),
            key: self.issuer.key().serialize_pem(),
        }
    }

    /// A server certificate for the gateway, valid for `names` (DNS names or IP addresses)
    /// besides `localhost` and `127.0.0.1`.
    pub fn gateway(&self, names: &[String]) -> Result<Pem> {
        let mut sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        sans.extend(names.iter().cloned());
        let mut p = CertificateParams::new(sans).map_err(tls)?;
        p.distinguished_name
            .push(DnType::CommonName, "seam-gateway");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(p)
    }

    /// A client certificate for device `id`.
    pub fn device(&self, id: &str) -> Result<Pem> {
        check_device_id(id).map_err(|e| Error::Tls(format!("device id {id:?}: {e}")))?;
        let mut p = CertificateParams::new(vec![format!("{id}{DEVICE_SUFFIX}")]).map_err(tls)?;
        p.distinguished_name.push(DnType::CommonName, id);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(p)
    }

    fn sign(&self, p: CertificateParams) -> Result<Pem> {
        let key = KeyPair::generate().map_err(tls)?;
        let cert = p.signed_by(&key, &self.issuer).map_err(tls)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// Writes `ca.pem`, `ca.key`, `gateway.pem`, `gateway.key` and `<id>.pem`, `<id>.key` per
/// device into `dir` (created if missing). Keys are written readable by the owner only.
pub fn write_dev_certs(dir: &Path, names: &[String], devices: &[String]) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let ca = DevCa::new("Seam dev CA")?;
    let mut files = Vec::new();
    let mut put = |stem: &str, pem: &Pem| -> Result<()> {
        let cert = dir.join(format!("{stem}.pem"));
        std::fs::write(&cert, &pem.cert).map_err(|e| Error::io(&cert, e))?;
        let key = dir.join(format!("{stem}.key"));
        write_private(&key, &pem.key)?;
        files.push(cert.display().to_string());
        files.push(key.display().to_string());
        Ok(())
    };
    put("ca", &ca.pem())?;
    put("gateway", &ca.gateway(names)?)?;
    for d in devices {
        if d == "ca" || d == "gateway" {
            return Err(Error::Tls(format!(
                "device id {d:?} clashes with a file name"
            )));
        }
        put(d, &ca.device(d)?)?;
    }
    Ok(files)
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    f.write_all(text.as_bytes()).map_err(|e| Error::io(path, e))
}
