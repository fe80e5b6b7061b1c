//! The agent's HTTP endpoints, laid out as ztunnel's: the admin endpoint (health, readiness with
//! details, flows, metrics, config dump and the mesh picture; default 127.0.0.1:15000, local
//! only, as it tells who talks to whom), the metrics endpoint (`/metrics` and nothing else;
//! default 0.0.0.0:15020, for Prometheus) and the readiness endpoint (`/healthz/ready` and
//! `/healthz/live`, status only; default 0.0.0.0:15021, for the kubelet).
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use axum::{
    Json, Router,
    body::Body,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio_stream::wrappers::BroadcastStream;

use crate::{
    desired::inventory::Inventory,
    engine::{limits::Limiter, pool::Pool},
    identity::{CertificateStatus, Identities},
    kernel::{CounterValues, MapStat, MapStats, ProgramRef},
    report::{
        check, config_dump,
        flows::{FOLLOW_BUFFER, FlowStats, FlowTable, MAX_FOLLOWERS},
        graph,
        metrics::{self, Bounds, Metrics},
    },
    sys::bounds::{TableStat, Tables},
};

/// What `/readyz` needs to know; updated by the agent as it starts and runs.
#[derive(Default)]
pub(crate) struct Readiness {
    pub programs_attached: AtomicBool,
    pub config_loaded: AtomicBool,
    /// Kernel maps and engine listeners reflect the loaded config (at least once).
    pub datapath_synced: AtomicBool,
    /// Configs (first load and every change) whose kernel maps and listeners are in place: a
    /// tool that edited the config waits for this to move before relying on the edit.
    pub configs_applied: AtomicU64,
    pub config_errors: Mutex<Vec<String>>,
    pub kernel_counters: Mutex<CounterValues>,
    /// Flow events the agent took out of the kernel's ring buffer (those the kernel could not
    /// put in are `kernel_counters.ring_buffer_drops`).
    pub kernel_events_received: AtomicU64,
    pub programs: Mutex<Vec<ProgramRef>>,
    /// Set once the engine exists; read live so `/readyz` is never stale.
    pub engine: OnceLock<EngineHandles>,
    /// The eBPF maps' figures, once loaded.
    pub maps: OnceLock<MapStats>,
    /// What each kernel map could not hold at its last sync, by map (see `app::node`).
    pub kernel_map_errors: Mutex<BTreeMap<String, String>>,
}

pub(crate) struct EngineHandles {
    pub pool: Arc<Pool>,
    pub identities: Arc<Identities>,
    pub limiter: Arc<Limiter>,
    pub orig_dst_misses: Arc<AtomicU64>,
}

#[derive(Default, Serialize)]
struct EngineStatus {
    hbone_connections: usize,
    certificates: Vec<CertificateStatus>,
}

/// Every bound the agent keeps, read now (for `/metrics` and `/readyz`).
fn bounds(state: &AdminState) -> Bounds {
    let r = &state.readiness;
    let mut tables = Tables::new();
    if let Ok(table) = state.flows.lock() {
        let (stats, limits) = (table.stats(), table.limits());
        tables.insert("flows_open", TableStat::new(stats.open, limits.max_open, stats.evicted_open));
        tables.insert("flows_closed", TableStat::new(stats.closed, limits.max_closed, stats.evicted_closed));
        tables.insert(
            "flow_followers",
            TableStat::new(stats.followers, MAX_FOLLOWERS, stats.followers_refused),
        );
        tables
            .insert("flow_updates", TableStat::new(stats.follow_queued, FOLLOW_BUFFER, stats.follow_lagged));
    }
    let mut captured_without_destination = 0;
    let mut limited = Vec::new();
    if let Some(engine) = r.engine.get() {
        tables.insert("hbone_pool", engine.pool.table());
        tables.extend(engine.limiter.tables());
        tables.extend(engine.identities.tables());
        captured_without_destination = engine.orig_dst_misses.load(Ordering::Relaxed);
        limited = engine.limiter.counters().snapshot();
    }
    Bounds {
        maps: r.maps.get().map(MapStats::snapshot).unwrap_or_default(),
        tables,
        captured_without_destination,
        limited,
    }
}

impl Readiness {
    fn is_ready(&self) -> bool {
        self.programs_attached.load(Ordering::Acquire)
            && self.config_loaded.load(Ordering::Acquire)
            && self.datapath_synced.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
pub(crate) struct AdminState {
    pub readiness: Arc<Readiness>,
    pub flows: Arc<Mutex<FlowTable>>,
    pub metrics: Arc<Metrics>,
    pub inventory: Arc<ArcSwap<Inventory>>,
}

pub(crate) async fn serve(addr: SocketAddr, state: AdminState) -> anyhow::Result<()> {
    serve_router(addr, "admin endpoint", router(state)).await
}

/// The metrics endpoint: `/metrics` only (404 for anything else: no flows, no config).
pub(crate) async fn serve_metrics(addr: SocketAddr, state: AdminState) -> anyhow::Result<()> {
    serve_router(addr, "metrics endpoint", metrics_router(state)).await
}

/// The readiness endpoint for the kubelet: status codes, no details.
pub(crate) async fn serve_readiness(addr: SocketAddr, state: AdminState) -> anyhow::Result<()> {
    serve_router(addr, "readiness endpoint", readiness_router(state)).await
}

async fn serve_router(addr: SocketAddr, what: &'static str, router: Router) -> anyhow::Result<()> {
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding the {what} on {addr}"))?;
    tracing::info!(%addr, "{what} listening");
    axum::serve(listener, router).await.with_context(|| what)
}

fn metrics_router(state: AdminState) -> Router {
    Router::new().route("/metrics", get(metrics)).with_state(state)
}

fn readiness_router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz/ready", get(ready))
        .route("/healthz/live", get(|| async { "ok\n" }))
        .with_state(state)
}

/// `/healthz/ready`: what `/readyz` decides, without what it shows.
async fn ready(State(state): State<AdminState>) -> Response {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/flows", get(flows))
        .route("/check", get(check))
        .route("/metrics", get(metrics))
        .route("/config_dump", get(config_dump))
        .route("/graph", get(graph_page))
        .route("/graph.svg", get(graph_svg))
        .with_state(state)
}

#[derive(Serialize)]
struct ReadyDetail {
    ready: bool,
    programs_attached: bool,
    config_loaded: bool,
    datapath_synced: bool,
    configs_applied: u64,
    config_errors: Vec<String>,
    kernel: CounterValues,
    kernel_events_received: u64,
    programs: Vec<ProgramRef>,
    flows: FlowStats,
    engine: EngineStatus,
    /// Every eBPF map: entries, capacity, refused writes.
    kernel_maps: BTreeMap<String, MapStat>,
    /// What full kernel maps could not hold (the agent keeps running and retries).
    kernel_map_errors: BTreeMap<String, String>,
    /// The agent's own tables: entries, capacity, overflows.
    tables: BTreeMap<&'static str, TableStat>,
    captured_without_destination: u64,
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let r = &state.readiness;
    let bounds = bounds(&state);
    let detail = ReadyDetail {
        ready: r.is_ready(),
        programs_attached: r.programs_attached.load(Ordering::Acquire),
        config_loaded: r.config_loaded.load(Ordering::Acquire),
        datapath_synced: r.datapath_synced.load(Ordering::Acquire),
        configs_applied: r.configs_applied.load(Ordering::Acquire),
        config_errors: r.config_errors.lock().map(|e| e.clone()).unwrap_or_default(),
        kernel: r.kernel_counters.lock().map(|c| *c).unwrap_or_default(),
        kernel_events_received: r.kernel_events_received.load(Ordering::Relaxed),
        programs: r.programs.lock().map(|p| p.clone()).unwrap_or_default(),
        flows: state.flows.lock().map(|t| t.stats()).unwrap_or_default(),
        engine: r.engine.get().map_or_else(EngineStatus::default, |e| EngineStatus {
            hbone_connections: e.pool.connection_count(),
            certificates: e.identities.certificates(),
        }),
        kernel_maps: bounds.maps,
        kernel_map_errors: r.kernel_map_errors.lock().map(|e| e.clone()).unwrap_or_default(),
        tables: bounds.tables,
        captured_without_destination: bounds.captured_without_destination,
    };
    let status = if detail.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(detail)).into_response()
}

/// `/metrics`: Prometheus text format.
async fn metrics(State(state): State<AdminState>) -> Response {
    let r = &state.readiness;
    let stats = state.flows.lock().map(|t| t.stats()).unwrap_or_default();
    let kernel = r.kernel_counters.lock().map(|c| *c).unwrap_or_default();
    let certificates = r.engine.get().map(|e| e.identities.certificates()).unwrap_or_default();
    let received = r.kernel_events_received.load(Ordering::Relaxed);
    let body = state.metrics.render(stats, kernel, received, &certificates, &bounds(&state));
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response()
}

/// `/config_dump`: inventory, certificates (never keys), config errors.
async fn config_dump(State(state): State<AdminState>) -> Response {
    let r = &state.readiness;
    let certificates = r.engine.get().map(|e| e.identities.certificates()).unwrap_or_default();
    let errors = r.config_errors.lock().map(|e| e.clone()).unwrap_or_default();
    Json(config_dump::dump(&state.inventory.load(), certificates, errors)).into_response()
}

/// What the `/graph` page may load: its own inline script and style, and `/graph.svg` from here.
const GRAPH_PAGE_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:";

/// `/graph`: a page that redraws the mesh picture from `/graph.svg` every few seconds.
async fn graph_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, GRAPH_PAGE_POLICY),
        ],
        graph::PAGE,
    )
        .into_response()
}

/// `/graph.svg`: the mesh picture of this node's flows (what `lockmesh graph --format svg` draws).
async fn graph_svg(State(state): State<AdminState>) -> Response {
    let Ok(records) = state.flows.lock().map(|t| t.snapshot()) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let graph = graph::Graph::from_records(&records);
    let now = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC"))
        .unwrap_or_default();
    let caption = format!("node {} · {} flows · {now}", state.inventory.load().node, records.len());
    (
        [(header::CONTENT_TYPE, "image/svg+xml"), (header::CACHE_CONTROL, "no-store")],
        graph::to_svg(&graph, &caption),
    )
        .into_response()
}

#[derive(Deserialize)]
struct CheckQuery {
    workload: Option<String>,
}

/// `/check[?workload=ns/name]`: effective policies of enrolled workloads (`lockmesh check`).
async fn check(State(state): State<AdminState>, Query(query): Query<CheckQuery>) -> Response {
    let certificates = state.readiness.engine.get().map(|e| e.identities.certificates()).unwrap_or_default();
    let inventory = state.inventory.load();
    let checks = check::check(&inventory, &certificates, query.workload.as_deref());
    if let Some(workload) = &query.workload
        && checks.is_empty()
    {
        let message = format!("{workload} is not a workload enrolled on node {}\n", inventory.node);
        return (StatusCode::NOT_FOUND, message).into_response();
    }
    Json(checks).into_response()
}

#[derive(Deserialize)]
struct FlowsQuery {
    #[serde(default)]
    follow: bool,
    /// With `follow`: start with the table (default) or only with what changes next.
    #[serde(default = "yes")]
    snapshot: bool,
}

fn yes() -> bool {
    true
}

/// `/flows`: a JSON array of the table; with `?follow=true`, newline-delimited JSON: the table,
/// then every record as it is stored or changes (an open flow appears again when it closes).
async fn flows(State(state): State<AdminState>, Query(query): Query<FlowsQuery>) -> Response {
    let Ok(table) = state.flows.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    if !query.follow {
        let snapshot = table.snapshot();
        drop(table);
        return Json(snapshot).into_response();
    }
    let mut table = table;
    // Subscribe before the snapshot so nothing falls between them.
    let follower = match table.follow() {
        Ok(follower) => follower,
        Err(full) => {
            drop(table);
            tracing::warn!(error = %full, "refusing a /flows follower");
            return (StatusCode::SERVICE_UNAVAILABLE, format!("{full}; try again later\n")).into_response();
        }
    };
    let snapshot = if query.snapshot { table.snapshot() } else { Vec::new() };
    drop(table);
    let head = futures_util::stream::iter(snapshot.into_iter().map(Ok));
    let lagged = follower.lagged;
    let tail = BroadcastStream::new(follower.updates).filter_map(move |item| {
        let lagged = lagged.clone();
        async move {
            match item {
                Ok(record) => Some(Ok(record)),
                // A slow reader lost records: counted (lockmesh_table_overflows_total{table="flow_updates"}) and logged.
                Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                    lagged.fetch_add(n, Ordering::Relaxed);
                    tracing::warn!(missed = n, "a /flows follower fell behind");
                    None
                }
            }
        }
    });
    let lines = head.chain(tail).map(|item: Result<_, std::convert::Infallible>| {
        item.map(|record| {
            let mut line = serde_json::to_vec(&record).unwrap_or_default();
            line.push(b'\n');
            line
        })
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(lines))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
