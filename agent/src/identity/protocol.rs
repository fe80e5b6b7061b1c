//! The signing protocol between agents and `lockmesh ca serve`, over HTTPS (the server's
//! certificate chains to the mesh root):
//!
//! ```text
//! POST /v1/sign
//! Authorization: Bearer <the agent's projected ServiceAccount token, audience lockmesh-ca>
//! Content-Type: application/json
//!
//! {"csr": "-----BEGIN CERTIFICATE REQUEST-----…", "ttl_seconds": 86400}
//! ```
//!
//! The CSR's only SAN is the SPIFFE ID asked for; `ttl_seconds` is optional and capped by the
//! server. Answers: `200 {"cert_chain_pem": "<leaf, then the CA chain>"}`, or an error status
//! with `{"error": "<why>"}`: 400 (bad request or CSR), 401 (token not authenticated for the
//! audience), 403 (caller not an agent, or no pod on its node runs as the identity), 500 (signing
//! failed), 502 (the API server failed).
use serde::{Deserialize, Serialize};

pub(crate) const SIGN_PATH: &str = "/v1/sign";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignRequest {
    pub csr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SignResponse {
    pub cert_chain_pem: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ErrorResponse {
    pub error: String,
}
