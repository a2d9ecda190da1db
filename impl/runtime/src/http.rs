//! `/healthz`, `/readyz` and `/metrics` on hyper (HTTP/1.1, one request per
//! connection). CoreDNS's paths answer too (`/health`, `/ready`), and
//! `/livez` as the API server's. A client has [`HEAD_TIMEOUT`] to send its
//! request head and [`CONNECTION_TIMEOUT`] in all; at most
//! [`MAX_CONNECTIONS`] are served at once (more are closed at once); a
//! malformed request gets hyper's 400; an accept error is logged and the
//! server keeps serving.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client has to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may last, request and answer.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// What a component reports.
#[derive(Clone)]
pub struct Handlers {
    /// The metrics exposition (OpenMetrics text).
    pub metrics: Arc<dyn Fn() -> String + Send + Sync>,
    /// `/readyz`: serving with a synced view.
    pub ready: Arc<dyn Fn() -> bool + Send + Sync>,
    /// `/healthz`: `Ok(status)` or `Err(why not)`, answered 200 or 503.
    pub healthy: Arc<dyn Fn() -> Result<String, String> + Send + Sync>,
}

impl Handlers {
    /// Always healthy and ready, with these metrics.
    pub fn metrics_only(metrics: Arc<dyn Fn() -> String + Send + Sync>) -> Self {
        Handlers {
            metrics,
            ready: Arc::new(|| true),
            healthy: Arc::new(|| Ok("ok".into())),
        }
    }

    /// The answer to `GET path`: status, content type, body.
    pub fn answer(&self, path: &str) -> (StatusCode, &'static str, String) {
        const TEXT: &str = "text/plain; charset=utf-8";
        match path {
            "/healthz" | "/livez" | "/health" => match (self.healthy)() {
                Ok(s) => (StatusCode::OK, TEXT, format!("{s}\n")),
                Err(e) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    format!("unhealthy: {e}\n"),
                ),
            },
            "/readyz" | "/ready" if (self.ready)() => (StatusCode::OK, TEXT, "ok\n".into()),
            "/readyz" | "/ready" => (StatusCode::SERVICE_UNAVAILABLE, TEXT, "not ready\n".into()),
            "/metrics" => (
                StatusCode::OK,
                crate::metrics::CONTENT_TYPE,
                (self.metrics)(),
            ),
            _ => (StatusCode::NOT_FOUND, TEXT, "not found\n".into()),
        }
    }

    fn respond(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let (status, ctype, body) = if matches!(*req.method(), Method::GET | Method::HEAD) {
            self.answer(req.uri().path())
        } else {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                "only GET\n".into(),
            )
        };
        let body = if req.method() == Method::HEAD {
            Bytes::new()
        } else {
            Bytes::from(body)
        };
        let mut r = Response::new(Full::new(body));
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(ctype),
        );
        r
    }
}

/// Binds `addr` and serves in the background.
pub async fn serve(
    addr: SocketAddr,
    handlers: Handlers,
) -> std::io::Result<JoinHandle<std::io::Result<()>>> {
    let listener = TcpListener::bind(addr).await?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    Ok(tokio::spawn(async move {
        loop {
            let conn = match listener.accept().await {
                Ok((conn, _)) => conn,
                Err(e) => {
                    // Out of descriptors, a reset before accept: keep serving.
                    tracing::warn!(%addr, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::debug!(%addr, "too many connections; closing one");
                continue;
            };
            let handlers = handlers.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let r = handlers.respond(&req);
                    async move { Ok::<_, Infallible>(r) }
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEAD_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(conn), service);
                match tokio::time::timeout(CONNECTION_TIMEOUT, served).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(%addr, error = %e, "HTTP connection failed"),
                    Err(_) => tracing::debug!(%addr, "HTTP connection timed out"),
                }
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, req: &[u8]) -> String {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(req).await.unwrap();
        let mut out = String::new();
        let _ = c.read_to_string(&mut out).await;
        out
    }

    #[tokio::test]
    async fn health_is_503_when_unhealthy_and_garbage_or_silence_does_not_stop_the_server() {
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let h = healthy.clone();
        let handlers = Handlers {
            metrics: Arc::new(|| "x 1\n".into()),
            ready: Arc::new(|| false),
            healthy: Arc::new(move || {
                if h.load(std::sync::atomic::Ordering::Relaxed) {
                    Ok("ok".into())
                } else {
                    Err("stale".into())
                }
            }),
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let _server = serve(addr, handlers).await.unwrap();
        let ok = get(addr, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        healthy.store(false, std::sync::atomic::Ordering::Relaxed);
        let bad = get(addr, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(
            bad.starts_with("HTTP/1.1 503") && bad.contains("stale"),
            "{bad}"
        );
        assert!(
            get(addr, b"GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 503")
        );
        let post = get(
            addr,
            b"POST /healthz HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
        )
        .await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        let garbage = get(addr, b"\x00\xff garbage\r\n\r\n").await;
        assert!(
            garbage.is_empty() || garbage.starts_with("HTTP/1.1 400"),
            "{garbage}"
        );
        // A request head split over several writes is still read whole.
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /metr").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.write_all(b"ics HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        assert!(
            out.ends_with("x 1\n") && out.contains("openmetrics-text"),
            "{out}"
        );
        // Clients that hold connections open and say nothing take slots,
        // not the server: more than the limit, and it still answers after.
        let mut idle = Vec::new();
        for _ in 0..(MAX_CONNECTIONS + 8) {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        drop(idle);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let after = get(addr, b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(after.ends_with("x 1\n"), "{after}");
    }
}
