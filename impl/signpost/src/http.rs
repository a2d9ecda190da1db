//! A minimal HTTP/1.1 endpoint for `/healthz`, `/readyz` and `/metrics`: one request
//! per connection, anything else is 404. Malformed requests get 400 and the
//! server keeps serving.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Binds and serves in the background.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<dyn Fn() -> String + Send + Sync>,
    ready: Arc<dyn Fn() -> bool + Send + Sync>,
) -> std::io::Result<JoinHandle<std::io::Result<()>>> {
    let listener = TcpListener::bind(addr).await?;
    Ok(tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await?;
            let metrics = metrics.clone();
            let ready = ready.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let n = match conn.read(&mut buf).await {
                    Ok(n) => n,
                    Err(_) => return,
                };
                let head = String::from_utf8_lossy(&buf[..n]);
                let path = head
                    .lines()
                    .next()
                    .and_then(|l| l.split_whitespace().nth(1));
                let (status, body) = match path {
                    Some("/healthz") => ("200 OK", "ok\n".to_owned()),
                    Some("/readyz") if ready() => ("200 OK", "ok\n".to_owned()),
                    Some("/readyz") => ("503 Service Unavailable", "not ready\n".to_owned()),
                    Some("/metrics") => ("200 OK", metrics()),
                    Some(_) => ("404 Not Found", "not found\n".to_owned()),
                    None => ("400 Bad Request", "bad request\n".to_owned()),
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
            });
        }
    }))
}
