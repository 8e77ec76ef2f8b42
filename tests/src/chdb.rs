//! A ClickHouse for tests: `scripts/chdb-server` (ClickHouse's HTTP interface over chDB, a
//! real ClickHouse engine in-process) on a loopback port of its own.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A running chDB server; killed when dropped.
#[derive(Debug)]
pub struct Chdb {
    child: Child,
    pub url: String,
    /// Its data folder when it has none of the caller's: removed after the server is killed
    /// (the server cannot remove it itself when killed).
    _data: Option<tempfile::TempDir>,
}

impl Chdb {
    /// Starts one with `QRPOOL_TEST_PYTHON` (`scripts/test` sets it to a Python with chDB).
    pub fn start() -> Chdb {
        let data = tempfile::Builder::new()
            .prefix("chdb-")
            .tempdir()
            .expect("a temporary folder");
        let path = data.path().display().to_string();
        let mut chdb = Self::spawn(&["--path", &path]);
        chdb._data = Some(data);
        chdb
    }

    /// Starts one on `port`, keeping its data in `path` (so that one started again there
    /// finds it).
    pub fn start_at(port: u16, path: &std::path::Path) -> Chdb {
        let port = port.to_string();
        let path = path.display().to_string();
        Self::spawn(&["--port", &port, "--path", &path])
    }

    fn spawn(arguments: &[&str]) -> Chdb {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/chdb-server");
        let python = std::env::var("QRPOOL_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = Command::new(python)
            .arg(script)
            .args(arguments)
            .stdout(Stdio::piped())
            .spawn()
            .expect("Python runs scripts/chdb-server (scripts/test provides chDB)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("its output"))
            .read_line(&mut line)
            .expect("it says where it listens");
        let address = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("chdb-server did not start: {line:?}"))
            .to_owned();
        Chdb {
            child,
            url: format!("http://{address}"),
            _data: None,
        }
    }
}

impl Drop for Chdb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
