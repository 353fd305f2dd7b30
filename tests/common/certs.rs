//! Certificates made at run time for the TLS tests (rcgen): a CA, node certificates with the
//! node name as DNS subjectAltName, expired ones, other CAs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// The files of one node: (certificate, key).
pub struct NodeFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        Ca {
            issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// Write the CA certificate to `path`.
    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.issuer.pem()).unwrap();
        path.to_owned()
    }

    /// A certificate for `san` (the DNS name it carries), written as `dir/FILE.crt` / `.key`.
    pub fn issue(&self, dir: &Path, file: &str, san: &str, expired: bool) -> NodeFiles {
        let mut p = CertificateParams::new(vec![san.to_owned()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, san);
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        let nf = NodeFiles {
            cert: dir.join(format!("{file}.crt")),
            key: dir.join(format!("{file}.key")),
        };
        std::fs::write(&nf.cert, cert.pem()).unwrap();
        std::fs::write(&nf.key, key.serialize_pem()).unwrap();
        nf
    }
}
