//! Servers of a test's own, which it can stop, start again and cut off: a Redis, a PostgreSQL
//! cluster and a tansu broker that keeps its topics on disk. The shared servers that
//! `scripts/test` starts are never restarted; a test that needs a backend to go away mid-load
//! makes one of these.
//!
//! A server may live in a network namespace of its own ([`Netns`]), joined to the host by a
//! veth pair. Dropping its packets there (`iptables -j DROP`) is a network cut as a partition
//! or a dead host makes it: connections are not refused, they just stop answering. Namespaces
//! and iptables need root; [`Netns::create`] says so when it cannot.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;

/// The tansu binary `scripts/test` built (`QRPOOL_TEST_TANSU`), with SQLite storage.
pub fn tansu_binary() -> String {
    let path = std::env::var("QRPOOL_TEST_TANSU").unwrap_or_else(|_| {
        format!(
            "{}/.cache/qrpool/tansu-0.6.0-dynostore-libsql/bin/tansu",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    assert!(
        Path::new(&path).exists(),
        "no tansu at {path}: scripts/test builds it (or set QRPOOL_TEST_TANSU)"
    );
    path
}

/// Whether this process may make namespaces, mount file systems and change iptables.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("{program} {args:?}: {error}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A network namespace joined to the host by a veth pair: the host is `10.213.N.1`, the
/// namespace `10.213.N.2`. Removed (with its veth pair) when dropped.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    pub host_ip: Ipv4Addr,
    pub inside_ip: Ipv4Addr,
    dropped_ports: std::sync::Mutex<Vec<u16>>,
}

impl Netns {
    pub fn create() -> Netns {
        assert!(
            is_root(),
            "network namespaces need root (scripts/test runs as root in CI)"
        );
        let tag: u32 = rand::rng().random();
        let subnet = 1 + tag % 250;
        let name = format!("qrpool-{tag:08x}");
        let host_end = format!("qh{tag:08x}");
        let inside_end = format!("qn{tag:08x}");
        let host_ip = Ipv4Addr::new(10, 213, subnet as u8, 1);
        let inside_ip = Ipv4Addr::new(10, 213, subnet as u8, 2);
        run("ip", &["netns", "add", &name]);
        let netns = Netns {
            name,
            host_ip,
            inside_ip,
            dropped_ports: std::sync::Mutex::new(Vec::new()),
        };
        run(
            "ip",
            &[
                "link",
                "add",
                &host_end,
                "type",
                "veth",
                "peer",
                "name",
                &inside_end,
            ],
        );
        run("ip", &["link", "set", &inside_end, "netns", &netns.name]);
        run(
            "ip",
            &["addr", "add", &format!("{host_ip}/30"), "dev", &host_end],
        );
        run("ip", &["link", "set", &host_end, "up"]);
        netns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{inside_ip}/30"),
            "dev",
            &inside_end,
        ]);
        netns.exec(&["ip", "link", "set", &inside_end, "up"]);
        netns.exec(&["ip", "link", "set", "lo", "up"]);
        netns
    }

    fn exec(&self, command: &[&str]) {
        let mut args = vec!["netns", "exec", &self.name];
        args.extend_from_slice(command);
        run("ip", &args);
    }

    /// Drops every packet to `port` inside the namespace: open connections stop answering
    /// and new ones never complete their handshake.
    pub fn drop_traffic_to(&self, port: u16) {
        let port_text = port.to_string();
        self.exec(&[
            "iptables", "-I", "INPUT", "-p", "tcp", "--dport", &port_text, "-j", "DROP",
        ]);
        self.dropped_ports.lock().expect("not poisoned").push(port);
    }

    /// Lets traffic to `port` through again.
    pub fn lift_drop(&self, port: u16) {
        let port_text = port.to_string();
        self.exec(&[
            "iptables", "-D", "INPUT", "-p", "tcp", "--dport", &port_text, "-j", "DROP",
        ]);
        self.dropped_ports
            .lock()
            .expect("not poisoned")
            .retain(|dropped| *dropped != port);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the veth pair, and with it the host's.
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Redis,
    Postgres,
    Tansu,
}

/// One server process of a test's own, on loopback or in a [`Netns`].
#[derive(Debug)]
pub struct OwnServer {
    kind: Kind,
    ip: IpAddr,
    pub port: u16,
    netns: Option<String>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl OwnServer {
    /// A Redis that keeps nothing on disk (as the shared one): a restart empties it.
    pub async fn redis(netns: Option<&Netns>) -> OwnServer {
        OwnServer::start_new(Kind::Redis, netns).await
    }

    /// A PostgreSQL cluster of its own, made with `initdb` (trust authentication).
    pub async fn postgres(netns: Option<&Netns>) -> OwnServer {
        OwnServer::start_new(Kind::Postgres, netns).await
    }

    /// A tansu broker whose topics, offsets and groups live in a SQLite file, so that they
    /// outlive a restart.
    pub async fn kafka(netns: Option<&Netns>) -> OwnServer {
        OwnServer::start_new(Kind::Tansu, netns).await
    }

    async fn start_new(kind: Kind, netns: Option<&Netns>) -> OwnServer {
        let ip = netns.map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |ns| {
            IpAddr::V4(ns.inside_ip)
        });
        let port = crate::free_port();
        let dir = tempfile::tempdir().expect("a folder for the server");
        let mut server = OwnServer {
            kind,
            ip,
            port,
            netns: netns.map(|ns| ns.name.clone()),
            dir,
            child: None,
        };
        if kind == Kind::Postgres {
            server.init_postgres();
        }
        server.start().await;
        server
    }

    pub fn address(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }

    /// `redis://…`, `postgres://…/postgres` or the broker list, as qrpool's settings want it.
    pub fn url(&self) -> String {
        match self.kind {
            Kind::Redis => format!("redis://{}", self.address()),
            Kind::Postgres => format!("postgres://postgres@{}/postgres", self.address()),
            Kind::Tansu => self.address().to_string(),
        }
    }

    fn postgres_bin(program: &str) -> PathBuf {
        if let Ok(dir) = std::env::var("QRPOOL_TEST_POSTGRES_BIN") {
            return Path::new(&dir).join(program);
        }
        let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
            .expect(
                "PostgreSQL's server binaries in /usr/lib/postgresql (or QRPOOL_TEST_POSTGRES_BIN)",
            )
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        versions.sort_unstable();
        let version = versions.last().expect("a PostgreSQL version installed");
        PathBuf::from(format!("/usr/lib/postgresql/{version}/bin/{program}"))
    }

    /// PostgreSQL refuses to run as root; as root, its folder and process belong to the
    /// `postgres` user.
    fn postgres_user() -> Option<(u32, u32)> {
        if !is_root() {
            return None;
        }
        let id = |flag: &str| -> u32 {
            let output = Command::new("id")
                .args([flag, "postgres"])
                .output()
                .expect("id postgres");
            String::from_utf8_lossy(&output.stdout)
                .trim()
                .parse()
                .expect("the postgres user exists (Debian's postgresql package makes it)")
        };
        Some((id("-u"), id("-g")))
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn init_postgres(&self) {
        let user = Self::postgres_user();
        if let Some((uid, gid)) = user {
            run(
                "chown",
                &[&format!("{uid}:{gid}"), &self.dir.path().to_string_lossy()],
            );
        }
        let mut initdb = Command::new(Self::postgres_bin("initdb"));
        initdb
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(self.data_dir())
            .stdout(Stdio::null());
        if let Some((uid, gid)) = user {
            initdb.uid(uid).gid(gid);
        }
        let status = initdb.status().expect("run initdb");
        assert!(status.success(), "initdb failed");
        // Clients come from the host's end of a veth pair too, not only from loopback.
        let hba = self.data_dir().join("pg_hba.conf");
        let mut rules = std::fs::read_to_string(&hba).expect("pg_hba.conf");
        rules.push_str("\nhost all all 0.0.0.0/0 trust\n");
        std::fs::write(&hba, rules).expect("write pg_hba.conf");
    }

    fn command(&self) -> Command {
        let (program, args): (String, Vec<String>) = match self.kind {
            Kind::Redis => (
                "redis-server".into(),
                [
                    "--bind",
                    &self.ip.to_string(),
                    "--port",
                    &self.port.to_string(),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--protected-mode",
                    "no",
                ]
                .map(str::to_owned)
                .to_vec(),
            ),
            Kind::Postgres => (
                Self::postgres_bin("postgres")
                    .to_string_lossy()
                    .into_owned(),
                vec![
                    "-D".into(),
                    self.data_dir().to_string_lossy().into_owned(),
                    "-p".into(),
                    self.port.to_string(),
                    "-k".into(),
                    self.dir.path().to_string_lossy().into_owned(),
                    "-c".into(),
                    format!("listen_addresses={}", self.ip),
                ],
            ),
            Kind::Tansu => {
                let listener = format!("tcp://{}", self.address());
                (
                    tansu_binary(),
                    vec![
                        "broker".into(),
                        "--storage-engine".into(),
                        "sqlite://tansu.db".into(),
                        "--listener-url".into(),
                        listener.clone(),
                        "--advertised-listener-url".into(),
                        listener,
                    ],
                )
            }
        };
        let mut command = match &self.netns {
            // `ip netns exec` enters the namespace and execs the program: the child is the
            // server itself, so a signal to it reaches the server.
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]);
                if self.kind == Kind::Postgres
                    && let Some((uid, gid)) = Self::postgres_user()
                {
                    command.args([
                        "setpriv",
                        &format!("--reuid={uid}"),
                        &format!("--regid={gid}"),
                        "--clear-groups",
                    ]);
                }
                command.arg(program).args(args);
                command
            }
            None => {
                let mut command = Command::new(program);
                command.args(args);
                if self.kind == Kind::Postgres
                    && let Some((uid, gid)) = Self::postgres_user()
                {
                    command.uid(uid).gid(gid);
                }
                command
            }
        };
        command
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        command
    }

    /// Starts the server and waits until it accepts connections.
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "{:?} is running already", self.kind);
        self.child = Some(self.command().spawn().expect("start the server"));
        let address = self.address();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                panic!("{:?} exited at start: {status}", self.kind);
            }
            if tokio::time::timeout(Duration::from_secs(2), self.answers())
                .await
                .unwrap_or(false)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("{:?} did not answer on {address} within 60 s", self.kind);
    }

    /// Whether the server answers as a client needs it to. A listening port is not enough:
    /// PostgreSQL accepts connections while it is still starting up and refuses them with
    /// "the database system is starting up" (57P03).
    async fn answers(&self) -> bool {
        match self.kind {
            Kind::Postgres => {
                use sqlx::Connection as _;
                match sqlx::PgConnection::connect(&self.url()).await {
                    Ok(connection) => {
                        let _ = connection.close().await;
                        true
                    }
                    Err(_) => false,
                }
            }
            Kind::Redis => match redis::Client::open(self.url()) {
                Ok(client) => match client.get_multiplexed_async_connection().await {
                    Ok(mut connection) => redis::cmd("PING")
                        .query_async::<String>(&mut connection)
                        .await
                        .is_ok(),
                    Err(_) => false,
                },
                Err(_) => false,
            },
            Kind::Tansu => tokio::net::TcpStream::connect(self.address()).await.is_ok(),
        }
    }

    /// Stops the server as an operator's restart does (Redis and tansu: SIGTERM; PostgreSQL:
    /// SIGINT, its fast shutdown) and waits until it has exited; killed after 30 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let signal = match self.kind {
            Kind::Postgres => "-INT",
            Kind::Redis | Kind::Tansu => "-TERM",
        };
        let _ = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
