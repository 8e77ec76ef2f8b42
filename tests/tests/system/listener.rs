//! The `qrpool` process's own listener: a burst of new connections that arrives faster than
//! they are accepted waits in the kernel's queue (`server.listen_backlog`, 4,096) instead of
//! being dropped. Beyond the queue the kernel drops a client's SYN and the client sends it
//! again a second later, which no metric of qrpool's sees (docs/operations.md, "Bursts of new
//! connections"). `service::serve`'s test holds `listen` to it; this one holds the binary to
//! using it, whatever builds its listeners.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tests::QrpoolProcess;

/// A burst well above the 128 that the standard library's and tokio's `bind` ask for, per
/// listener (qrpool may open one per serving thread).
const BURST: usize = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_connections_waits_for_a_stopped_qrpool_and_none_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let port = tests::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let env: Vec<(String, String)> = [
        (
            "QRPOOL_EMBEDDED__DATA_DIR",
            dir.path().display().to_string(),
        ),
        ("QRPOOL_SERVER__LISTEN", format!("127.0.0.1:{port}")),
        ("QRPOOL_SERVER__PUBLIC_URL", base.clone()),
        ("QRPOOL_TELEMETRY__FILTER", "warn".into()),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect();
    let mut process = QrpoolProcess::start(
        &env,
        &format!("{base}/healthz"),
        dir.path().join("qrpool.log"),
    )
    .await;
    let client = reqwest::Client::new();

    // Stopped, the process accepts nothing: every connection of the burst waits in the queue,
    // its handshake completed by the kernel, or is dropped and retried a second later.
    process.signal("-STOP");
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let connected = tokio::task::spawn_blocking(move || {
        let mut open = Vec::new();
        for _ in 0..BURST {
            match std::net::TcpStream::connect_timeout(&address, Duration::from_millis(500)) {
                Ok(connection) => open.push(connection),
                Err(_) => break,
            }
        }
        open
    })
    .await
    .unwrap();
    process.signal("-CONT");
    assert_eq!(
        connected.len(),
        BURST,
        "connections that got through at once"
    );

    // Running again, it serves a new connection (the burst's are closed unanswered).
    drop(connected);
    let response = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let status = process.stop().await;
    assert!(
        status.success(),
        "qrpool stopped cleanly after the burst: {status}"
    );
}
