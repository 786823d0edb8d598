//! A whole parking-mesh for tests written in other languages (the Python and TypeScript
//! SDKs, the community service): the four services and their gateway, on free ports,
//! with a fresh event namespace and fresh SQLite files, started from the built binaries
//! exactly as the Rust end-to-end tests start them.
//!
//! Prints one JSON line on stdout once every process answers its health check (the
//! gateway's address, the event namespace, NATS, the token endpoint, the JWK set, the test
//! accounts and their passwords), then runs until its standard input closes or it is
//! signalled, and cleans up (processes, streams, files) on the way out.
//!
//! `COMMUNITY_PORT` (default: a free port) is where the gateway sends the community
//! service's calls; the caller starts that service there itself.

use parking_e2e::{nats_url, password_of, Backend, Cluster, USERS};
use tokio::io::AsyncReadExt;

#[tokio::main]
async fn main() {
    let chosen = std::env::var("COMMUNITY_PORT")
        .ok()
        .and_then(|p| p.parse::<u16>().ok());
    let mut cluster = match chosen {
        Some(port) => {
            let url = format!("http://127.0.0.1:{port}");
            Cluster::start_with_env(Backend::Sqlite, &[("COMMUNITY_URL", &url)]).await
        }
        None => Cluster::start_with_env(Backend::Sqlite, &[]).await,
    };
    let community_port = chosen.unwrap_or(cluster.community_port());
    let gateway = cluster.auth_gateway().await;
    let users: serde_json::Map<String, serde_json::Value> = USERS
        .iter()
        .map(|(name, role)| {
            (
                (*name).to_owned(),
                serde_json::json!({ "role": role, "password": password_of(name) }),
            )
        })
        .collect();
    let ready = serde_json::json!({
        "gateway": format!("127.0.0.1:{gateway}"),
        "gateway_url": format!("http://127.0.0.1:{gateway}"),
        "token_url": format!("http://127.0.0.1:{gateway}/oauth2/token"),
        "jwks_url": format!("http://127.0.0.1:{gateway}/.well-known/jwks.json"),
        "issuer": "parking-mesh",
        "audience": "parking-mesh",
        "namespace": cluster.namespace,
        "nats_url": nats_url(),
        "community_port": community_port,
        "max_parking": cluster.options.max_parking,
        "folder": cluster.folder().display().to_string(),
        "users": users,
    });
    println!("{ready}");
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 256];
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    loop {
        tokio::select! {
            read = stdin.read(&mut sink) => if matches!(read, Ok(0) | Err(_)) { break },
            _ = tokio::signal::ctrl_c() => break,
            _ = async {
                match terminate.as_mut() {
                    Some(t) => { t.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => break,
        }
    }
    drop(cluster);
}
