//! Serving until shutdown, then draining the requests in flight.

use std::future::Future;
use std::time::Duration;

use std::convert::Infallible;

use axum::ServiceExt as _;
use axum::extract::Request;
use axum::response::Response;
use tokio::net::TcpListener;
use tower::Service;

/// Serves `service` on `listener` until `shutdown` resolves; then stops accepting and waits
/// up to `grace` for the requests in flight. Returns an error only when serving itself failed.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let server =
        axum::serve(listener, service.into_make_service()).with_graceful_shutdown(async move {
            shutdown.await;
            let _ = drained_tx.send(());
        });
    let mut server = std::pin::pin!(server.into_future());
    tokio::select! {
        result = &mut server => result,
        () = async {
            let _ = drained_rx.await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(grace_secs = grace.as_secs(), "requests still in flight after the grace period; stopping");
            Ok(())
        }
    }
}
