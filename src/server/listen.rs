//! The webhook listener's guards against slow and greedy clients: a cap on
//! open connections (more wait in the kernel's backlog), a deadline for a
//! request's headers once its first byte arrived, and an idle timeout. The
//! body's deadline is the handler's (`BODY_READ_TIMEOUT`). axum's `serve`
//! sets none of these.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// The listener's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once.
    pub max_connections: usize,
    /// From a request's first byte to the end of its headers.
    pub header_read: Duration,
    /// Without a byte read or written, a connection is closed.
    pub idle: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 1024,
            header_read: Duration::from_secs(10),
            idle: Duration::from_secs(60),
        }
    }
}

/// A TCP listener that hands out [`Guarded`] connections.
pub struct GuardedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    limits: Limits,
}

impl GuardedListener {
    /// Wraps a bound listener.
    pub fn new(inner: TcpListener, limits: Limits) -> GuardedListener {
        GuardedListener {
            inner,
            slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            limits,
        }
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = Guarded;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Guarded, std::net::SocketAddr) {
        // A slot first: at the cap, new connections wait in the backlog.
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        (Guarded::new(stream, permit, self.limits), addr)
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }
}

/// One accepted connection with its deadlines; holds a slot until dropped.
pub struct Guarded {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    limits: Limits,
    /// Fires at the earliest deadline in force.
    timer: Pin<Box<Sleep>>,
    /// When the current request's headers must be complete, once it started.
    headers_by: Option<Instant>,
    /// Reading a request's headers (as opposed to its body, or nothing).
    in_headers: bool,
    /// The last bytes of the header block so far, to find `\r\n\r\n`.
    tail: [u8; 3],
    last_activity: Instant,
}

impl Guarded {
    fn new(stream: TcpStream, permit: OwnedSemaphorePermit, limits: Limits) -> Guarded {
        let now = Instant::now();
        Guarded {
            stream,
            _permit: permit,
            limits,
            timer: Box::pin(tokio::time::sleep_until(now + limits.idle)),
            headers_by: None,
            in_headers: true,
            tail: [0; 3],
            last_activity: now,
        }
    }

    fn deadline(&self) -> Instant {
        let idle = self.last_activity + self.limits.idle;
        match self.headers_by {
            Some(h) => h.min(idle),
            None => idle,
        }
    }

    /// An error when a deadline passed; otherwise arms the timer so the
    /// task wakes at the next one.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let deadline = self.deadline();
        if Instant::now() >= deadline {
            let what = if self.headers_by.is_some_and(|h| h <= deadline) {
                "request headers not received in time"
            } else {
                "connection idle"
            };
            return Err(io::Error::new(io::ErrorKind::TimedOut, what));
        }
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        let _ = self.timer.as_mut().poll(cx);
        Ok(())
    }

    /// Follows the header block of a request through the bytes read.
    fn saw(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.last_activity = Instant::now();
        if !self.in_headers {
            return;
        }
        if self.headers_by.is_none() {
            self.headers_by = Some(self.last_activity + self.limits.header_read);
        }
        // `\r\n\r\n` inside this read, or across the previous one's end.
        let mut seam = self.tail.to_vec();
        seam.extend_from_slice(&bytes[..bytes.len().min(3)]);
        if bytes.windows(4).any(|w| w == b"\r\n\r\n") || seam.windows(4).any(|w| w == b"\r\n\r\n") {
            return self.headers_done();
        }
        let mut last = self.tail.to_vec();
        last.extend_from_slice(&bytes[bytes.len().saturating_sub(3)..]);
        self.tail.copy_from_slice(&last[last.len() - 3..]);
    }

    fn headers_done(&mut self) {
        self.in_headers = false;
        self.headers_by = None;
        self.tail = [0; 3];
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let got = buf.filled()[before..].to_vec();
                this.saw(&got);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.check(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.stream).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &r {
            // `100 Continue` is written before the body is read: it ends
            // no request.
            if *n > 0 && !data.starts_with(b"HTTP/1.1 100") {
                // A response is going out: what is read next is a new
                // request's headers.
                this.last_activity = Instant::now();
                this.in_headers = true;
                this.headers_by = None;
                this.tail = [0; 3];
            }
        }
        if r.is_pending() {
            if let Err(e) = this.check(cx) {
                return Poll::Ready(Err(e));
            }
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        let interim = bufs.first().is_some_and(|b| b.starts_with(b"HTTP/1.1 100"));
        if let Poll::Ready(Ok(n)) = &r {
            if *n > 0 && !interim {
                this.last_activity = Instant::now();
                this.in_headers = true;
                this.headers_by = None;
                this.tail = [0; 3];
            }
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn serve(limits: Limits) -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        tokio::spawn(async move {
            let _ = axum::serve(GuardedListener::new(l, limits), app).await;
        });
        addr
    }

    /// Reads until the peer closes (or 5 s pass); what was read.
    async fn read_to_close(s: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn headers_dribbled_past_the_deadline_close_the_connection() {
        let addr = serve(Limits {
            header_read: Duration::from_millis(300),
            ..Limits::default()
        })
        .await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let started = std::time::Instant::now();
        // A byte every 100 ms keeps the connection from looking idle.
        for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaa".iter() {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            if started.elapsed() > Duration::from_secs(3) {
                break;
            }
        }
        let got = read_to_close(&mut s).await;
        assert!(!got.contains("200 OK"), "{got}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "closed only after {:?}",
            started.elapsed()
        );
        // A prompt request on a new connection is served.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        assert!(read_to_close(&mut s).await.contains("200 OK"));
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed() {
        let addr = serve(Limits {
            idle: Duration::from_millis(300),
            ..Limits::default()
        })
        .await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let started = std::time::Instant::now();
        read_to_close(&mut s).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn connections_over_the_cap_wait_for_a_slot() {
        let addr = serve(Limits {
            max_connections: 2,
            ..Limits::default()
        })
        .await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut buf = [0u8; 256];
            let n = s.read(&mut buf).await.unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).contains("200 OK"));
            held.push(s);
        }
        // The third is accepted by the kernel but not served while two are open.
        let mut third = TcpStream::connect(addr).await.unwrap();
        third
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let waited = tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf)).await;
        assert!(waited.is_err(), "served over the cap");
        drop(held.pop());
        assert!(read_to_close(&mut third).await.contains("200 OK"));
    }
}
