//! The node's audit signing key: Ed25519 (aws-lc-rs), kept as PKCS#8 in the agent's state dir
//! (0600); its public half is published next to the log as `FILE.pub`.
use std::{
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::Path,
};

use anyhow::{Context as _, bail};
use aws_lc_rs::{
    rand::SystemRandom,
    signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey},
};

use super::chain::{hash_hex, hex, unhex};

pub(crate) const KEY_FILE: &str = "audit-ed25519.pk8";
pub(crate) const ALG: &str = "ed25519";

pub(crate) struct NodeKey {
    pair: Ed25519KeyPair,
    public: Vec<u8>,
    key_id: String,
}

impl NodeKey {
    /// Loads the key from `state_dir`, creating it (0600, in a 0700 dir) on first use.
    pub(crate) fn load_or_create(state_dir: &Path) -> anyhow::Result<Self> {
        let path = state_dir.join(KEY_FILE);
        let pkcs8 = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(state_dir)
                    .with_context(|| format!("creating {}", state_dir.display()))?;
                let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                    .map_err(|_| anyhow::anyhow!("generating the audit key"))?;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .with_context(|| format!("creating {}", path.display()))?;
                file.write_all(doc.as_ref())?;
                file.sync_all()?;
                doc.as_ref().to_vec()
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
            .map_err(|e| anyhow::anyhow!("{}: not an Ed25519 PKCS#8 key: {e}", path.display()))?;
        Ok(Self::from_pair(pair))
    }

    /// A key that lives only in memory (tests).
    #[cfg(test)]
    pub(crate) fn ephemeral() -> anyhow::Result<Self> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("generating a key"))?;
        let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Self::from_pair(pair))
    }

    fn from_pair(pair: Ed25519KeyPair) -> Self {
        let public = pair.public_key().as_ref().to_vec();
        let key_id = key_id(&public);
        Self { pair, public, key_id }
    }

    pub(crate) fn key_id(&self) -> &str {
        &self.key_id
    }

    pub(crate) fn public_hex(&self) -> String {
        hex(&self.public)
    }

    pub(crate) fn sign_hex(&self, message: &[u8]) -> String {
        hex(self.pair.sign(message).as_ref())
    }

    /// The `FILE.pub` line: `ed25519 <key id> <public key hex>`.
    pub(crate) fn pub_file(&self) -> String {
        format!("{ALG} {} {}\n", self.key_id, self.public_hex())
    }
}

pub(crate) fn key_id(public: &[u8]) -> String {
    hash_hex(public).chars().take(16).collect()
}

/// A published public key: `(key id, public key hex)` from a `FILE.pub`.
pub(crate) fn parse_pub_file(text: &str) -> anyhow::Result<(String, String)> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    let [alg, id, public] = fields.as_slice() else { bail!("expected `ed25519 <key id> <public key hex>`") };
    if *alg != ALG {
        bail!("unsupported key algorithm {alg:?}");
    }
    let bytes = unhex(public).context("public key is not hex")?;
    if key_id(&bytes) != *id {
        bail!("key id {id} does not match the public key");
    }
    Ok((id.to_string(), public.to_string()))
}

/// Whether `signature_hex` is a valid Ed25519 signature of `message` by `public_hex`.
pub(crate) fn verify(public_hex: &str, message: &[u8], signature_hex: &str) -> bool {
    let (Some(public), Some(signature)) = (unhex(public_hex), unhex(signature_hex)) else { return false };
    UnparsedPublicKey::new(&ED25519, public).verify(message, &signature).is_ok()
}

#[cfg(test)]
mod tests;
