//! Who is calling: the device id comes from the TLS client certificate (its DNS name
//! `<id>.device.seam`), never from anything the device says. Session ids carry a hash of the
//! owner's id, so a session can be tied to its device even after the gateway that minted it is
//! gone (another replica, a restart).

use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::Arc;

/// The DNS-name suffix of device certificates.
pub const DEVICE_SUFFIX: &str = ".device.seam";
/// Longest device id.
pub const MAX_DEVICE_ID: usize = 64;
/// Longest session id accepted from a device.
pub const MAX_SESSION_ID: usize = 64;

/// A device, as authenticated by its client certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(Arc<str>);

impl DeviceId {
    /// A device id that passed [`check_device_id`] (tests and the bench build theirs here).
    pub fn new(id: &str) -> Result<DeviceId, String> {
        check_device_id(id)?;
        Ok(DeviceId(id.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// First 16 hex digits of SHA-256 of the id: the owner tag in session ids.
    pub fn tag(&self) -> String {
        let d = Sha256::digest(self.0.as_bytes());
        d[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// 1–64 characters of `[A-Za-z0-9_-]`.
pub fn check_device_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_DEVICE_ID {
        return Err(format!("must be 1..={MAX_DEVICE_ID} characters"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(format!("character {c:?} is not one of A-Z a-z 0-9 - _"));
    }
    Ok(())
}

/// The device id in a verified client certificate chain (leaf first).
pub fn device_id(chain: &[CertificateDer<'_>]) -> Result<DeviceId, String> {
    let leaf = chain.first().ok_or("no client certificate")?;
    let cert = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| format!("client certificate cannot be parsed: {e}"))?;
    let name = cert
        .valid_dns_names()
        .find_map(|n| n.strip_suffix(DEVICE_SUFFIX).map(str::to_string))
        .ok_or_else(|| format!("client certificate has no DNS name ending in {DEVICE_SUFFIX}"))?;
    DeviceId::new(&name).map_err(|e| format!("device id {name:?} in the certificate: {e}"))
}

/// A fresh session id for `owner`: 32 random hex digits, a dot, the owner's tag (49 characters).
pub fn mint_session_id(owner: &DeviceId) -> String {
    format!("{:032x}.{}", rand::random::<u128>(), owner.tag())
}

/// Whether `session` is shaped like a minted id and was minted for `owner`.
pub fn session_owned_by(session: &str, owner: &DeviceId) -> bool {
    session.len() <= MAX_SESSION_ID
        && session.split_once('.').is_some_and(|(r, tag)| {
            r.len() == 32 && r.bytes().all(|b| b.is_ascii_hexdigit()) && tag == owner.tag()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::DevCa;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn device_id_comes_from_the_certificate() {
        let ca = DevCa::new("test").unwrap();
        let pem = ca.device("car-17").unwrap();
        let der = CertificateDer::from_pem_slice(pem.cert.as_bytes()).unwrap();
        assert_eq!(device_id(&[der]).unwrap().as_str(), "car-17");
        let gw = CertificateDer::from_pem_slice(ca.gateway(&[]).unwrap().cert.as_bytes()).unwrap();
        assert!(device_id(&[gw]).unwrap_err().contains(DEVICE_SUFFIX));
        assert!(device_id(&[]).is_err());
        assert!(device_id(&[CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])]).is_err());
    }

    #[test]
    fn bad_device_ids_are_refused() {
        for bad in ["", "a.b", "a b", "ü", &"x".repeat(65)] {
            assert!(check_device_id(bad).is_err(), "{bad:?}");
        }
        assert!(DevCa::new("t").unwrap().device("a/b").is_err());
    }

    #[test]
    fn session_ids_are_tied_to_their_owner() {
        let a = DeviceId::new("dev-a").unwrap();
        let b = DeviceId::new("dev-b").unwrap();
        let s = mint_session_id(&a);
        assert!(s.len() <= MAX_SESSION_ID);
        assert!(session_owned_by(&s, &a));
        assert!(!session_owned_by(&s, &b));
        assert!(!session_owned_by("x", &a));
        assert!(!session_owned_by(&format!("zz{}", &s[2..]), &a));
        assert_ne!(s, mint_session_id(&a));
    }
}
