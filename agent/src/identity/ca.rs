//! The certificate authority that signs workload certificates on this node.
//!
//! Either a plug-in CA in Istio's `cacerts` layout (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`,
//! `cert-chain.pem`), so that lockmesh and Istio nodes trust each other, or a self-signed root
//! kept (0600) in the agent's state directory and reused across restarts.
use std::{
    fs,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use time::OffsetDateTime;

pub const CA_CERT: &str = "ca-cert.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const ROOT_CERT: &str = "root-cert.pem";
pub const CERT_CHAIN: &str = "cert-chain.pem";

/// Lifetime of the roots `lockmesh ca init` and the self-signed fallback create.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Leaf certificates start a little in the past so that peers with skewed clocks accept them.
const CLOCK_SKEW: time::Duration = time::Duration::minutes(5);

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// What follows a leaf in the chain it presents: the signing CA and its parents.
    chain: Vec<CertificateDer<'static>>,
    /// The trust bundle peers' chains must lead to.
    pub roots: Vec<CertificateDer<'static>>,
    /// Where the CA came from, for logs.
    pub source: String,
}

/// A certificate signed for someone else's key: the leaf, then the CA chain.
pub struct SignedChain {
    pub chain: Vec<CertificateDer<'static>>,
    pub serial: String,
    pub not_after: OffsetDateTime,
}

/// A freshly signed workload certificate and its key.
pub struct SignedLeaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub serial: String,
    pub not_after: OffsetDateTime,
}

impl Ca {
    /// Loads a plug-in CA from a directory in Istio's `cacerts` layout.
    pub fn load_plugin(dir: &Path) -> anyhow::Result<Self> {
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read(&path).with_context(|| format!("reading {}", path.display()))
        };
        let ca_cert = read(CA_CERT)?;
        let ca_key = read(CA_KEY)?;
        let key = PrivateKeyDer::from_pem_slice(&ca_key)
            .with_context(|| format!("{}: no PEM private key", dir.join(CA_KEY).display()))?;
        let key = KeyPair::try_from(&key).with_context(|| {
            format!("{}: unsupported key (RSA, ECDSA P-256/384/521 or Ed25519)", dir.join(CA_KEY).display())
        })?;
        let ca_cert = certificates(&ca_cert, &dir.join(CA_CERT))?;
        let Some(signing_cert) = ca_cert.first() else {
            bail!("{}: no certificate", dir.join(CA_CERT).display())
        };
        let issuer = Issuer::from_ca_cert_der(signing_cert, key)
            .with_context(|| format!("{}: not a usable CA certificate", dir.join(CA_CERT).display()))?;
        let roots = certificates(&read(ROOT_CERT)?, &dir.join(ROOT_CERT))?;
        if roots.is_empty() {
            bail!("{}: no certificate", dir.join(ROOT_CERT).display());
        }
        // Istio's cert-chain.pem is the signing CA followed by its parents; without one the
        // signing certificate alone follows the leaf.
        let chain_path = dir.join(CERT_CHAIN);
        let chain = match fs::read(&chain_path) {
            Ok(pem) => certificates(&pem, &chain_path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ca_cert.clone(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", chain_path.display())),
        };
        Ok(Self { issuer, chain, roots, source: format!("plug-in CA {}", dir.display()) })
    }

    /// The self-signed root kept in `dir`, created on first use.
    pub fn load_or_create_self_signed(dir: &Path, trust_domain: &str) -> anyhow::Result<Self> {
        if !dir.join(CA_KEY).exists() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("restricting {}", dir.display()))?;
            let (cert, key) = self_signed_root(trust_domain)?;
            write_private(&dir.join(CA_KEY), key.serialize_pem().as_bytes())?;
            write_private(&dir.join(CA_CERT), cert.pem().as_bytes())?;
            write_private(&dir.join(ROOT_CERT), cert.pem().as_bytes())?;
            tracing::info!(dir = %dir.display(), "created a self-signed root CA");
        }
        let mut ca = Self::load_plugin(dir)?;
        ca.source = format!("self-signed root in {}", dir.display());
        Ok(ca)
    }

    /// The plug-in CA in `ca_dir`, else the self-signed root kept in `state_dir/ca`.
    pub fn load(ca_dir: Option<&Path>, state_dir: &Path, trust_domain: &str) -> anyhow::Result<Self> {
        match ca_dir {
            Some(dir) => Self::load_plugin(dir),
            None => Self::load_or_create_self_signed(&state_dir.join("ca"), trust_domain),
        }
    }

    /// Signs a certificate for `spiffe_id` valid for `ttl`: a fresh ECDSA P-256 key, the SPIFFE
    /// ID as its only (URI) SAN, usable for TLS server and client authentication.
    pub fn issue(&self, spiffe_id: &str, ttl: Duration) -> anyhow::Result<SignedLeaf> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating a leaf key")?;
        let signed = self.sign_workload(&key, spiffe_id, ttl)?;
        let key = PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| anyhow::anyhow!("leaf key encoding: {e}"))?;
        Ok(SignedLeaf { chain: signed.chain, key, serial: signed.serial, not_after: signed.not_after })
    }

    /// Signs a workload certificate for `spiffe_id` over `public_key` (the key of a CSR whose
    /// holder was authorized for that identity). Only the public key is taken from the request:
    /// SAN, lifetime and usages are ours.
    pub fn sign_workload(
        &self,
        public_key: &impl PublicKeyData,
        spiffe_id: &str,
        ttl: Duration,
    ) -> anyhow::Result<SignedChain> {
        let san = SanType::URI(spiffe_id.try_into().with_context(|| format!("{spiffe_id:?} as a URI SAN"))?);
        self.sign(
            public_key,
            vec![san],
            ttl,
            &[ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        )
        .with_context(|| format!("signing {spiffe_id}"))
    }

    /// Signs a TLS server certificate for DNS names and IP addresses (the CA service's own).
    pub fn sign_server(
        &self,
        public_key: &impl PublicKeyData,
        names: &[String],
        ttl: Duration,
    ) -> anyhow::Result<SignedChain> {
        let sans = names
            .iter()
            .map(|name| match name.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => name.as_str().try_into().map(SanType::DnsName),
            })
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{names:?} as DNS names or IP addresses"))?;
        self.sign(public_key, sans, ttl, &[ExtendedKeyUsagePurpose::ServerAuth])
            .with_context(|| format!("signing a server certificate for {names:?}"))
    }

    fn sign(
        &self,
        public_key: &impl PublicKeyData,
        sans: Vec<SanType>,
        ttl: Duration,
        usages: &[ExtendedKeyUsagePurpose],
    ) -> anyhow::Result<SignedChain> {
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans;
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + ttl;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = usages.to_vec();
        // A positive 128-bit serial (top bit clear keeps the DER integer positive).
        let mut serial = [0u8; 16];
        aws_lc_rs::rand::fill(&mut serial).map_err(|_| anyhow::anyhow!("no randomness for a serial"))?;
        serial[0] &= 0x7f;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let cert = params.signed_by(public_key, &self.issuer)?;
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.chain.iter().cloned());
        Ok(SignedChain { chain, serial: hex(&serial), not_after: params.not_after })
    }
}

/// Writes a new CA in Istio's `cacerts` layout to `dir`: a root, an intermediate signed by it
/// that signs workload certificates, and the chain between them. `dir` must not hold a CA yet.
pub fn init(dir: &Path, trust_domain: &str) -> anyhow::Result<()> {
    if dir.join(CA_KEY).exists() {
        bail!("{} already holds a CA ({CA_KEY}); refusing to overwrite it", dir.display());
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (root_cert, root_key) = self_signed_root(trust_domain)?;
    let root = Issuer::from_ca_cert_der(root_cert.der(), root_key).context("reading back the new root")?;
    let mut params = ca_params(trust_domain, "lockmesh intermediate CA", 0);
    params.not_after = OffsetDateTime::now_utc() + ROOT_LIFETIME / 2;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating the CA key")?;
    let cert = params.signed_by(&key, &root).context("signing the intermediate CA")?;
    write_private(&dir.join(CA_KEY), key.serialize_pem().as_bytes())?;
    write_private(&dir.join(CA_CERT), cert.pem().as_bytes())?;
    write_private(&dir.join(ROOT_CERT), root_cert.pem().as_bytes())?;
    write_private(&dir.join(CERT_CHAIN), format!("{}{}", cert.pem(), root_cert.pem()).as_bytes())?;
    Ok(())
}

fn self_signed_root(trust_domain: &str) -> anyhow::Result<(rcgen::Certificate, KeyPair)> {
    let params = ca_params(trust_domain, "lockmesh root CA", 1);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating the root key")?;
    let cert = params.self_signed(&key).context("self-signing the root")?;
    Ok((cert, key))
}

fn ca_params(trust_domain: &str, name: &str, path_len: u8) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + ROOT_LIFETIME;
    params
}

/// The certificates of a PEM file (plug-in CA files, the CA service's root); `path` names it in
/// errors.
pub fn certificates(pem: &[u8], path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: bad PEM certificate", path.display()))
}

/// Creates (or replaces) a file readable by its owner only.
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents).with_context(|| format!("writing {}", path.display()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
