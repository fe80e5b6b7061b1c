//! Workload identities: SPIFFE certificates signed by the node's CA key or by the cluster's CA
//! service, renewed at half-life, and the rustls configurations of both tunnel ends (TLS 1.3
//! only, AES-GCM, ALPN `h2`, no SNI, no resumption: what Istio ambient's ztunnel does and
//! expects).
pub mod ca;
mod handshake;
mod issuer;
pub(crate) mod protocol;
pub(crate) mod remote;
pub mod spiffe;
/// Public for the fuzz targets (`agent/fuzz`): the verifiers as rustls calls them.
#[doc(hidden)]
pub mod verify;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use rustls::{
    ClientConfig, ServerConfig,
    client::{ResolvesClientCert, Resumption},
    crypto::{CryptoProvider, aws_lc_rs},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use serde::Serialize;
use time::OffsetDateTime;

pub use self::handshake::{PeerInfo, TlsInfo, handshake_failure, handshake_reason, peer_info};
pub use self::verify::spiffe_id_of;
use self::{
    issuer::Issuer,
    remote::RemoteCaOptions,
    verify::{ClientIdentityVerifier, ServerIdentityVerifier, Trust},
};
use crate::sys::bounds::TableStat;

#[derive(Clone, Debug)]
pub struct IdentityOptions {
    pub trust_domain: String,
    /// A plug-in CA in Istio's `cacerts` layout; without one, a self-signed root in `state_dir`.
    pub ca_dir: Option<PathBuf>,
    /// The cluster's CA service signs instead of a local CA key (then `ca_dir` is unused).
    pub remote_ca: Option<RemoteCaOptions>,
    pub state_dir: PathBuf,
    /// Lifetime of workload certificates; they are renewed at about half of it.
    pub cert_ttl: Duration,
    /// Offer the hybrid X25519MLKEM768 key exchange first (costs ≈27% of the handshake rate).
    pub post_quantum: bool,
}

/// A workload's current certificate.
struct Leaf {
    certified: Arc<CertifiedKey>,
    serial: String,
    not_after: OffsetDateTime,
    renew_at: OffsetDateTime,
}

/// The certificate of one identity, swapped on renewal; TLS configs resolve through it so that
/// new handshakes pick up a renewed certificate while open connections keep theirs.
#[derive(Debug)]
struct LeafSlot(ArcSwap<Leaf>);

impl std::fmt::Debug for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leaf").field("serial", &self.serial).finish_non_exhaustive()
    }
}

impl ResolvesServerCert for LeafSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().certified.clone())
    }
}

impl ResolvesClientCert for LeafSlot {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A certificate as `/readyz` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct CertificateStatus {
    pub identity: String,
    pub serial: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub renew_at: OffsetDateTime,
}

/// Failed issuances of an identity, so that a pod waiting for its certificate does not hammer
/// an unreachable or refusing CA.
struct Backoff {
    failures: u32,
    retry_at: Instant,
    error: String,
}

const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Identities the agent holds certificates (and server configurations, and issuance backoffs)
/// for at most: one per service account of this node's pods, dropped when its last pod leaves.
/// Beyond it, a new identity is refused (its pod is not served) and counted.
pub const MAX_IDENTITIES: usize = 4096;
/// Client configurations cached, one per (source identity, destination identity); beyond it an
/// arbitrary one is evicted (rebuilt on its next use) and counted.
pub const MAX_CLIENT_CONFIGS: usize = 4096;

pub struct Identities {
    options: IdentityOptions,
    issuer: Issuer,
    provider: Arc<CryptoProvider>,
    trust: Arc<Trust>,
    leaves: Mutex<HashMap<String, Arc<LeafSlot>>>,
    backoff: Mutex<HashMap<String, Backoff>>,
    server_configs: Mutex<HashMap<String, Arc<ServerConfig>>>,
    client_configs: Mutex<HashMap<(String, String), Arc<ClientConfig>>>,
    /// Identities refused because [`MAX_IDENTITIES`] were held.
    refused: AtomicU64,
    /// Client configurations evicted at [`MAX_CLIENT_CONFIGS`].
    evicted_client_configs: AtomicU64,
}

impl Identities {
    pub fn new(options: &IdentityOptions) -> anyhow::Result<Self> {
        let provider = Arc::new(provider(options.post_quantum));
        let issuer = Issuer::new(options, &provider)?;
        tracing::info!(ca = %issuer.source(), ttl = ?options.cert_ttl, "workload identities ready");
        let trust = Arc::new(Trust::new(
            issuer.roots(),
            &options.trust_domain,
            provider.signature_verification_algorithms,
        )?);
        Ok(Self {
            options: options.clone(),
            issuer,
            provider,
            trust,
            leaves: Mutex::default(),
            backoff: Mutex::default(),
            server_configs: Mutex::default(),
            client_configs: Mutex::default(),
            refused: AtomicU64::new(0),
            evicted_client_configs: AtomicU64::new(0),
        })
    }

    /// Makes sure `identity` has a certificate, issuing one now if needed. After a failure,
    /// fails fast (naming the last error) until the next attempt is due: 1 s, doubling, ≤ 60 s.
    pub async fn prepare(&self, identity: &str) -> anyhow::Result<()> {
        if self.prepared(identity).is_some() {
            return Ok(());
        }
        let held = self.leaves.lock().map(|m| m.len()).unwrap_or(0);
        if held >= MAX_IDENTITIES {
            self.refused.fetch_add(1, Ordering::Relaxed);
            anyhow::bail!(
                "no certificate for {identity}: the agent already holds certificates for {held} identities (at most {MAX_IDENTITIES})"
            );
        }
        let waiting = self.backoff.lock().ok().and_then(|m| {
            let backoff = m.get(identity)?;
            let wait = backoff.retry_at.saturating_duration_since(Instant::now());
            (!wait.is_zero()).then(|| (wait, backoff.error.clone()))
        });
        if let Some((wait, error)) = waiting {
            anyhow::bail!(
                "no certificate for {identity} yet: {error} (next attempt in {}s)",
                wait.as_secs() + 1
            );
        }
        let leaf = match self.issue(identity).await {
            Ok(leaf) => leaf,
            Err(e) => {
                if let Ok(mut map) = self.backoff.lock() {
                    let failures = map.get(identity).map_or(0, |b| b.failures) + 1;
                    let delay = BACKOFF_FIRST.saturating_mul(1 << (failures - 1).min(16)).min(BACKOFF_MAX);
                    let error = format!("{e:#}");
                    map.insert(
                        identity.to_string(),
                        Backoff { failures, retry_at: Instant::now() + delay, error },
                    );
                }
                return Err(e);
            }
        };
        if let Ok(mut map) = self.backoff.lock() {
            map.remove(identity);
        }
        tracing::info!(%identity, serial = %leaf.serial, not_after = %leaf.not_after, "certificate issued");
        let slot = Arc::new(LeafSlot(ArcSwap::from_pointee(leaf)));
        let mut map = self.leaves.lock().map_err(|_| anyhow::anyhow!("certificate store poisoned"))?;
        map.entry(identity.to_string()).or_insert(slot);
        Ok(())
    }

    /// The server side of tunnels to workloads running as `identity` (prepared before).
    pub fn server_config(&self, identity: &str) -> anyhow::Result<Arc<ServerConfig>> {
        if let Some(config) = self.server_configs.lock().ok().and_then(|m| m.get(identity).cloned()) {
            return Ok(config);
        }
        let slot = self.slot(identity)?;
        let verifier = Arc::new(ClientIdentityVerifier { trust: self.trust.clone() });
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS 1.3 with our provider")?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(slot);
        config.alpn_protocols = vec![b"h2".to_vec()];
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        let config = Arc::new(config);
        if let Ok(mut map) = self.server_configs.lock() {
            map.insert(identity.to_string(), config.clone());
        }
        Ok(config)
    }

    /// The client side of a tunnel from `src` (prepared before) that only accepts a server
    /// proving `dst`.
    pub fn client_config(&self, src: &str, dst: &str) -> anyhow::Result<Arc<ClientConfig>> {
        let key = (src.to_string(), dst.to_string());
        if let Some(config) = self.client_configs.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(config);
        }
        let slot = self.slot(src)?;
        let verifier =
            Arc::new(ServerIdentityVerifier { trust: self.trust.clone(), expected: dst.to_string() });
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS 1.3 with our provider")?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(slot);
        config.alpn_protocols = vec![b"h2".to_vec()];
        config.enable_sni = false;
        config.resumption = Resumption::disabled();
        let config = Arc::new(config);
        if let Ok(mut map) = self.client_configs.lock() {
            if map.len() >= MAX_CLIENT_CONFIGS
                && !map.contains_key(&key)
                && let Some(victim) = map.keys().next().cloned()
            {
                map.remove(&victim);
                self.evicted_client_configs.fetch_add(1, Ordering::Relaxed);
            }
            map.insert(key, config.clone());
        }
        Ok(config)
    }

    /// Keeps the certificates, configurations and backoffs of `identities` only (the pods
    /// enrolled now): an identity whose last pod left is no longer renewed or held.
    pub fn retain(&self, identities: impl IntoIterator<Item = String>) {
        let keep: std::collections::HashSet<String> = identities.into_iter().collect();
        let mut dropped = Vec::new();
        if let Ok(mut leaves) = self.leaves.lock() {
            leaves.retain(|id, _| {
                let kept = keep.contains(id);
                if !kept {
                    dropped.push(id.clone());
                }
                kept
            });
        }
        if let Ok(mut map) = self.backoff.lock() {
            map.retain(|id, _| keep.contains(id));
        }
        if let Ok(mut map) = self.server_configs.lock() {
            map.retain(|id, _| keep.contains(id));
        }
        if let Ok(mut map) = self.client_configs.lock() {
            map.retain(|(src, _), _| keep.contains(src));
        }
        for identity in dropped {
            tracing::info!(%identity, "certificate dropped: no pod of this identity is enrolled any more");
        }
    }

    /// The sizes of the identity tables.
    pub fn tables(&self) -> Vec<(&'static str, TableStat)> {
        let leaves = self.leaves.lock().map_or(0, |m| m.len());
        let backoffs = self.backoff.lock().map_or(0, |m| m.len());
        let servers = self.server_configs.lock().map_or(0, |m| m.len());
        let clients = self.client_configs.lock().map_or(0, |m| m.len());
        vec![
            ("certificates", TableStat::new(leaves, MAX_IDENTITIES, self.refused.load(Ordering::Relaxed))),
            ("certificate_backoffs", TableStat::new(backoffs, MAX_IDENTITIES, 0)),
            ("server_configs", TableStat::new(servers, MAX_IDENTITIES, 0)),
            (
                "client_configs",
                TableStat::new(
                    clients,
                    MAX_CLIENT_CONFIGS,
                    self.evicted_client_configs.load(Ordering::Relaxed),
                ),
            ),
        ]
    }

    /// The certificates held now, for `/readyz`.
    pub fn certificates(&self) -> Vec<CertificateStatus> {
        let Ok(map) = self.leaves.lock() else { return Vec::new() };
        let mut list: Vec<_> = map
            .iter()
            .map(|(identity, slot)| {
                let leaf = slot.0.load();
                CertificateStatus {
                    identity: identity.clone(),
                    serial: leaf.serial.clone(),
                    not_after: leaf.not_after,
                    renew_at: leaf.renew_at,
                }
            })
            .collect();
        list.sort_by(|a, b| a.identity.cmp(&b.identity));
        list
    }

    /// Renews every certificate past its renewal time, forever.
    pub async fn renew_forever(self: Arc<Self>) {
        let every = (self.options.cert_ttl / 20).clamp(Duration::from_millis(200), Duration::from_secs(10));
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let due: Vec<(String, Arc<LeafSlot>)> = match self.leaves.lock() {
                Ok(map) => map
                    .iter()
                    .filter(|(_, slot)| slot.0.load().renew_at <= OffsetDateTime::now_utc())
                    .map(|(id, slot)| (id.clone(), slot.clone()))
                    .collect(),
                Err(_) => continue,
            };
            for (identity, slot) in due {
                match self.issue(&identity).await {
                    Ok(leaf) => {
                        tracing::info!(%identity, serial = %leaf.serial, not_after = %leaf.not_after, "certificate renewed");
                        slot.0.store(Arc::new(leaf));
                    }
                    // The old certificate stays in use until it expires; retried next tick.
                    Err(e) => {
                        tracing::error!(%identity, error = %format!("{e:#}"), "certificate renewal failed")
                    }
                }
            }
        }
    }

    fn prepared(&self, identity: &str) -> Option<Arc<LeafSlot>> {
        self.leaves.lock().ok().and_then(|m| m.get(identity).cloned())
    }

    fn slot(&self, identity: &str) -> anyhow::Result<Arc<LeafSlot>> {
        self.prepared(identity).ok_or_else(|| anyhow::anyhow!("no certificate for {identity} yet"))
    }

    async fn issue(&self, identity: &str) -> anyhow::Result<Leaf> {
        let spiffe = spiffe::SpiffeId::parse(identity)?;
        anyhow::ensure!(
            spiffe.trust_domain == self.options.trust_domain,
            "{identity} is outside trust domain {}",
            self.options.trust_domain
        );
        let signed = self.issuer.issue(identity, self.options.cert_ttl).await?;
        let key = self
            .provider
            .key_provider
            .load_private_key(signed.key)
            .map_err(|e| anyhow::anyhow!("loading the leaf key: {e}"))?;
        // Renew at half of the lifetime granted (a CA service may cap it), ±10% so that a
        // node's certificates do not all renew at once.
        let mut random = [0u8; 2];
        self.provider.secure_random.fill(&mut random).map_err(|_| anyhow::anyhow!("no randomness"))?;
        let jitter = i16::from_le_bytes(random) as f64 / i16::MAX as f64;
        let now = OffsetDateTime::now_utc();
        let lifetime = (signed.not_after - now).max(time::Duration::ZERO);
        let renew_at = now + lifetime * (0.5 + 0.1 * jitter);
        Ok(Leaf {
            certified: Arc::new(CertifiedKey::new(signed.chain, key)),
            serial: signed.serial,
            not_after: signed.not_after,
            renew_at,
        })
    }
}

/// aws-lc-rs restricted to TLS 1.3's AES-GCM suites (hardware-accelerated, what ztunnel
/// offers) and X25519 then P-256, with the post-quantum hybrid first when asked for.
pub(crate) fn provider(post_quantum: bool) -> CryptoProvider {
    use aws_lc_rs::{cipher_suite, kx_group};
    let mut provider = aws_lc_rs::default_provider();
    provider.cipher_suites =
        vec![cipher_suite::TLS13_AES_128_GCM_SHA256, cipher_suite::TLS13_AES_256_GCM_SHA384];
    provider.kx_groups = if post_quantum {
        vec![kx_group::X25519MLKEM768, kx_group::X25519, kx_group::SECP256R1]
    } else {
        vec![kx_group::X25519, kx_group::SECP256R1]
    };
    provider
}

#[cfg(test)]
pub(crate) mod tests;
