//! Certificates for the tests of TLS: made here with rcgen.

use std::path::{Path, PathBuf};

use profiler_daemon::client::TlsOptions;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// Certificate files for one test: a CA, a server certificate for `localhost` and 127.0.0.1,
/// a client certificate from the CA, and a client certificate from another CA.
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    pub fn new(test: &str) -> Pki {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tls").join(test);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pki = Pki { dir };
        let ca = pki.ca("ca", "profiler test CA");
        let other_ca = pki.ca("other-ca", "some other CA");
        pki.leaf("server", &["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth, &ca);
        pki.leaf("client", &["profctl"], ExtendedKeyUsagePurpose::ClientAuth, &ca);
        pki.leaf("other-client", &["profctl"], ExtendedKeyUsagePurpose::ClientAuth, &other_ca);
        pki
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `NAME.pem` (and `NAME.key`, which nobody needs for a CA).
    fn ca(&self, name: &str, common_name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(self.path(&format!("{name}.pem")), ca.pem()).unwrap();
        ca
    }

    /// `NAME.pem` and `NAME.key`, signed by `ca`.
    fn leaf(
        &self,
        name: &str,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
        ca: &CertifiedIssuer<'static, KeyPair>,
    ) {
        let names: Vec<String> = names.iter().map(|&n| n.to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, ca).unwrap();
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).unwrap();
    }

    /// profctl's options: `--ca CA.pem` and, when given, `--cert CLIENT.pem --key CLIENT.key`.
    pub fn client(&self, ca: &str, client: Option<&str>) -> TlsOptions {
        TlsOptions {
            ca: Some(self.path(&format!("{ca}.pem"))),
            cert: client.map(|c| self.path(&format!("{c}.pem"))),
            key: client.map(|c| self.path(&format!("{c}.key"))),
            server_name: None,
        }
    }

    /// The daemon's TLS flags, with client certificates required when `mutual`.
    pub fn server_flags(&self, mutual: bool) -> Vec<String> {
        let mut flags = vec![
            "--tls-cert".to_owned(),
            self.path("server.pem").display().to_string(),
            "--tls-key".to_owned(),
            self.path("server.key").display().to_string(),
        ];
        if mutual {
            flags.extend(["--tls-client-ca".to_owned(), self.path("ca.pem").display().to_string()]);
        }
        flags
    }
}
