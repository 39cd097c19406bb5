//! `/healthz` and `/metrics` over plain HTTP.
//!
//! Health follows kube-proxy: the proxy is unhealthy when an update has been waiting
//! longer than twice the sync period without being programmed (the kernel refuses the
//! rules, or the snapshot on disk cannot be compiled and the last good state is getting
//! old). The JSON body also says what the last error was, at once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::metrics::Metrics;

/// What `/healthz` reports; updated by the sync loop.
pub struct Health {
    timeout: Duration,
    state: Mutex<HealthState>,
}

#[derive(Default)]
struct HealthState {
    /// When the oldest update not yet programmed was queued.
    queued: Option<Instant>,
    last_updated: Option<SystemTime>,
    last_error: Option<String>,
}

impl Health {
    /// Unhealthy after `2 × sync_period` with an update pending.
    pub fn new(sync_period: Duration) -> Health {
        Health {
            timeout: sync_period * 2,
            state: Mutex::new(HealthState::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HealthState> {
        // A panic while holding the lock cannot leave the state inconsistent (every
        // update is one assignment), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An update is waiting to be programmed.
    pub fn queued(&self) {
        let mut s = self.state();
        s.queued.get_or_insert_with(Instant::now);
    }

    /// Everything queued so far is programmed.
    pub fn updated(&self) {
        let mut s = self.state();
        s.queued = None;
        s.last_updated = Some(SystemTime::now());
        s.last_error = None;
    }

    /// The last attempt failed; the update stays queued.
    pub fn failed(&self, error: String) {
        let mut s = self.state();
        s.queued.get_or_insert_with(Instant::now);
        s.last_error = Some(error);
    }

    /// (healthy, JSON body)
    pub fn report(&self) -> (bool, String) {
        let s = self.state();
        let healthy = s.queued.is_none_or(|t| t.elapsed() < self.timeout);
        let timestamp = |t: Option<SystemTime>| {
            t.and_then(|t| jiff::Timestamp::try_from(t).ok())
                .map_or("null".to_string(), |t| format!("\"{t}\""))
        };
        let body = format!(
            "{{\"healthy\": {healthy}, \"lastUpdated\": {}, \"currentTime\": {}, \"lastError\": {}}}\n",
            timestamp(s.last_updated),
            timestamp(Some(SystemTime::now())),
            s.last_error
                .as_ref()
                .map_or("null".to_string(), |e| serde_json::Value::from(e.as_str())
                    .to_string()),
        );
        (healthy, body)
    }
}

/// What an endpoint serves.
#[derive(Clone)]
pub enum Endpoint {
    Health(Arc<Health>),
    Metrics(Arc<Metrics>),
}

impl Endpoint {
    pub fn path(&self) -> &'static str {
        match self {
            Endpoint::Health(_) => "/healthz",
            Endpoint::Metrics(_) => "/metrics",
        }
    }
}

/// Serves `endpoint` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, endpoint: Endpoint) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            if let Err(e) = respond(stream, &endpoint).await {
                tracing::debug!("http: {e}");
            }
        });
    }
}

async fn respond(mut stream: TcpStream, endpoint: &Endpoint) -> std::io::Result<()> {
    // Read the request head (bounded): only the request line matters.
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let path = line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .split('?')
        .next()
        .unwrap_or("/");
    let (status, content_type, body) = match (endpoint, path) {
        (Endpoint::Health(health), "/healthz" | "/livez") => {
            let (healthy, body) = health.report();
            let status = if healthy {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            (status, "application/json", body)
        }
        (Endpoint::Metrics(metrics), "/metrics") => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
