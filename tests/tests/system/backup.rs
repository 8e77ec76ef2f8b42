//! `qrpool backup` and `qrpool restore` on the embedded store: a backup taken while binds
//! commit holds every bind acknowledged before it began, none acknowledged after it ended,
//! and after a restore the pool hands out no code that was handed out before.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};

use bindings::backup::{self, BackupError};
use qrpool::Parts;
use tests::{TestApp, embedded_settings};

fn settings(data_dir: &std::path::Path) -> config::Settings {
    let mut settings = embedded_settings(data_dir);
    settings.pregen.target_depth = 1_500;
    settings.pregen.low_water = 0;
    // A dry pool answers 503 here rather than drawing codes on demand (see main.rs).
    settings.binder.on_demand_local = false;
    settings
}

fn ids(bodies: &[Value]) -> HashSet<String> {
    bodies
        .iter()
        .map(|body| body["request_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_exactly_the_binds_acknowledged_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let backup_dir = dir.path().join("backup");
    let app = TestApp::spawn(settings(&data_dir), Parts::ALL).await;
    let before = ids(&app.bind_many(100, 8).await);

    // Binds go on, one after another, from before the backup until after it.
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn({
        let (client, url, stop) = (app.client.clone(), app.url("/v1/codes"), stop.clone());
        async move {
            let mut acknowledged = Vec::new();
            while !stop.load(Ordering::Relaxed) && acknowledged.len() < 600 {
                let answer = client
                    .post(&url)
                    .json(&json!({"params": {"during": acknowledged.len()}}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(answer.status(), 201);
                let body: Value = answer.json().await.unwrap();
                acknowledged.push(body["request_id"].as_str().unwrap().to_owned());
            }
            acknowledged
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let backed_up = backup::back_up(&data_dir, &backup_dir).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let during: HashSet<String> = load.await.unwrap().into_iter().collect();
    let after = ids(&app.bind_many(100, 8).await);
    assert!(
        during.len() >= 10,
        "binds went on during the backup: {}",
        during.len()
    );

    // The same folder twice is refused, and so is a restore under a running process.
    assert!(matches!(
        backup::back_up(&data_dir, &backup_dir).await,
        Err(BackupError::NotEmpty(_))
    ));
    assert!(matches!(
        backup::restore(&data_dir, &backup_dir).await,
        Err(BackupError::InUse(_))
    ));
    app.stop().await;

    let restored = backup::restore(&data_dir, &backup_dir).await.unwrap();
    assert_eq!(restored, backed_up);
    let app = TestApp::spawn(settings(&data_dir), Parts::ALL).await;
    let status = |id: String| {
        let app = &app;
        async move { app.get(&format!("/v1/codes/{id}")).await.status().as_u16() }
    };
    for id in &before {
        assert_eq!(
            status(id.clone()).await,
            200,
            "bound before the backup: {id}"
        );
    }
    for id in &after {
        assert_eq!(
            status(id.clone()).await,
            404,
            "bound after the backup: {id}"
        );
    }
    let mut kept = 0;
    for id in &during {
        if status(id.clone()).await == 200 {
            kept += 1;
        }
    }
    assert_eq!(
        restored.bindings,
        (before.len() + kept) as i64,
        "the backup is one moment: the binds before it and some of those during it"
    );

    // The pool was kept: none of the codes handed out before the restore comes out again.
    let handed_out: HashSet<String> = before
        .iter()
        .chain(&during)
        .chain(&after)
        .cloned()
        .collect();
    let fresh = ids(&app.bind_many(300, 8).await);
    assert!(
        fresh.is_disjoint(&handed_out),
        "a code handed out before the restore was handed out again"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_damaged_backup_is_refused_and_the_store_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let app = TestApp::spawn(settings(&data_dir), Parts::ALL).await;
    let bound = ids(&app.bind_many(5, 1).await);
    app.stop().await;
    let backup_dir = dir.path().join("backup");
    std::fs::create_dir_all(&backup_dir).unwrap();
    std::fs::write(backup_dir.join("bindings.db"), b"not a database at all").unwrap();

    let refused = backup::restore(&data_dir, &backup_dir).await;
    assert!(
        matches!(refused, Err(BackupError::Damaged { .. })),
        "{refused:?}"
    );
    assert!(!data_dir.join("bindings.db.restoring").exists());
    let app = TestApp::spawn(settings(&data_dir), Parts::ALL).await;
    for id in bound {
        assert_eq!(app.get(&format!("/v1/codes/{id}")).await.status(), 200);
    }
    app.stop().await;
}
