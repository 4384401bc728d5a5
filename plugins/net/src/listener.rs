//! The accept loop shared by the TCP-based inputs (`tcp`, `syslog` over TCP
//! and TLS): one task per connection, optional TLS, clean shutdown.
//!
//! On shutdown the loop stops accepting and waits for every connection task
//! to emit what it has read, so the engine closes outputs only after the last
//! batch is in.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};
use ulog_engine::{CancellationToken, Emitter, InputContext, PluginError};

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// An accepted connection, plain or TLS.
pub(crate) enum NetStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP (boxed: the TLS state is large).
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for NetStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NetStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            NetStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

/// What a connection task is given.
pub(crate) struct Conn {
    /// The stream to read.
    pub stream: NetStream,
    /// The client's address.
    pub peer: SocketAddr,
    /// This connection's own emitter (with its own routing cache).
    pub emitter: Emitter,
    /// Cancelled when ulog stops.
    pub shutdown: CancellationToken,
}

/// Binds `listen`, naming the address in the error.
pub(crate) async fn bind(listen: &str) -> Result<TcpListener, PluginError> {
    TcpListener::bind(listen)
        .await
        .map_err(|e| PluginError::with_source(format!("listening on {listen}"), e))
}

/// Accepts connections until shutdown, running `handler` for each on its own
/// task, then waits for those tasks to finish.
pub(crate) async fn serve<F, Fut>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    ctx: &InputContext,
    handler: F,
) where
    F: Fn(Conn) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handler = Arc::new(handler);
    let tracker = TaskTracker::new();
    let id = ctx.id.clone();
    loop {
        let accepted = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off a little
                // instead of spinning.
                warn!(input = %id, error = %e, "accepting a connection failed");
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let _ = tcp.set_nodelay(true);
        debug!(input = %id, %peer, "connection accepted");
        let emitter = ctx.emitter.clone();
        let shutdown = ctx.shutdown.clone();
        let handler = handler.clone();
        let tls = tls.clone();
        let id = id.clone();
        tracker.spawn(async move {
            let stream = match tls {
                None => NetStream::Plain(tcp),
                Some(acceptor) => {
                    let hs = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                    let result = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        r = hs => r,
                    };
                    match result {
                        Ok(Ok(s)) => NetStream::Tls(Box::new(s)),
                        Ok(Err(e)) => {
                            warn!(input = %id, %peer, error = %e, "TLS handshake failed; connection closed");
                            return;
                        }
                        Err(_) => {
                            warn!(input = %id, %peer, "TLS handshake did not finish within {HANDSHAKE_TIMEOUT:?}; connection closed");
                            return;
                        }
                    }
                }
            };
            handler(Conn {
                stream,
                peer,
                emitter,
                shutdown,
            })
            .await;
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}
