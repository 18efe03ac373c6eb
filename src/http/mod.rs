//! The HTTP side of the daemon: Prometheus `/metrics`, `/healthz` and `/readyz`, the JSON API
//! (`/api/status`, `/api/windows`, `/api/events`, `/api/dashboard`) and the dashboard at `/`.
//!
//! It binds 127.0.0.1 by default; config validation refuses a non-loopback address without a
//! bearer token unless `[http] allow_non_loopback_without_token` says otherwise. With a token,
//! every endpoint but `/healthz`, `/readyz` and the (data-free) dashboard page needs
//! `Authorization: Bearer <token>`; the page reads the token from its URL fragment
//! (`/#token=…`), which browsers never send to the server or its logs.
//!
//! HTTP is an observer: the pipeline never waits for it. If the address is taken, the error is
//! logged and the bind retried, while the pipeline goes on. Handlers read the database through
//! their own read-only connections on blocking threads.
//!
//! Clients cannot starve the daemon: at most `[http] max_connections` are served at once (the
//! rest wait in the kernel's accept queue, holding none of the daemon's descriptors), and a
//! connection that has not sent a whole request's headers within `[http] header_timeout`
//! (an idle keep-alive connection too) is closed.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::config::{Config, HttpConfig, Secret};
use crate::metrics::Metrics;
use crate::store::Reader;

/// The config currently applied (replaced on reload).
pub type SharedConfig = Arc<RwLock<Arc<Config>>>;

#[derive(Clone)]
struct AppState {
    config: SharedConfig,
    metrics: Arc<Metrics>,
    token: Option<Secret>,
}

impl AppState {
    fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }
}

/// The HTTP server, not yet listening.
pub struct Server {
    listen: SocketAddr,
    router: Router,
    header_timeout: Duration,
    max_connections: usize,
}

/// How long to wait before trying a taken address again.
const REBIND_EVERY: Duration = Duration::from_secs(10);

impl Server {
    /// The server for `[http]`; `None` when HTTP is off (`listen = ""`).
    pub fn new(http: &HttpConfig, config: SharedConfig, metrics: Arc<Metrics>) -> Option<Server> {
        let listen = http.listen?;
        let state = AppState {
            config,
            metrics,
            token: http.token.clone(),
        };
        Some(Server {
            listen,
            router: router(state),
            header_timeout: http.header_timeout,
            max_connections: http.max_connections.max(1),
        })
    }

    /// Serves until `stop` turns true, then finishes the requests in progress.
    pub async fn serve(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let listener = loop {
            match tokio::net::TcpListener::bind(self.listen).await {
                Ok(l) => break l,
                Err(e) => {
                    tracing::error!(listen = %self.listen, error = %e, "Cannot listen for HTTP; retrying. The pipeline runs on.");
                    tokio::select! {
                        _ = tokio::time::sleep(REBIND_EVERY) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            }
        };
        let addr = listener.local_addr().unwrap_or(self.listen);
        tracing::info!(listen = %addr, max_connections = self.max_connections, "HTTP listening: /metrics, /healthz, /readyz, /api/…, dashboard at /.");
        let slots = Arc::new(tokio::sync::Semaphore::new(self.max_connections));
        let mut connections = tokio::task::JoinSet::new();
        loop {
            // A slot first: past the cap, connections wait unaccepted.
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => break,
                },
                _ = stopped(&mut stop) => break,
            };
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of descriptors (EMFILE) or memory: wait instead of spinning.
                        tracing::warn!(error = %e, "Cannot accept an HTTP connection; trying again shortly.");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
                _ = stopped(&mut stop) => break,
            };
            let service = hyper_util::service::TowerToHyperService::new(self.router.clone());
            let header_timeout = self.header_timeout;
            let mut stop = stop.clone();
            connections.spawn(async move {
                let _slot = slot;
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(header_timeout);
                let connection =
                    builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                tokio::pin!(connection);
                tokio::select! {
                    _ = connection.as_mut() => {}
                    _ = stopped(&mut stop) => {
                        connection.as_mut().graceful_shutdown();
                        let _ = connection.await;
                    }
                }
            });
            while connections.try_join_next().is_some() {}
        }
        // The requests in progress finish; idle connections close at once.
        while connections.join_next().await.is_some() {}
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// How long to wait after a failed accept (out of descriptors) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/status", get(api_status))
        .route("/api/windows", get(api_windows))
        .route("/api/events", get(api_events))
        .route("/api/dashboard", get(api_dashboard))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/", get(dashboard))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(protected)
        .with_state(state)
}

/// Constant-time comparison, so the time a refusal takes says nothing about the token.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of an `Authorization: Bearer <token>` value; the scheme's name is
/// case-insensitive (RFC 9110, section 11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

async fn require_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = &state.token else {
        return next.run(request).await;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    if given.is_some_and(|g| same(g.trim().as_bytes(), token.expose().as_bytes())) {
        return next.run(request).await;
    }
    let mut response = (StatusCode::UNAUTHORIZED, "a bearer token is required\n").into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"sensei\""),
    );
    response
}

/// An error as a 500 with its message (the API is for operators; nothing secret is in there).
struct ApiError(anyhow::Error);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        tracing::warn!(error = %format!("{:#}", self.0), "HTTP request failed.");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(serde_json::json!({ "error": format!("{:#}", self.0) })),
        )
            .into_response()
    }
}

/// Runs a database read on a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError),
        Err(e) => Err(ApiError(anyhow::anyhow!("request task failed: {e}"))),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.metrics.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: starting, reloading or stopping\n",
        )
            .into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let m = state.metrics.clone();
    let text = blocking(move || Ok(m.encode())).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// A JSON answer with RFC 3339 beside every unix-ms time (`crate::time::with_rfc3339`).
fn timed<T: serde::Serialize>(value: &T) -> serde_json::Value {
    let mut v = serde_json::to_value(value).unwrap_or_default();
    crate::time::with_rfc3339(&mut v);
    v
}

async fn api_status(State(state): State<AppState>) -> Result<Response, ApiError> {
    let config = state.config();
    let status = blocking(move || crate::commands::status(&config)).await?;
    Ok(axum::Json(timed(&status)).into_response())
}

/// `?segment=line=A&since=2026-03-02T00:00:00Z&limit=500` (`since`: RFC 3339 or unix ms).
#[derive(Debug, Deserialize)]
struct WindowQuery {
    segment: Option<String>,
    since: Option<String>,
    limit: Option<i64>,
}

fn parse_since(since: Option<&str>) -> Result<Option<i64>, String> {
    let Some(text) = since else { return Ok(None) };
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(Some(ms));
    }
    match time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339) {
        Ok(t) => Ok(Some((t.unix_timestamp_nanos() / 1_000_000) as i64)),
        Err(_) => Err(format!(
            "since: expected RFC 3339 (2026-03-02T06:00:00Z) or unix milliseconds, got {text:?}"
        )),
    }
}

fn bad_request(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

/// The most rows one API request returns.
const MAX_ROWS: i64 = 10_000;

async fn api_windows(
    State(state): State<AppState>,
    Query(q): Query<WindowQuery>,
) -> Result<Response, ApiError> {
    let since = match parse_since(q.since.as_deref()) {
        Ok(s) => s,
        Err(m) => return Ok(bad_request(m)),
    };
    let limit = q.limit.unwrap_or(500).clamp(1, MAX_ROWS);
    let config = state.config();
    let rows = blocking(move || {
        let reader = Reader::open(&config.store.path)?;
        Ok(reader.windows(q.segment.as_deref(), since, limit)?)
    })
    .await?;
    Ok(axum::Json(timed(&serde_json::json!({ "windows": rows }))).into_response())
}

#[derive(Debug, Deserialize)]
struct EventQuery {
    since: Option<String>,
    limit: Option<i64>,
}

async fn api_events(
    State(state): State<AppState>,
    Query(q): Query<EventQuery>,
) -> Result<Response, ApiError> {
    let since = match parse_since(q.since.as_deref()) {
        Ok(s) => s,
        Err(m) => return Ok(bad_request(m)),
    };
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_ROWS);
    let config = state.config();
    let rows = blocking(move || {
        let reader = Reader::open(&config.store.path)?;
        Ok(reader.drift_events_since(since.unwrap_or(i64::MIN), limit)?)
    })
    .await?;
    Ok(axum::Json(timed(&serde_json::json!({ "events": rows }))).into_response())
}

async fn api_dashboard(State(state): State<AppState>) -> Result<Response, ApiError> {
    let config = state.config();
    let ready = state.metrics.is_ready();
    let data = blocking(move || crate::report::dashboard_data(&config, ready, false)).await?;
    Ok(axum::Json(data).into_response())
}

/// The page. Without a token the data comes inlined (one request, and the page works without
/// script fetches); with a token the page holds no data and fetches it with the token.
async fn dashboard(State(state): State<AppState>) -> Response {
    let html = if state.token.is_none() {
        let config = state.config();
        let ready = state.metrics.is_ready();
        match blocking(move || crate::report::dashboard_data(&config, ready, false)).await {
            Ok(data) => crate::report::page(Some(&data)),
            Err(_) => crate::report::page(None),
        }
    } else {
        crate::report::page(None)
    };
    ([(header::CACHE_CONTROL, "no-store")], Html(html)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        assert!(!same(b"", b"a"));
    }

    #[test]
    fn since_accepts_rfc3339_and_millis() {
        assert_eq!(parse_since(Some("1000")).ok(), Some(Some(1000)));
        assert_eq!(
            parse_since(Some("1970-01-01T00:00:01Z")).ok(),
            Some(Some(1000))
        );
        assert!(parse_since(Some("yesterday")).is_err());
        assert_eq!(parse_since(None).ok(), Some(None));
    }
}
