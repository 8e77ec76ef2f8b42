//! The `qrpool` process's own listener: a burst of new connections that arrives faster than
//! they are accepted waits in the kernel's queue (`server.listen_backlog`, 4,096) instead of
//! being dropped. Beyond the queue the kernel drops a client's SYN and the client sends it
//! again a second later, which no metric of qrpool's sees (docs/operations.md, "Bursts of new
//! connections"). `service::serve`'s test holds `listen` to it; this one holds the binary to
//! using it, whatever builds its listeners.
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tests::qrpool_binary;

/// A burst well above the 128 that the standard library's and tokio's `bind` ask for, per
/// listener (qrpool may open one per serving thread).
const BURST: usize = 600;

/// The `qrpool` process, killed when the test ends however it ends (it may be stopped).
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(process: &Process, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &process.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_connections_waits_for_a_stopped_qrpool_and_none_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let port = tests::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut process = Process(
        Command::new(qrpool_binary())
            .arg("up")
            .env("QRPOOL_EMBEDDED__DATA_DIR", dir.path())
            .env("QRPOOL_SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env("QRPOOL_SERVER__PUBLIC_URL", &base)
            .env("QRPOOL_TELEMETRY__FILTER", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = reqwest::Client::new();
    let mut up = false;
    for _ in 0..600 {
        if let Ok(response) = client.get(format!("{base}/healthz")).send().await
            && response.status() == 200
        {
            up = true;
            break;
        }
        assert!(
            process.0.try_wait().unwrap().is_none(),
            "qrpool exited before it served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "qrpool served /healthz within 60 s");

    // Stopped, the process accepts nothing: every connection of the burst waits in the queue,
    // its handshake completed by the kernel, or is dropped and retried a second later.
    signal(&process, "-STOP");
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
    signal(&process, "-CONT");
    assert_eq!(
        connected.len(),
        BURST,
        "connections that got through at once"
    );

    // Running again, it serves a new connection (the burst's are closed unanswered).
    drop(connected);
    let response = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    signal(&process, "-TERM");
    for _ in 0..300 {
        if let Some(status) = process.0.try_wait().unwrap() {
            assert!(
                status.success(),
                "qrpool stopped cleanly after the burst: {status}"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("qrpool did not stop within 30 s of SIGTERM");
}
