//! A small HTTP client for the agent's admin endpoint.
use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

/// GETs `path` from the admin endpoint; fails on a non-2xx status with the body as the reason.
pub(super) async fn get(admin: SocketAddr, path: &str) -> anyhow::Result<hyper::Response<Incoming>> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: hyper::Uri = format!("http://{admin}{path}").parse().context("building the admin URL")?;
    let response = client
        .get(uri)
        .await
        .with_context(|| format!("cannot reach the lockmesh agent's admin endpoint at {admin} (is the agent running, and are you in its network namespace?)"))?;
    if !response.status().is_success() {
        let status = response.status();
        let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        bail!("{path}: {status}: {}", String::from_utf8_lossy(&body).trim());
    }
    Ok(response)
}

/// GETs `path` and returns the whole body.
pub(super) async fn get_bytes(admin: SocketAddr, path: &str) -> anyhow::Result<Bytes> {
    let response = get(admin, path).await?;
    Ok(response.into_body().collect().await.context("reading the admin response")?.to_bytes())
}

/// The flows of a running agent (`/flows`), or those recorded in audit-log `files` when any are
/// given.
pub(super) async fn flow_records(
    admin: SocketAddr,
    files: &[std::path::PathBuf],
) -> anyhow::Result<Vec<crate::report::flows::FlowRecord>> {
    if files.is_empty() {
        let body = get_bytes(admin, "/flows").await?;
        return serde_json::from_slice(&body).context("parsing /flows");
    }
    let mut records = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        records.extend(crate::report::audit::chain::flows_in(&text));
    }
    Ok(records)
}
