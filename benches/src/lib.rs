//! What the load harnesses (`bind-load`, `soak`) share: where qrpool serves, and a plain
//! HTTP/1 connection to it.

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::Uri;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::HeaderValue;
use hyper_util::rt::TokioIo;

/// Connections this process has open to servers ([`Server::connect`]): each is a descriptor
/// of the server's too, which a check of the server's descriptors leaves out.
pub static OPEN_CONNECTIONS: AtomicUsize = AtomicUsize::new(0);

/// A server named by a base URL, `http://host:port[/prefix]`.
#[derive(Debug, Clone)]
pub struct Server {
    /// `host:port`, to connect to.
    pub address: String,
    /// The `Host` header of every request.
    pub host: HeaderValue,
    /// The prefix before each path, without a trailing `/` (empty for none).
    pub base_path: String,
}

impl Server {
    pub fn parse(base: &str) -> anyhow::Result<Server> {
        let base: Uri = base.parse().context("--base is not a URL")?;
        if base.scheme_str() != Some("http") {
            bail!("--base must be an http:// URL (the harness speaks plain HTTP/1)");
        }
        let authority = base.authority().context("--base has no host")?;
        Ok(Server {
            address: format!(
                "{}:{}",
                authority.host(),
                authority.port_u16().unwrap_or(80)
            ),
            host: HeaderValue::from_str(authority.as_str())?,
            base_path: base.path().trim_end_matches('/').to_owned(),
        })
    }

    /// A new connection, without Nagle's delay (each request is small and waits for its
    /// answer). Its driver runs on a task of its own until the sender is dropped or the
    /// server closes the connection.
    pub async fn connect(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let stream = tokio::net::TcpStream::connect(&self.address)
            .await
            .with_context(|| format!("connecting to {}", self.address))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        OPEN_CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            // Ends when the connection closes (its sender dropped, or the server closed it).
            let _ = connection.await;
            OPEN_CONNECTIONS.fetch_sub(1, Ordering::Relaxed);
        });
        Ok(sender)
    }
}
