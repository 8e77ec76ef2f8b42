//! Parts started together on a new data folder all come up: their migrations run once,
//! under a lock, whatever starts first (the issue: three `qrpool pregen fill` at once on a
//! new folder, one exited with `UNIQUE constraint failed: _sqlx_migrations.version`).
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};

use qrpool::{App, Parts};
use tests::{embedded_settings, qrpool_binary};

#[test]
fn processes_started_at_once_on_a_new_data_folder_all_come_up() {
    for round in 0..4 {
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            Command::new(qrpool_binary())
                .args(args)
                .env("QRPOOL_EMBEDDED__DATA_DIR", dir.path())
                .env("QRPOOL_TELEMETRY__FILTER", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let children = vec![
            run(&["pregen", "fill", "--count", "10"]),
            run(&["pregen", "fill", "--count", "10"]),
            run(&["pregen", "fill", "--count", "10"]),
            run(&["keys", "create", "--tenant", "a"]),
            run(&["keys", "create", "--tenant", "b"]),
        ];
        for child in children {
            let output = child.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "round {round}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_built_at_once_on_a_new_data_folder_all_come_up() {
    let dir = tempfile::tempdir().unwrap();
    let settings = embedded_settings(dir.path());
    let built = futures::future::join_all((0..3).map(|_| App::build(&settings, Parts::ALL))).await;
    for app in built {
        app.unwrap();
    }
}
