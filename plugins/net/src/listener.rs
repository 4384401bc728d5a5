//! The accept loop shared by the TCP-based inputs (`tcp`, `syslog` over TCP
//! and TLS): one task per connection, optional TLS, clean shutdown.
//!
//! On shutdown the loop stops accepting and waits for every connection task
//! to emit what it has read, so the engine closes outputs only after the last
//! batch is in.

use std::future::Future;

use bytes::BytesMut;
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

impl NetStream {
    /// Called before a read: when `buf` holds nothing and no data is waiting
    /// on a plain TCP connection, the buffer's memory is released and this
    /// waits until data arrives, so an idle connection holds no 256 KiB read
    /// buffer. A busy connection only pays one readiness check. TLS
    /// connections keep their buffers (rustls may hold decrypted data the
    /// socket's readiness does not show).
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is read.
    pub(crate) async fn release_while_idle(&mut self, buf: &mut BytesMut) -> io::Result<()> {
        let NetStream::Plain(tcp) = self else {
            return Ok(());
        };
        if !buf.is_empty() {
            return Ok(());
        }
        if buf.capacity() > 0 {
            let ready_now = tokio::select! {
                biased;
                r = tcp.readable() => Some(r),
                _ = std::future::ready(()) => None,
            };
            if let Some(r) = ready_now {
                return r;
            }
            *buf = BytesMut::new();
        }
        tcp.readable().await
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn an_idle_connection_gives_its_read_buffer_back() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut stream = NetStream::Plain(server);
        let mut buf = BytesMut::new();
        client.write_all(b"line\n").await.unwrap();
        let n = crate::framing::fill(&mut buf, &mut stream).await.unwrap();
        assert_eq!(n, 5);
        assert!(buf.capacity() >= crate::framing::READ_BUF);
        buf.clear();
        // Nothing more arrives: waiting releases the buffer.
        let idle = tokio::time::timeout(
            Duration::from_millis(50),
            crate::framing::fill(&mut buf, &mut stream),
        )
        .await;
        assert!(idle.is_err(), "nothing was sent");
        assert_eq!(buf.capacity(), 0);
        // And reading resumes when data comes.
        client.write_all(b"more\n").await.unwrap();
        let n = crate::framing::fill(&mut buf, &mut stream).await.unwrap();
        assert_eq!(&buf[..n], b"more\n");
    }
}
