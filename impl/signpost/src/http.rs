//! A small HTTP/1.1 endpoint for `/healthz`, `/readyz` and `/metrics`: one
//! request per connection, anything else is 404. A malformed request gets
//! 400; a client that sends nothing is dropped after a timeout; at most
//! [`MAX_CONNECTIONS`] are served at once (more are closed at once); an
//! accept error is logged and the server keeps serving.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client has to send its request head and read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest request head read.
const MAX_HEAD: usize = 8192;

/// What a component reports on the endpoint.
#[derive(Clone)]
pub struct Handlers {
    /// The Prometheus exposition.
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

    fn answer(&self, path: Option<&str>) -> (&'static str, String) {
        match path {
            // CoreDNS's paths too (`health`'s /health, `ready`'s /ready).
            Some("/healthz" | "/livez" | "/health") => match (self.healthy)() {
                Ok(s) => ("200 OK", format!("{s}\n")),
                Err(e) => ("503 Service Unavailable", format!("unhealthy: {e}\n")),
            },
            Some("/readyz" | "/ready") if (self.ready)() => ("200 OK", "ok\n".to_owned()),
            Some("/readyz" | "/ready") => ("503 Service Unavailable", "not ready\n".to_owned()),
            Some("/metrics") => ("200 OK", (self.metrics)()),
            Some(_) => ("404 Not Found", "not found\n".to_owned()),
            None => ("400 Bad Request", "bad request\n".to_owned()),
        }
    }
}

/// Reads a request head: up to the blank line, [`MAX_HEAD`] bytes, or EOF.
async fn read_head(conn: &mut tokio::net::TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while head.len() < MAX_HEAD && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(head)
}

/// Binds and serves in the background.
pub async fn serve(
    addr: SocketAddr,
    handlers: Handlers,
) -> std::io::Result<JoinHandle<std::io::Result<()>>> {
    let listener = TcpListener::bind(addr).await?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    Ok(tokio::spawn(async move {
        loop {
            let mut conn = match listener.accept().await {
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
                let Ok(Ok(head)) = tokio::time::timeout(IO_TIMEOUT, read_head(&mut conn)).await
                else {
                    return;
                };
                let head = String::from_utf8_lossy(&head);
                let path = head
                    .lines()
                    .next()
                    .filter(|l| l.ends_with("HTTP/1.1") || l.ends_with("HTTP/1.0"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .map(|p| p.split('?').next().unwrap_or(p));
                let (status, body) = handlers.answer(path);
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tokio::time::timeout(IO_TIMEOUT, conn.write_all(response.as_bytes())).await;
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, req: &[u8]) -> String {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(req).await.unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
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
        let bad = get(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
        assert!(
            bad.starts_with("HTTP/1.1 503") && bad.contains("stale"),
            "{bad}"
        );
        assert!(
            get(addr, b"GET /readyz HTTP/1.1\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 503")
        );
        assert!(
            get(addr, b"\x00\xff garbage\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 400")
        );
        // A request head split over several writes is still read whole.
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /metr").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.write_all(b"ics HTTP/1.1\r\n\r\n").await.unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        assert!(out.ends_with("x 1\n"), "{out}");
        // Clients that hold connections open and say nothing take slots,
        // not the server: more than the limit, and it still answers after.
        let mut idle = Vec::new();
        for _ in 0..(MAX_CONNECTIONS + 8) {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        drop(idle);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let after = get(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(after.ends_with("x 1\n"), "{after}");
    }
}
