//! The embedded data folder's file system runs out of space mid-load: binds are refused with a
//! problem that says so, nothing half-written stays, the database is not corrupted, and binds
//! resume once space returns. The folder is a small tmpfs of the test's own (mounting needs
//! root; CI runs as root).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use sqlx::Connection;

use qrpool::Parts;
use tests::servers::is_root;
use tests::{TestApp, embedded_settings};

use super::{Load, SERIAL, assert_answers_kept_the_rules, summary};

/// A tmpfs of `megabytes`, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(megabytes: u32) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount a tmpfs");
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the file system is full.
    fn fill(&self) -> std::path::PathBuf {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0_u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        // What is left is less than a chunk: take it a byte at a time.
        while file.write_all(&[0]).is_ok() {}
        let _ = file.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazily: after a failed assertion the app may still hold files in it.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_binds_by_name_corrupts_nothing_and_binds_resume_when_space_returns() {
    if !is_root() {
        eprintln!("skipped: mounting a small file system needs root");
        return;
    }
    let _serial = SERIAL.lock().await;
    let disk = SmallDisk::mount(32);
    let data_dir = disk.path().join("data");
    let mut settings = embedded_settings(&data_dir);
    settings.binder.on_demand_local = true;
    let limit = Duration::from_millis(settings.server.request_timeout_ms + 1_000);
    let app = TestApp::spawn(settings, Parts::ALL).await;
    let before = app.bind_many(10, 2).await;

    let load = Load::binds(&app, 4);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let filler = disk.fill();
    let full_at = load.now();
    // The write-ahead log reuses the space it has, so the first refusal may take a moment.
    let refused = loop {
        let refusal = load
            .answers
            .lock()
            .unwrap()
            .iter()
            .find(|answer| answer.status == 503 && answer.sent >= full_at)
            .cloned();
        if let Some(refusal) = refusal {
            break refusal;
        }
        assert!(
            load.now() - full_at < Duration::from_secs(30),
            "binds are refused within 30 s of the disk filling up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(refused.problem_json, "{refused:?}");
    assert_eq!(
        refused.detail.as_deref(),
        Some("the binding store's disk is full"),
        "the problem names the disk"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    std::fs::remove_file(&filler).unwrap();
    let freed_at = load.now();
    // Not after a busy timeout per write: a connection whose write failed is not reused.
    let recovered_in = load
        .first_success_since(freed_at, Duration::from_secs(5))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let answers = load.finish().await;
    println!(
        "disk full ({:?}): binds succeeded again {recovered_in:?} after space returned; {}",
        freed_at - full_at,
        summary(&answers)
    );
    let bound = assert_answers_kept_the_rules(&answers, &[201, 503], limit);
    app.stop().await;

    // Exactly the binds that were answered 201 are there, and the file is sound.
    let url = format!(
        "sqlite://{}?mode=ro",
        data_dir.join("bindings.db").display()
    );
    let mut database = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut database)
        .await
        .unwrap();
    assert_eq!(check, "ok");
    let stored: std::collections::HashSet<String> =
        sqlx::query_scalar("SELECT request_id FROM bindings")
            .fetch_all(&mut database)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let mut expected = bound;
    expected.extend(
        before
            .iter()
            .map(|body| body["request_id"].as_str().unwrap().to_owned()),
    );
    assert_eq!(
        stored, expected,
        "what is stored is exactly what was acknowledged"
    );
}
