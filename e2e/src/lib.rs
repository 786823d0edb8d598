//! A test harness that runs the real service binaries as separate processes, each on its
//! own port, against a real NATS JetStream and a real database (SQLite files in a temp
//! folder, or fresh PostgreSQL databases), and talks to them over gRPC sockets.
//!
//! Isolation: every cluster has its own event namespace (so its own streams and
//! subjects), its own databases and its own folder; all are removed when it is dropped,
//! even when the test panics (then the service logs are printed first).
//!
//! The binaries must be built first (`cargo build --bins`; `make test` does it).
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used)] // a test harness: a failed set-up should fail loudly

pub mod bench;
pub mod envoy;
pub mod otlp;
pub mod prod;
pub mod upstream;

use async_nats::jetstream;
use chrono::NaiveDate;
use futures::StreamExt;
use parking_common::identity::Role;
use parking_proto::v1 as pb;
use prost::Message;
use sea_orm::{ConnectionTrait, Database};
use std::collections::HashMap;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};
use tonic::transport::Channel;

pub use pb::event_envelope::Payload;

/// The database the services run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// One of the four services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Svc {
    Reservation,
    ParkingLot,
    Delivery,
    Status,
}

impl Svc {
    pub const ALL: [Svc; 4] = [
        Svc::Reservation,
        Svc::ParkingLot,
        Svc::Delivery,
        Svc::Status,
    ];

    pub fn binary(self) -> &'static str {
        match self {
            Svc::Reservation => "reservation",
            Svc::ParkingLot => "parking-lot",
            Svc::Delivery => "delivery",
            Svc::Status => "status",
        }
    }
}

/// NATS (`NATS_URL`) and the PostgreSQL server (`TEST_POSTGRES_URL`) tests use: the same
/// as the in-process tests'.
pub use parking_common::testing::{nats_url, postgres_admin_url};

/// Where the built binaries are.
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PARKING_BIN_DIR") {
        return dir.into();
    }
    // target/<profile>/deps/<test binary> -> target/<profile>; a binary of this crate
    // (local-cluster) sits in target/<profile> itself.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    if dir.ends_with("deps") {
        dir.parent().unwrap().to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// A built binary with a clean environment, no stdin, killed when dropped.
fn binary(name: &str) -> Command {
    let bin = bin_dir().join(name);
    assert!(
        bin.exists(),
        "{} not found: build the binaries first (cargo build --bins, as make test does)",
        bin.display()
    );
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// A free TCP port on loopback for a service to take. Chosen at random below the kernel's
/// ephemeral range (32768 and up), so neither outgoing connections nor another test's
/// port-0 bind can take it between our check and the service's bind, even while the
/// service is stopped for a restart. Test processes run side by side (nextest), so each
/// port is also leased through a file created exclusively under the temp dir: no two
/// tests get the same port while both hold it. Leases older than ten minutes (longer than
/// any test) are stale.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let leases = std::env::temp_dir().join("parking-e2e-ports");
    let _ = std::fs::create_dir_all(&leases);
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let port = 20_000 + (h.finish() % 12_000) as u16;
        let lease = leases.join(port.to_string());
        let stale = std::fs::metadata(&lease)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > Duration::from_secs(600)));
        if stale {
            let _ = std::fs::remove_file(&lease);
        }
        let leased = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lease)
            .is_ok();
        if leased && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Today in the car park's default time zone, and days after it.
pub fn day(offset: u64) -> String {
    let today: NaiveDate = chrono::Utc::now()
        .with_timezone(&chrono_tz::Asia::Seoul)
        .date_naive();
    (today + chrono::Days::new(offset))
        .format("%Y-%m-%d")
        .to_string()
}

/// Yesterday in the car park's default time zone.
pub fn yesterday() -> String {
    let today: NaiveDate = chrono::Utc::now()
        .with_timezone(&chrono_tz::Asia::Seoul)
        .date_naive();
    (today - chrono::Days::new(1))
        .format("%Y-%m-%d")
        .to_string()
}

/// Options of a cluster.
#[derive(Debug, Clone)]
pub struct Options {
    pub max_parking: i32,
    /// Deadline of parking-lot's CancelDelivery call.
    pub delivery_timeout_ms: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_parking: 5,
            delivery_timeout_ms: 1000,
        }
    }
}

/// The four services (and any extra replicas) of one test.
pub struct Cluster {
    pub backend: Backend,
    /// Event namespace: subjects `<ns>.<context>.<Event>`, streams `<NS>_<CONTEXT>`.
    pub namespace: String,
    pub options: Options,
    folder: PathBuf,
    ports: HashMap<Svc, u16>,
    databases: HashMap<Svc, String>,
    pg_databases: Vec<String>,
    processes: Vec<(Svc, Child)>,
    started: usize,
    /// The /metrics port of the latest process of each service.
    metrics_ports: HashMap<Svc, u16>,
    /// Gateway processes.
    gateways: Vec<Child>,
    /// The gateway every service trusts: its JWK set checks tokens, its token endpoint
    /// gives parking-lot its own (started before the first service).
    auth_gateway: Option<u16>,
    /// With mTLS between the processes: the folder of the local CA's files.
    tls: Option<PathBuf>,
    /// Extra environment for every process of a service (e.g. MESH_CONFIG).
    extra_env: HashMap<Svc, Vec<(String, String)>>,
    /// Where the gateway sends the community service's calls (a port of its own, which
    /// local-cluster's caller starts that service on).
    community_port: u16,
    pub js: jetstream::Context,
}

impl Cluster {
    /// Starts all four services and waits until each answers its health check.
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, Options::default()).await
    }

    pub async fn start_with(backend: Backend, options: Options) -> Self {
        let mut cluster = Self::prepare(backend, options).await;
        for svc in Svc::ALL {
            cluster.start_service(svc).await;
        }
        cluster
    }

    /// Starts all four services, and the gateway they trust, with extra environment for
    /// every one of them (OTEL_*, LOG_FORMAT, ...).
    pub async fn start_with_env(backend: Backend, env: &[(&str, &str)]) -> Self {
        let mut cluster = Self::prepare(backend, Options::default()).await;
        let port = cluster.start_gateway_with(env).await;
        cluster.auth_gateway = Some(port);
        for svc in Svc::ALL {
            for (key, value) in env {
                cluster.set_env(svc, key, value);
            }
            cluster.start_service(svc).await;
        }
        cluster
    }

    /// Sets up namespace, ports and databases without starting anything.
    pub async fn prepare(backend: Backend, options: Options) -> Self {
        let namespace = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let client = async_nats::connect(nats_url())
            .await
            .expect("NATS must be running (NATS_URL)");
        let folder = std::env::temp_dir().join(format!("parking-e2e-{namespace}"));
        std::fs::create_dir_all(&folder).unwrap();
        let mut databases = HashMap::new();
        let mut pg_databases = Vec::new();
        for svc in Svc::ALL {
            let url = match backend {
                Backend::Sqlite => {
                    format!("sqlite://{}/{}.db?mode=rwc", folder.display(), svc.binary())
                }
                Backend::Postgres => {
                    let name = format!("pm_{namespace}_{}", svc.binary().replace('-', "_"));
                    let admin = Database::connect(postgres_admin_url()).await.expect(
                        "PostgreSQL must be running for the postgres tests (TEST_POSTGRES_URL)",
                    );
                    admin
                        .execute_unprepared(&format!("CREATE DATABASE {name}"))
                        .await
                        .unwrap();
                    admin.close().await.ok();
                    pg_databases.push(name.clone());
                    let admin_url = postgres_admin_url();
                    let base = admin_url
                        .rsplit_once('/')
                        .map(|(b, _)| b.to_owned())
                        .unwrap();
                    format!("{base}/{name}")
                }
            };
            databases.insert(svc, url);
        }
        let ports = Svc::ALL.into_iter().map(|s| (s, free_port())).collect();
        Self {
            backend,
            namespace,
            options,
            folder,
            ports,
            databases,
            pg_databases,
            processes: Vec::new(),
            started: 0,
            metrics_ports: HashMap::new(),
            gateways: Vec::new(),
            auth_gateway: None,
            tls: None,
            extra_env: HashMap::new(),
            community_port: free_port(),
            js: jetstream::new(client),
        }
    }

    /// Turns on mTLS between every process started from now on (a local CA in the
    /// cluster's folder; `https://` between services; tests call with the `operator`
    /// certificate).
    pub fn enable_mtls(&mut self) {
        let dir = self.folder.join("tls");
        let mut names: Vec<&str> = Svc::ALL.iter().map(|s| s.binary()).collect();
        names.extend(["gateway", "operator"]);
        parking_common::tls::write_local_ca(&dir, &names).unwrap();
        self.tls = Some(dir);
    }

    /// The folder of the local CA's files, when mTLS is on.
    pub fn tls_dir(&self) -> Option<&Path> {
        self.tls.as_deref()
    }

    /// TLS as process `name` uses it (None without mTLS).
    pub fn client_tls(&self, name: &str) -> Option<tonic::transport::ClientTlsConfig> {
        let dir = self.tls.as_ref()?;
        let tls = parking_common::tls::Tls::load(&parking_common::tls::local_files(dir, name));
        tls.unwrap().map(|t| t.client())
    }

    /// How a service's URL starts.
    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The TLS_* settings of process `name`.
    fn tls_env(&self, cmd: &mut Command, name: &str) {
        if let Some(dir) = &self.tls {
            let files = parking_common::tls::local_files(dir, name);
            for (key, path) in [
                ("TLS_CERT_FILE", files.tls_cert_file),
                ("TLS_KEY_FILE", files.tls_key_file),
                ("TLS_CA_FILE", files.tls_ca_file),
            ] {
                cmd.env(key, path.unwrap());
            }
        }
    }

    pub fn port(&self, svc: Svc) -> u16 {
        self.ports[&svc]
    }

    pub fn database_url(&self, svc: Svc) -> &str {
        &self.databases[&svc]
    }

    /// Sets an environment variable for every later start of `svc`.
    pub fn set_env(&mut self, svc: Svc, key: &str, value: &str) {
        self.extra_env
            .entry(svc)
            .or_default()
            .push((key.to_owned(), value.to_owned()));
    }

    /// The folder of this cluster (for files a test writes).
    pub fn folder(&self) -> &Path {
        &self.folder
    }

    /// The text of a service's `/metrics` page.
    pub async fn metrics(&self, svc: Svc) -> String {
        metrics_at(self.metrics_ports[&svc]).await
    }

    fn command(&self, svc: Svc, port: u16, nats: &str, metrics_port: u16) -> Command {
        let gateway = self.auth_gateway.expect("the auth gateway starts first");
        let mut cmd = binary(svc.binary());
        cmd.env(
            "JWKS_URL",
            format!("http://127.0.0.1:{gateway}/.well-known/jwks.json"),
        );
        if svc == Svc::ParkingLot {
            cmd.env(
                "TOKEN_URL",
                format!("http://127.0.0.1:{gateway}/oauth2/token"),
            )
            .env("CLIENT_ID", SERVICE_CLIENT)
            .env("CLIENT_SECRET_FILE", self.service_secret_file());
        }
        cmd.env("RUST_LOG", "info,sqlx=warn,sea_orm=warn,async_nats=warn")
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("DATABASE_URL", self.database_url(svc))
            .env("NATS_URL", nats)
            .env("EVENT_NAMESPACE", &self.namespace)
            .env("MAX_PARKING", self.options.max_parking.to_string())
            .env(
                "DELIVERY_URL",
                format!("{}://127.0.0.1:{}", self.scheme(), self.port(Svc::Delivery)),
            )
            .env(
                "DELIVERY_TIMEOUT_MS",
                self.options.delivery_timeout_ms.to_string(),
            )
            .env("METRICS_LISTEN", format!("127.0.0.1:{metrics_port}"))
            .envs(self.extra_env.get(&svc).cloned().unwrap_or_default());
        self.tls_env(&mut cmd, svc.binary());
        cmd
    }

    /// Runs `cmd` with its output in this cluster's folder and waits until the process
    /// answers its health check on `port` while alive; fails at once if it dies.
    async fn launch(&mut self, name: &str, mut cmd: Command, port: u16) -> Child {
        // The gateway's own port faces callers: plain; a service's is mTLS when on.
        let tls = if name == "gateway" {
            None
        } else {
            self.client_tls("operator")
        };
        self.started += 1;
        let log = self.folder.join(format!("{name}-{}.log", self.started));
        let file = std::fs::File::create(&log).unwrap();
        let mut child = cmd
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let healthy = wait_healthy_on(port, tls.clone(), Duration::from_millis(500))
                .await
                .is_ok();
            let exited = child.try_wait().ok().flatten();
            // Healthy and still ours (not some other process that answers on the port).
            if healthy && exited.is_none() {
                return child;
            }
            if exited.is_some() || tokio::time::Instant::now() > deadline {
                self.dump_logs();
                panic!("{name} did not become healthy on port {port} (exit: {exited:?})");
            }
        }
    }

    /// Starts (another process of) a service on its port, waiting until it is healthy.
    pub async fn start_service(&mut self, svc: Svc) {
        let port = self.port(svc);
        self.spawn(svc, port, &nats_url()).await;
    }

    /// Starts an extra replica of a service on a port of its own (sharing its database).
    pub async fn start_replica(&mut self, svc: Svc) -> u16 {
        let port = free_port();
        self.spawn(svc, port, &nats_url()).await;
        port
    }

    /// Starts a service that cannot reach NATS (a port where nothing listens).
    pub async fn start_without_nats(&mut self, svc: Svc) {
        let port = self.port(svc);
        let nowhere = format!("nats://127.0.0.1:{}", free_port());
        self.spawn(svc, port, &nowhere).await;
    }

    async fn spawn(&mut self, svc: Svc, port: u16, nats: &str) {
        self.auth_gateway().await;
        let metrics_port = free_port();
        self.metrics_ports.insert(svc, metrics_port);
        let cmd = self.command(svc, port, nats, metrics_port);
        let child = self.launch(svc.binary(), cmd, port).await;
        self.processes.push((svc, child));
    }

    /// Starts the gateway in front of the four services; returns its port.
    pub async fn start_gateway(&mut self) -> u16 {
        self.start_gateway_with(&[]).await
    }

    /// The port of the gateway the services trust, started on first use.
    pub async fn auth_gateway(&mut self) -> u16 {
        if let Some(port) = self.auth_gateway {
            return port;
        }
        let port = self.start_gateway().await;
        self.auth_gateway = Some(port);
        port
    }

    /// The port the gateway sends community calls to.
    pub fn community_port(&self) -> u16 {
        self.community_port
    }

    /// The file holding parking-lot's client secret.
    fn service_secret_file(&self) -> PathBuf {
        let path = self.folder.join("parking-lot.secret");
        if !path.exists() {
            std::fs::write(&path, password_of(SERVICE_CLIENT)).unwrap();
        }
        path
    }

    /// A token of the cluster's gateway key for anyone, valid for an hour.
    pub fn token(&self, subject: &str, role: Role) -> String {
        self.gateway_tokens().issue(subject, role).unwrap()
    }

    /// The gateway's accounts file (written once per cluster): see [`USERS`].
    pub fn accounts_file(&self) -> PathBuf {
        let path = self.folder.join("accounts.yaml");
        if !path.exists() {
            let mut accounts = gateway::users::Accounts::default();
            for (name, role) in USERS {
                accounts
                    .set(false, name, role.parse().unwrap(), &password_of(name))
                    .unwrap();
            }
            accounts
                .set(true, "ops-bot", Role::Manager, &password_of("ops-bot"))
                .unwrap();
            accounts
                .set(
                    true,
                    SERVICE_CLIENT,
                    Role::Service,
                    &password_of(SERVICE_CLIENT),
                )
                .unwrap();
            accounts.save(&path).unwrap();
        }
        path
    }

    /// The key the gateway signs with (written once per cluster), so tests can sign
    /// tokens that are genuine but expired or addressed elsewhere.
    pub fn token_key_file(&self) -> PathBuf {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let path = self.folder.join("token-key.pem");
        if !path.exists() {
            let a = uuid::Uuid::new_v4();
            let b = uuid::Uuid::new_v4();
            let mut seed = [0u8; 32];
            seed[..16].copy_from_slice(a.as_bytes());
            seed[16..].copy_from_slice(b.as_bytes());
            let pem = ed25519_dalek::SigningKey::from_bytes(&seed)
                .to_pkcs8_pem(Default::default())
                .unwrap();
            std::fs::write(&path, pem.as_bytes()).unwrap();
        }
        path
    }

    /// The gateway's key with the gateway's issuer and audience, for signing test tokens.
    pub fn gateway_tokens(&self) -> gateway::tokens::Tokens {
        gateway::tokens::Tokens::from_pem_file(
            &self.token_key_file(),
            "parking-mesh",
            "parking-mesh",
            Duration::from_secs(3600),
        )
        .unwrap()
    }

    /// Starts the gateway with extra settings.
    pub async fn start_gateway_with(&mut self, env: &[(&str, &str)]) -> u16 {
        let port = free_port();
        let accounts = self.accounts_file();
        let key = self.token_key_file();
        let url = |svc: Svc| format!("{}://127.0.0.1:{}", self.scheme(), self.port(svc));
        let mut cmd = binary("gateway");
        cmd.env("RUST_LOG", "info")
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("METRICS_LISTEN", "off")
            .env("RESERVATION_URL", url(Svc::Reservation))
            .env("PARKING_LOT_URL", url(Svc::ParkingLot))
            .env("DELIVERY_URL", url(Svc::Delivery))
            .env("STATUS_URL", url(Svc::Status))
            // The community service (Python) is not part of these clusters: its calls find
            // nothing listening there, as when a deployment runs without it.
            .env(
                "COMMUNITY_URL",
                format!("{}://127.0.0.1:{}", self.scheme(), self.community_port),
            )
            .env("ACCOUNTS_FILE", accounts)
            .env("TOKEN_KEY_FILE", key)
            // The pipeline /status reports is this cluster's, not whatever else the NATS
            // server holds under the default namespace.
            .env("EVENT_NAMESPACE", &self.namespace)
            .envs(env.iter().copied());
        self.tls_env(&mut cmd, "gateway");
        let child = self.launch("gateway", cmd, port).await;
        self.gateways.push(child);
        port
    }

    /// Process ids of the gateways started, oldest first (memory readings, signals).
    pub fn gateway_pids(&self) -> Vec<u32> {
        self.gateways.iter().filter_map(Child::id).collect()
    }

    /// Process ids of a service's running processes (signals such as SIGSTOP).
    pub fn pids(&self, svc: Svc) -> Vec<u32> {
        self.processes
            .iter()
            .filter(|(s, _)| *s == svc)
            .filter_map(|(_, child)| child.id())
            .collect()
    }

    /// Stops every process of a service gracefully (SIGTERM) and waits for it.
    pub async fn stop_service(&mut self, svc: Svc) {
        self.stop_where(svc, "-TERM").await;
    }

    /// Kills every process of a service at once (SIGKILL): no shutdown work at all.
    pub async fn kill_service(&mut self, svc: Svc) {
        self.stop_where(svc, "-KILL").await;
    }

    async fn stop_where(&mut self, svc: Svc, signal: &str) {
        let (matching, rest): (Vec<_>, Vec<_>) =
            self.processes.drain(..).partition(|(s, _)| *s == svc);
        self.processes = rest;
        for (_, mut child) in matching {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .arg(signal)
                    .arg(pid.to_string())
                    .status();
            }
            match tokio::time::timeout(Duration::from_secs(20), child.wait()).await {
                Ok(status) => {
                    let status = status.unwrap();
                    if signal == "-TERM" {
                        assert!(
                            status.success(),
                            "{} exited with {status} on SIGTERM",
                            svc.binary()
                        );
                    }
                }
                Err(_) => panic!("{} did not stop within 20 s of {signal}", svc.binary()),
            }
        }
    }

    /// A channel straight to a service as an operator (an admin's token): tests drive
    /// the services directly, with a credential like every caller.
    async fn channel(&self, svc: Svc) -> AuthChannel {
        let token = self.token("operator", Role::Admin);
        let channel = match self.client_tls("operator") {
            Some(tls) => tls_channel(self.port(svc), tls),
            None => channel(self.port(svc)).await,
        };
        tonic::service::interceptor::InterceptedService::new(channel, Bearer::new(Some(&token)))
    }

    pub async fn reservation(
        &self,
    ) -> pb::ticket_reservation_service_client::TicketReservationServiceClient<AuthChannel> {
        pb::ticket_reservation_service_client::TicketReservationServiceClient::new(
            self.channel(Svc::Reservation).await,
        )
    }

    pub async fn parking_lot(
        &self,
    ) -> pb::parking_lot_service_client::ParkingLotServiceClient<AuthChannel> {
        pb::parking_lot_service_client::ParkingLotServiceClient::new(
            self.channel(Svc::ParkingLot).await,
        )
    }

    pub async fn delivery(
        &self,
    ) -> pb::ticket_delivery_service_client::TicketDeliveryServiceClient<AuthChannel> {
        pb::ticket_delivery_service_client::TicketDeliveryServiceClient::new(
            self.channel(Svc::Delivery).await,
        )
    }

    pub async fn status(
        &self,
    ) -> pb::reservation_status_service_client::ReservationStatusServiceClient<AuthChannel> {
        pb::reservation_status_service_client::ReservationStatusServiceClient::new(
            self.channel(Svc::Status).await,
        )
    }

    /// Every event in a context's stream, in stream order: (subject, envelope).
    pub async fn events(&self, context: &str) -> Vec<(String, pb::EventEnvelope)> {
        let name = format!("{}_{}", self.namespace, context).to_ascii_uppercase();
        let Ok(stream) = self.js.get_stream(&name).await else {
            return Vec::new();
        };
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
            .await
            .unwrap();
        let total = stream.get_info().await.unwrap().state.messages as usize;
        let mut out = Vec::with_capacity(total);
        if total == 0 {
            return out;
        }
        let mut messages = consumer.messages().await.unwrap();
        while out.len() < total {
            let msg = tokio::time::timeout(Duration::from_secs(10), messages.next())
                .await
                .expect("stream read timed out")
                .unwrap()
                .unwrap();
            out.push((
                msg.subject.to_string(),
                pb::EventEnvelope::decode(msg.payload.as_ref()).unwrap(),
            ));
        }
        out
    }

    /// Publishes an envelope straight onto a context's stream (for ordering tests).
    pub async fn publish(&self, context: &str, envelope: &pb::EventEnvelope, event_name: &str) {
        // The services declare the streams as they start; wait for that.
        let stream = format!("{}_{}", self.namespace, context).to_ascii_uppercase();
        eventually(
            Duration::from_secs(30),
            &format!("stream {stream}"),
            || async { self.js.get_stream(&stream).await.ok().map(|_| ()) },
        )
        .await;
        let subject = format!("{}.{}.{}", self.namespace, context, event_name);
        self.js
            .publish(subject, envelope.encode_to_vec().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// Waits until a durable consumer has nothing pending and nothing unacknowledged.
    pub async fn wait_consumer_idle(&self, context: &str, durable: &str) {
        let stream = format!("{}_{}", self.namespace, context).to_ascii_uppercase();
        eventually(
            Duration::from_secs(30),
            &format!("{durable} idle"),
            || async {
                let stream = self.js.get_stream(&stream).await.ok()?;
                let mut consumer: jetstream::consumer::PullConsumer =
                    stream.get_consumer(durable).await.ok()?;
                let info = consumer.info().await.ok()?;
                (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
            },
        )
        .await
    }

    /// Prints the tail of every service log (on failure).
    pub fn dump_logs(&self) {
        let Ok(entries) = std::fs::read_dir(&self.folder) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(40)..];
                eprintln!(
                    "===== {} (last {} lines) =====\n{}",
                    path.display(),
                    tail.len(),
                    tail.join("\n")
                );
            }
        }
    }

    /// The text of every log of a service, for assertions on what it did.
    /// Every log file of this cluster (services and gateways), by file name.
    pub fn all_logs(&self) -> Vec<(String, String)> {
        let mut all = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&self.folder) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if name.ends_with(".log") {
                    all.push((
                        name,
                        std::fs::read_to_string(entry.path()).unwrap_or_default(),
                    ));
                }
            }
        }
        all
    }

    pub fn logs_of(&self, svc: Svc) -> String {
        let mut all = String::new();
        if let Ok(entries) = std::fs::read_dir(&self.folder) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if name.starts_with(&format!("{}-", svc.binary())) {
                    all.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
                }
            }
        }
        all
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if failed {
            self.dump_logs();
        }
        for (_, child) in &mut self.processes {
            let _ = child.start_kill();
        }
        for child in &mut self.gateways {
            let _ = child.start_kill();
        }
        // Clean up on a runtime of our own: Drop may run inside or outside one.
        let namespace = self.namespace.clone();
        let pg = std::mem::take(&mut self.pg_databases);
        let mut children: Vec<Child> = self.processes.drain(..).map(|(_, c)| c).collect();
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                for child in &mut children {
                    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                }
                if let Ok(client) = async_nats::connect(nats_url()).await {
                    let js = jetstream::new(client);
                    for context in ["reservation", "parkinglot", "delivery", "community"] {
                        let _ = js
                            .delete_stream(format!("{namespace}_{context}").to_ascii_uppercase())
                            .await;
                    }
                }
                if !pg.is_empty() {
                    if let Ok(admin) = Database::connect(postgres_admin_url()).await {
                        for name in pg {
                            let _ = admin
                                .execute_unprepared(&format!(
                                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                                ))
                                .await;
                        }
                    }
                }
            });
        });
        let _ = cleanup.join();
        if !failed {
            let _ = std::fs::remove_dir_all(&self.folder);
        } else {
            eprintln!("service logs kept in {}", self.folder.display());
        }
    }
}

/// The gateway's test users: login and role. Each one's password is [`password_of`].
pub const USERS: [(&str, &str); 6] = [
    ("3117", "employee"),
    ("6", "employee"),
    ("manager", "manager"),
    ("admin", "admin"),
    // Residents: the community service's evening spaces, nothing of the company's.
    ("rosa", "resident"),
    ("ravi", "resident"),
];

/// parking-lot's client id at the token endpoint (role service); its secret is
/// [`password_of`] it.
pub const SERVICE_CLIENT: &str = "parking-lot";

/// A test user's password.
pub fn password_of(name: &str) -> String {
    format!("{name}-secret-pw")
}

pub use parking_common::grpc::Bearer;

/// A channel that sends a token.
pub type AuthChannel = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

/// A channel to the gateway that sends `token` (or none).
pub async fn with_token(port: u16, token: Option<&str>) -> AuthChannel {
    let bearer = Bearer::new(token);
    tonic::service::interceptor::InterceptedService::new(channel(port).await, bearer)
}

/// One HTTP request to the gateway (HTTP/2 over the same kind of channel gRPC uses):
/// status, headers and body.
pub async fn http(
    port: u16,
    request: http::request::Builder,
    body: impl Into<bytes::Bytes>,
) -> (http::StatusCode, http::HeaderMap, bytes::Bytes) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let request = request
        .uri_ref()
        .map(|u| u.to_string())
        .map(|path| format!("http://127.0.0.1:{port}{path}"))
        .map(|uri| request.uri(uri))
        .unwrap();
    let request = request
        .body(tonic::body::Body::new(http_body_util::Full::new(
            body.into(),
        )))
        .unwrap();
    let response = channel(port).await.oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

/// A token for user `name` from the gateway's password grant.
pub async fn login(port: u16, name: &str) -> String {
    let form = serde_urlencoded::to_string([
        ("grant_type", "password"),
        ("username", name),
        ("password", &password_of(name)),
    ])
    .unwrap();
    let (status, _, body) = http(
        port,
        http::Request::post("/oauth2/token")
            .header("content-type", "application/x-www-form-urlencoded"),
        form,
    )
    .await;
    assert_eq!(
        status,
        200,
        "login of {name}: {}",
        String::from_utf8_lossy(&body)
    );
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    answer["access_token"].as_str().unwrap().to_owned()
}

/// A channel to the gateway logged in as `name`.
pub async fn gateway_as(port: u16, name: &str) -> AuthChannel {
    let token = login(port, name).await;
    with_token(port, Some(&token)).await
}

/// The text of the `/metrics` page at a local port.
pub async fn metrics_at(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    text
}

/// A channel to a local port.
pub async fn channel(port: u16) -> Channel {
    Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30))
        .connect_lazy()
}

/// A channel to a local port over mutual TLS (`localhost` in the certificates).
pub fn tls_channel(port: u16, tls: tonic::transport::ClientTlsConfig) -> Channel {
    Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30))
        .connect_lazy()
}

/// Waits up to `within` until `grpc.health.v1.Health/Check` answers SERVING.
pub async fn wait_healthy(port: u16, within: Duration) -> Result<(), String> {
    wait_healthy_on(port, None, within).await
}

/// [`wait_healthy`], over mutual TLS with `tls`.
pub async fn wait_healthy_on(
    port: u16,
    tls: Option<tonic::transport::ClientTlsConfig>,
    within: Duration,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + within;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        let channel = match &tls {
            Some(tls) => tls_channel(port, tls.clone()),
            None => channel(port).await,
        };
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        match health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
        {
            Ok(r)
                if r.get_ref().status
                    == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 =>
            {
                return Ok(())
            }
            Ok(r) => last = format!("status {:?}", r.get_ref().status),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last)
}

/// Retries `check` until it returns `Some` or `within` runs out.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Declares each named `async fn scenario(backend: Backend)` as two tests, one per
/// database: `sqlite::scenario` and `postgres::scenario`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::Backend::Postgres).await })*
        }
    };
}

/// Short helpers for requests.
pub fn reserve(member_id: i64, date: &str) -> pb::ReserveTicketRequest {
    pb::ReserveTicketRequest {
        member_id,
        reservation_date: date.to_owned(),
        request_id: String::new(),
    }
}
