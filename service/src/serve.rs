//! Serving until shutdown, then draining the requests in flight.
//!
//! Requests are answered on [`HttpThreads`]: one thread per core, each running its own
//! single-threaded tokio runtime, the way nginx runs one event loop per worker. The listener
//! stays on the caller's runtime and hands each new connection to the next thread in turn;
//! from then on the connection is read, answered and written on that thread alone. A scan is
//! a few microseconds of work between a read and a write, and on one shared work-stealing
//! runtime moving connections' tasks between cores and waking parked workers cost more CPU
//! per request than one thread per core does (measured with `benches/scan-vs-nginx.sh`).
//! Each thread drives hyper's HTTP/1 connections itself rather than through axum's serve
//! loop, to set what that loop leaves at hyper's defaults (see [`serve_handed`]).
//!
//! Every connection is held to [`ConnectionLimits`]: one that sends no whole request head
//! within the header read timeout — a new one, or one kept alive idle between requests — is
//! closed (hyper's own timer), and beyond the most connections at once a new one is answered
//! `503` and closed at once, so that slow or idle clients cannot hold every descriptor.
//!
//! What a request starts that must outlive it (the group commit writer, change listeners,
//! scan event writers) was spawned on the caller's runtime when the parts were built, so
//! those threads carry only connections and the requests' own futures.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

pub use config::ConnectionLimits;

/// A connection as the listener hands it to a serving thread, with its place among the
/// connections allowed at once (freed when it closes).
type Handed = (std::net::TcpStream, SocketAddr, OwnedSemaphorePermit);
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt as _};

/// A service that is made per connection and told the connection's peer.
pub trait ForPeer {
    fn for_peer(&self, peer: SocketAddr) -> Self;
}

/// A bare router is the same for every peer (tests serve one).
impl ForPeer for axum::Router {
    fn for_peer(&self, _peer: SocketAddr) -> Self {
        self.clone()
    }
}

/// Binds `address` with room for `backlog` connections that the kernel has completed and the
/// process not yet accepted (the kernel caps it at `net.core.somaxconn`).
///
/// tokio's and the standard library's `bind` ask for 128. When more connections than that
/// arrive at once (a client's pool growing in a burst, a load balancer reconnecting) while the
/// accept loop waits for a core, the kernel drops the SYNs beyond it, and each of those
/// clients sends its SYN again after the first retransmission timeout: a request a second
/// late (the soak's one-second requests: docs/performance.md, Soak). nginx asks for 511, Go
/// for `somaxconn`.
pub fn listen(address: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As `bind` does: a restarted process binds again at once, beside the old connections in
    // TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(backlog)
}

/// Serves `service` on `listener`, on `threads` threads of their own (0: on the caller's
/// runtime), until `shutdown` resolves; then stops accepting and waits up to `grace` for the
/// requests in flight. Returns the threads, which live on until dropped (see
/// [`HttpThreads`]), or an error when one could not start.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
    threads: usize,
    limits: ConnectionLimits,
) -> std::io::Result<HttpThreads>
where
    S: Service<Request, Response = Response, Error = Infallible> + ForPeer + Clone + Send + 'static,
    S::Future: Send,
{
    let stop = CancellationToken::new();
    let mut workers = match NonZeroUsize::new(threads) {
        Some(threads) => HttpThreads::start(threads, &service, &stop, limits)?,
        None => HttpThreads::here(service, &stop, limits),
    };
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut listener = listener;
    let mut shutdown = std::pin::pin!(shutdown);
    let mut next = 0;
    loop {
        let (connection, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = Listener::accept(&mut listener) => accepted,
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            refuse(connection, peer);
            continue;
        };
        no_delay(&connection);
        // Leaves this runtime's reactor, to join the chosen thread's.
        let connection = match connection.into_std() {
            Ok(connection) => connection,
            Err(error) => {
                tracing::warn!(%error, %peer, "could not hand a connection over; dropped");
                continue;
            }
        };
        workers.hand(&mut next, (connection, peer, permit));
    }
    drop(listener);
    stop.cancel();
    workers.drain(grace).await;
    Ok(workers)
}

/// What a connection beyond the most allowed at once is told before it is closed.
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\n\
content-type: text/plain\r\ncontent-length: 26\r\nconnection: close\r\n\r\n\
too many open connections\n";

/// Answers a connection beyond the limit without reading it, and closes it: the answer fits
/// any socket's send buffer, so it is written without waiting, or not at all.
fn refuse(connection: TcpStream, peer: SocketAddr) {
    metrics::counter!("http_connections_refused_total").increment(1);
    tracing::debug!(%peer, "too many open connections; refused");
    let _ = connection.try_write(TOO_MANY_CONNECTIONS);
}

/// Nagle's algorithm would only hold an answer back until the client's delayed ACK of the one
/// before it: every answer is written whole.
fn no_delay(connection: &TcpStream) {
    if let Err(error) = connection.set_nodelay(true) {
        tracing::debug!(%error, "could not set TCP_NODELAY on a connection");
    }
}

/// The threads requests are answered on. After serving they stay idle until this is dropped,
/// because a request may have opened a connection to a store (a database connection, say)
/// that now sits in a shared pool and is driven by that thread's runtime: the parts that
/// stop after serving still use them.
#[derive(Debug)]
pub struct HttpThreads {
    threads: Vec<HttpThread>,
}

#[derive(Debug)]
struct HttpThread {
    connections: mpsc::UnboundedSender<Handed>,
    /// Resolves when the thread has answered its last request.
    drained: Option<oneshot::Receiver<()>>,
    /// Dropped: the thread's runtime ends.
    release: Option<oneshot::Sender<()>>,
}

impl HttpThreads {
    /// Serving on the caller's runtime, as one "thread" that is a task.
    fn here<S>(service: S, stop: &CancellationToken, limits: ConnectionLimits) -> Self
    where
        S: Service<Request, Response = Response, Error = Infallible>
            + ForPeer
            + Clone
            + Send
            + 'static,
        S::Future: Send,
    {
        let (connections, handed) = mpsc::unbounded_channel();
        let (drained_tx, drained) = oneshot::channel();
        let stop = stop.clone();
        tokio::spawn(async move {
            serve_handed(handed, service, stop, limits).await;
            let _ = drained_tx.send(());
        });
        HttpThreads {
            threads: vec![HttpThread {
                connections,
                drained: Some(drained),
                release: None,
            }],
        }
    }

    fn start<S>(
        count: NonZeroUsize,
        service: &S,
        stop: &CancellationToken,
        limits: ConnectionLimits,
    ) -> std::io::Result<Self>
    where
        S: Service<Request, Response = Response, Error = Infallible>
            + ForPeer
            + Clone
            + Send
            + 'static,
        S::Future: Send,
    {
        let mut threads = Vec::with_capacity(count.get());
        for index in 0..count.get() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (connections, handed) = mpsc::unbounded_channel();
            let (drained_tx, drained) = oneshot::channel();
            let (release, released) = oneshot::channel::<()>();
            let service = service.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("qrpool-http-{index}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        serve_handed(handed, service, stop, limits).await;
                        let _ = drained_tx.send(());
                        let _ = released.await;
                    });
                })?;
            threads.push(HttpThread {
                connections,
                drained: Some(drained),
                release: Some(release),
            });
        }
        Ok(HttpThreads { threads })
    }

    /// Hands `connection` to the thread after the one `next` names, round robin.
    fn hand(&mut self, next: &mut usize, mut connection: Handed) {
        let peer = connection.1;
        for _ in 0..self.threads.len() {
            let thread = &self.threads[*next % self.threads.len()];
            *next = next.wrapping_add(1);
            match thread.connections.send(connection) {
                Ok(()) => return,
                // That thread is gone (it failed); try the next.
                Err(mpsc::error::SendError(back)) => connection = back,
            }
        }
        tracing::error!(%peer, "no HTTP thread is serving; connection dropped");
    }

    /// Waits for every thread to answer its last request, up to `grace`.
    async fn drain(&mut self, grace: Duration) {
        let drained = futures::future::join_all(
            self.threads
                .iter_mut()
                .filter_map(|thread| thread.drained.take()),
        );
        if tokio::time::timeout(grace, drained).await.is_err() {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "requests still in flight after the grace period; stopping"
            );
        }
    }
}

impl Drop for HttpThreads {
    fn drop(&mut self) {
        for thread in &mut self.threads {
            drop(thread.release.take());
        }
    }
}

/// One thread's serving: each connection handed to it is served by hyper's HTTP/1 on this
/// thread until it closes; when `stop` is cancelled, no more are taken, idle connections are
/// closed and those with a request in flight close after answering it.
async fn serve_handed<S>(
    mut handed: mpsc::UnboundedReceiver<Handed>,
    service: S,
    stop: CancellationToken,
    limits: ConnectionLimits,
) where
    S: Service<Request, Response = Response, Error = Infallible> + ForPeer + Clone + Send + 'static,
    S::Future: Send,
{
    let mut http1 = http1::Builder::new();
    // hyper watches a connection for the client's EOF while a request is in flight, which
    // reads ahead into a new 8-KiB buffer on every request (the request still holds the old
    // one): a twentieth of a scan's instructions (callgrind). Answers take microseconds, so
    // finishing one for a client that left costs less than watching for it on every request.
    http1.half_close(true);
    // Without a timer hyper waits for a request head for ever: a client that sends half a
    // request line, or keeps a connection idle, would hold it (and its descriptor) for good.
    http1.timer(hyper_util::rt::TokioTimer::new());
    http1.header_read_timeout(limits.header_read_timeout);
    let connections = GracefulShutdown::new();
    loop {
        let (connection, peer, permit) = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            next = handed.recv() => match next {
                Some(next) => next,
                // The listener is gone: nothing more comes until the stop.
                None => {
                    stop.cancelled().await;
                    break;
                }
            },
        };
        let connection = match TcpStream::from_std(connection) {
            Ok(connection) => TokioIo::new(connection),
            Err(error) => {
                tracing::warn!(%error, %peer, "could not take a connection over; dropped");
                continue;
            }
        };
        let service = TowerToHyperService::new(
            service
                .for_peer(peer)
                .map_request(|request: hyper::Request<Incoming>| request.map(Body::new)),
        );
        let served = connections.watch(http1.serve_connection(connection, service));
        tokio::spawn(async move {
            if let Err(error) = served.await {
                tracing::debug!(%error, %peer, "a connection ended with an error");
            }
            drop(permit);
        });
    }
    connections.shutdown().await;
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::routing::get;

    use super::*;

    /// One `GET` on a connection of its own; the whole answer, head and body.
    async fn get_text(address: SocketAddr, path: &'static str) -> String {
        tokio::task::spawn_blocking(move || {
            let mut connection = std::net::TcpStream::connect(address).expect("connects");
            write!(
                connection,
                "GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n"
            )
            .expect("sends");
            let mut answer = String::new();
            connection.read_to_string(&mut answer).expect("reads");
            answer
        })
        .await
        .expect("the client ran")
    }

    struct Serving {
        address: SocketAddr,
        shutdown: oneshot::Sender<()>,
        served: tokio::task::JoinHandle<std::io::Result<HttpThreads>>,
    }

    async fn serving(router: Router, threads: usize) -> Serving {
        serving_with(router, threads, ConnectionLimits::default()).await
    }

    async fn serving_with(router: Router, threads: usize, limits: ConnectionLimits) -> Serving {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let address = listener.local_addr().expect("an address");
        let (shutdown, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(serve(
            listener,
            router,
            async move {
                let _ = stopped.await;
            },
            Duration::from_secs(5),
            threads,
            limits,
        ));
        Serving {
            address,
            shutdown,
            served,
        }
    }

    impl Serving {
        async fn stop(self) -> HttpThreads {
            let _ = self.shutdown.send(());
            self.served
                .await
                .expect("serve did not panic")
                .expect("served")
        }
    }

    /// Whether the server closed `connection` within `within` (reads EOF or a reset).
    fn closed_by_server(mut connection: std::net::TcpStream, within: Duration) -> bool {
        connection
            .set_read_timeout(Some(within))
            .expect("a read timeout");
        let mut buffer = [0u8; 1024];
        loop {
            match connection.read(&mut buffer) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(error)
                    if error.kind() == std::io::ErrorKind::WouldBlock
                        || error.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return false;
                }
                Err(_) => return true,
            }
        }
    }

    #[tokio::test]
    async fn connections_arriving_faster_than_they_are_accepted_wait_and_none_is_dropped() {
        // Nobody accepts: every connection stays in the kernel's queue. With the 128 of
        // tokio's `bind`, the 130th SYN and those after it are dropped, and each connect
        // waits a second for its retransmission.
        let listener = listen(SocketAddr::from(([127, 0, 0, 1], 0)), 4096).expect("binds");
        let address = listener.local_addr().expect("an address");
        let connected = tokio::task::spawn_blocking(move || {
            let mut open = Vec::new();
            for _ in 0..400 {
                match std::net::TcpStream::connect_timeout(&address, Duration::from_millis(500)) {
                    Ok(connection) => open.push(connection),
                    Err(_) => break,
                }
            }
            open.len()
        })
        .await
        .expect("the clients ran");
        assert_eq!(connected, 400);
        drop(listener);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_and_idle_clients_are_closed_after_the_header_read_timeout() {
        for threads in [0, 2] {
            let router = Router::new().route("/", get(|| async { "hello" }));
            let limits = ConnectionLimits {
                header_read_timeout: Some(Duration::from_millis(300)),
                max_connections: 1_000,
            };
            let serving = serving_with(router, threads, limits).await;
            let address = serving.address;
            let closed = tokio::task::spawn_blocking(move || {
                // Half a request line and nothing more, on 50 connections.
                let slow: Vec<std::net::TcpStream> = (0..50)
                    .map(|_| {
                        let mut connection =
                            std::net::TcpStream::connect(address).expect("connects");
                        connection.write_all(b"GET /he").expect("sends");
                        connection
                    })
                    .collect();
                // A whole request, then idle on the kept-alive connection.
                let mut idle = std::net::TcpStream::connect(address).expect("connects");
                write!(idle, "GET / HTTP/1.1\r\nhost: test\r\n\r\n").expect("sends");
                let mut answer = [0u8; 512];
                let read = idle.read(&mut answer).expect("an answer");
                assert!(String::from_utf8_lossy(&answer[..read]).ends_with("hello"));
                let slow_closed = slow
                    .into_iter()
                    .filter(|connection| {
                        closed_by_server(connection.try_clone().unwrap(), Duration::from_secs(3))
                    })
                    .count();
                (slow_closed, closed_by_server(idle, Duration::from_secs(3)))
            })
            .await
            .expect("the clients ran");
            assert_eq!(closed, (50, true), "threads: {threads}");
            serving.stop().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_beyond_the_limit_are_answered_503_and_closed() {
        let router = Router::new().route("/", get(|| async { "hello" }));
        let limits = ConnectionLimits {
            header_read_timeout: Some(Duration::from_secs(30)),
            max_connections: 5,
        };
        let serving = serving_with(router, 2, limits).await;
        let address = serving.address;
        tokio::task::spawn_blocking(move || {
            let held: Vec<std::net::TcpStream> = (0..5)
                .map(|_| std::net::TcpStream::connect(address).expect("connects"))
                .collect();
            // Accepted in turn: let the listener take all five before the sixth.
            std::thread::sleep(Duration::from_millis(200));
            let mut refused = std::net::TcpStream::connect(address).expect("connects");
            let mut answer = String::new();
            refused
                .read_to_string(&mut answer)
                .expect("an answer, then the end");
            assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
            // A place frees when a connection closes.
            drop(held);
            std::thread::sleep(Duration::from_millis(200));
            let mut later = std::net::TcpStream::connect(address).expect("connects");
            write!(
                later,
                "GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n"
            )
            .expect("sends");
            let mut answer = String::new();
            later.read_to_string(&mut answer).expect("reads");
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        })
        .await
        .expect("the clients ran");
        serving.stop().await;
    }

    #[tokio::test]
    async fn connections_are_answered_by_each_thread_in_turn() {
        let router = Router::new().route(
            "/",
            get(|| async { std::thread::current().name().unwrap_or_default().to_owned() }),
        );
        let serving = serving(router, 2).await;
        let mut answered_by = Vec::new();
        for _ in 0..4 {
            let answer = get_text(serving.address, "/").await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            answered_by.push(answer.rsplit("\r\n").next().unwrap_or_default().to_owned());
        }
        assert_eq!(
            answered_by,
            [
                "qrpool-http-0",
                "qrpool-http-1",
                "qrpool-http-0",
                "qrpool-http-1"
            ]
        );
        drop(serving.stop().await);
    }

    #[tokio::test]
    async fn shutdown_waits_for_the_requests_in_flight_and_takes_no_new_ones() {
        let router = Router::new().route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "done"
            }),
        );
        let serving = serving(router, 2).await;
        let address = serving.address;
        let in_flight = tokio::spawn(get_text(address, "/slow"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let threads = serving.stop().await;
        let answer = in_flight.await.expect("the request ran");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("done"), "{answer}");
        assert!(std::net::TcpStream::connect(address).is_err());
        drop(threads);
    }

    /// The HTTP threads let a connection half close: a client that shuts its side after
    /// asking still gets its answer (hyper's default would drop the request at the EOF).
    #[tokio::test]
    async fn a_client_that_closes_its_side_after_asking_still_gets_the_answer() {
        let router = Router::new().route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                "done"
            }),
        );
        let serving = serving(router, 1).await;
        let address = serving.address;
        let answer = tokio::task::spawn_blocking(move || {
            let mut connection = std::net::TcpStream::connect(address).expect("connects");
            write!(connection, "GET /slow HTTP/1.1\r\nhost: test\r\n\r\n").expect("sends");
            connection
                .shutdown(std::net::Shutdown::Write)
                .expect("half closes");
            let mut answer = String::new();
            connection.read_to_string(&mut answer).expect("reads");
            answer
        })
        .await
        .expect("the client ran");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("done"), "{answer}");
        drop(serving.stop().await);
    }

    #[tokio::test]
    async fn what_a_request_started_on_a_thread_runs_until_the_threads_are_dropped() {
        // Each request starts a task on its HTTP thread that reports after `delay`.
        type Report = (Duration, oneshot::Sender<()>);
        let reports: Arc<Mutex<Vec<Report>>> = Arc::default();
        let handed = Arc::clone(&reports);
        let router = Router::new().route(
            "/",
            get(move || {
                let report = handed.lock().expect("not poisoned").pop();
                async move {
                    if let Some((delay, report)) = report {
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            let _ = report.send(());
                        });
                    }
                }
            }),
        );
        let (soon, soon_reported) = oneshot::channel();
        let (late, late_reported) = oneshot::channel();
        reports.lock().expect("not poisoned").extend([
            (Duration::from_secs(60), late),
            (Duration::from_millis(200), soon),
        ]);
        let serving = serving(router, 1).await;
        get_text(serving.address, "/").await;
        get_text(serving.address, "/").await;
        let threads = serving.stop().await;
        // Serving has ended, the thread's runtime still runs what the requests started.
        assert!(soon_reported.await.is_ok());
        // Dropped, the runtime ends and with it the task that had yet to report.
        drop(threads);
        assert!(late_reported.await.is_err());
    }
}
