//! TLS material for the tests, made with rcgen (no openssl CLI): certificate authorities,
//! server certificates they sign, PEM files in a temp dir ([`TlsFiles`]), and a rustls
//! client ([`tls_client`]) for tests that speak the wire protocol over TLS themselves
//! (direct TLS, the bytes-after-SSLRequest check).
//!
//! Keys are ECDSA P-256. [`Leaf::key_pem`] is PKCS#8; [`Leaf::sec1_key_pem`] is the same
//! key as SEC1 (`BEGIN EC PRIVATE KEY`). rcgen with ring cannot make RSA keys, so there is
//! no PKCS#1 file here.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, ServerName};
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The names every server certificate of the harness is valid for.
pub const SERVER_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// A certificate authority: a self-signed CA certificate (or an intermediate signed by
/// another [`Ca`]) and its key.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A server certificate and its key, as PEM.
pub struct Leaf {
    /// The certificate alone.
    pub cert_pem: String,
    /// The certificate followed by the intermediates up to (not including) the root.
    pub chain_pem: String,
    /// PKCS#8 (`BEGIN PRIVATE KEY`).
    pub key_pem: String,
    key_der: Vec<u8>,
}

impl Ca {
    /// A new root CA called `name`.
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("generating a CA key");
        let cert = ca_params(name)
            .self_signed(&key)
            .expect("self-signing a CA certificate");
        Ca { cert, key }
    }

    /// An intermediate CA called `name`, signed by this one.
    pub fn intermediate(&self, name: &str) -> Ca {
        let key = KeyPair::generate().expect("generating an intermediate CA key");
        let cert = ca_params(name)
            .signed_by(&key, &self.cert, &self.key)
            .expect("signing an intermediate CA certificate");
        Ca { cert, key }
    }

    /// The CA certificate as PEM (what `tls_ca_file` / `sslrootcert` hold).
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A server certificate for `names` (DNS names or IP addresses), signed by this CA.
    pub fn issue(&self, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("certificate names");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("generating a server key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("signing a server certificate");
        Leaf {
            cert_pem: cert.pem(),
            chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        }
    }

    /// [`Ca::issue`] by an intermediate of this CA: `chain_pem` holds the server
    /// certificate and the intermediate, so a client trusting only this root can verify it.
    pub fn issue_via_intermediate(&self, names: &[&str]) -> Leaf {
        let intermediate = self.intermediate("sluice test intermediate CA");
        let mut leaf = intermediate.issue(names);
        leaf.chain_pem = format!("{}{}", leaf.cert_pem, intermediate.pem());
        leaf
    }
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

impl Leaf {
    /// The key as SEC1 (`BEGIN EC PRIVATE KEY`, with the curve named), as OpenSSL writes it.
    pub fn sec1_key_pem(&self) -> String {
        pem("EC PRIVATE KEY", &pkcs8_p256_to_sec1(&self.key_der))
    }
}

/// PEM files in a temp dir (removed on drop): a CA (`ca.pem`), a server certificate for
/// [`SERVER_NAMES`] signed by it (`server.crt`, `server.key`, mode 0600), and an unrelated
/// CA (`other-ca.pem`) for "wrong CA" tests.
pub struct TlsFiles {
    dir: TempDir,
    pub ca: Ca,
    pub other_ca: Ca,
}

impl TlsFiles {
    pub fn new() -> TlsFiles {
        let dir = tempfile::Builder::new()
            .prefix("sluice-tls-")
            .tempdir()
            .expect("creating a temp dir for TLS files");
        let files = TlsFiles {
            dir,
            ca: Ca::new("sluice test CA"),
            other_ca: Ca::new("unrelated test CA"),
        };
        write_server_files(files.dir.path(), &files.ca, &files.other_ca);
        files
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir().join("ca.pem")
    }

    pub fn other_ca_file(&self) -> PathBuf {
        self.dir().join("other-ca.pem")
    }

    pub fn cert_file(&self) -> PathBuf {
        self.dir().join("server.crt")
    }

    pub fn key_file(&self) -> PathBuf {
        self.dir().join("server.key")
    }

    /// Writes `contents` to `name` in the dir, replacing the file atomically (a reader
    /// sees the old or the new file, never half of one). Returns the path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        write_atomically(&self.dir().join(name), contents)
    }

    /// Replaces `server.crt` (with the chain) and `server.key` by `leaf`.
    pub fn install(&self, leaf: &Leaf) {
        write_atomically(&self.cert_file(), &leaf.chain_pem);
        write_atomically(&self.key_file(), &leaf.key_pem);
    }
}

/// Writes `ca.pem`, `other-ca.pem`, `server.crt` and `server.key` (0600) into `dir`.
pub(super) fn write_server_files(dir: &Path, ca: &Ca, other_ca: &Ca) {
    let leaf = ca.issue(&SERVER_NAMES);
    write_atomically(&dir.join("ca.pem"), &ca.pem());
    write_atomically(&dir.join("other-ca.pem"), &other_ca.pem());
    write_atomically(&dir.join("server.crt"), &leaf.chain_pem);
    write_atomically(&dir.join("server.key"), &leaf.key_pem);
}

/// Writes through a temp file in the same dir and renames it over `path`; the file ends
/// with mode 0600 (PostgreSQL insists on it for keys; harmless for certificates).
fn write_atomically(path: &Path, contents: &str) -> PathBuf {
    let name = path.file_name().expect("a file name").to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    fs::write(&tmp, contents).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", tmp.display()));
    fs::rename(&tmp, path).unwrap_or_else(|e| panic!("renaming to {}: {e}", path.display()));
    path.to_path_buf()
}

/// A rustls client handshake on `tcp`: trusts only `roots`, sends SNI `server_name` (when
/// it is a DNS name) and offers `alpn` (none when empty).
pub async fn tls_client(
    tcp: TcpStream,
    roots: &[CertificateDer<'static>],
    server_name: &str,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).expect("a usable root certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = ServerName::try_from(server_name.to_owned()).expect("a server name");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

// ---------------------------------------------------------------------------------------
// Just enough DER and PEM to turn rcgen's PKCS#8 P-256 key into SEC1.

/// OID 1.2.840.10045.3.1.7 (prime256v1), DER-encoded with its tag.
const P256_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// `PrivateKeyInfo { version, algorithm, privateKey OCTET STRING (ECPrivateKey) }` →
/// `ECPrivateKey { version, privateKey, [0] parameters, [1] publicKey }` with the curve
/// named in `[0]` (ring leaves it out of the inner structure).
fn pkcs8_p256_to_sec1(pkcs8: &[u8]) -> Vec<u8> {
    let (tag, info, _) = der_tlv(pkcs8);
    assert_eq!(tag, 0x30, "PKCS#8 is a SEQUENCE");
    let (_, _, rest) = der_tlv(info); // version
    let (_, _, rest) = der_tlv(rest); // algorithm
    let (tag, inner, _) = der_tlv(rest);
    assert_eq!(tag, 0x04, "PKCS#8 privateKey is an OCTET STRING");
    let (tag, ec, _) = der_tlv(inner);
    assert_eq!(tag, 0x30, "ECPrivateKey is a SEQUENCE");
    let mut fields = Vec::new();
    let mut rest = ec;
    while !rest.is_empty() {
        let (tag, value, next) = der_tlv(rest);
        fields.push((tag, value));
        rest = next;
    }
    let mut body = Vec::new();
    for &(tag, value) in &fields {
        if tag == 0xa1 && !fields.iter().any(|&(t, _)| t == 0xa0) {
            body.extend(der_encode(0xa0, P256_OID));
        }
        body.extend(der_encode(tag, value));
    }
    der_encode(0x30, &body)
}

/// Tag, value and what follows of the first DER element of `der`.
fn der_tlv(der: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = der[0];
    let (len, header) = match der[1] {
        n if n < 0x80 => (usize::from(n), 2),
        n => {
            let count = usize::from(n & 0x7f);
            let len = der[2..2 + count]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, 2 + count)
        }
    };
    (tag, &der[header..header + len], &der[header + len..])
}

fn der_encode(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match value.len() {
        n if n < 0x80 => out.push(n as u8),
        n if n < 0x100 => out.extend([0x81, n as u8]),
        n => out.extend([0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(value);
    out
}

fn pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            match i <= chunk.len() {
                true => b64.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char),
                false => b64.push('='),
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
