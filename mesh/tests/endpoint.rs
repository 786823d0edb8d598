//! An endpoint over real sockets: it opens its HTTP/2 connection on the first call, opens
//! it again after the upstream closed it, and gives up opening after the
//! DestinationRule's `connectTimeout`.
#![allow(clippy::unwrap_used)]

use mesh::endpoint::{Endpoint, EndpointAddr};
use mesh::HopService;
use std::time::{Duration, Instant};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::ServingStatus;

/// A health server on `listener` that knows only `service`, until `stop` fires.
fn serve(
    listener: tokio::net::TcpListener,
    service: &'static str,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status(service, ServingStatus::Serving)
            .await;
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            )
            .await
            .unwrap();
    });
    (stop, server)
}

fn client(port: u16, connect_timeout: Option<Duration>) -> HealthClient<HopService<Endpoint>> {
    let addr = EndpointAddr::parse(&format!("http://127.0.0.1:{port}")).unwrap();
    let endpoint = Endpoint::new("upstream", &addr, connect_timeout, None).unwrap();
    HealthClient::new(HopService::new(endpoint))
}

async fn check(
    client: &mut HealthClient<HopService<Endpoint>>,
    service: &str,
) -> Result<i32, tonic::Status> {
    let request = HealthCheckRequest {
        service: service.into(),
    };
    client.check(request).await.map(|r| r.into_inner().status)
}

#[tokio::test]
async fn a_connection_the_upstream_closed_is_opened_again() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // The endpoint connects on its first call, not before.
    let (stop, first) = serve(listener, "first");
    let mut client = client(port, None);
    assert_eq!(
        check(&mut client, "first").await.unwrap(),
        ServingStatus::Serving as i32
    );

    // The upstream goes away (a graceful shutdown sends GOAWAY and closes the
    // connection), and a new one takes its port.
    stop.send(()).unwrap();
    first.await.unwrap();
    let down = check(&mut client, "first")
        .await
        .expect_err("nobody listens");
    assert_eq!(down.code(), tonic::Code::Unavailable, "{down:?}");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let (_stop, _second) = serve(listener, "second");

    // Only the new server knows "second": an answer proves a new connection.
    assert_eq!(
        check(&mut client, "second").await.unwrap(),
        ServingStatus::Serving as i32
    );
    for _ in 0..10 {
        check(&mut client, "second").await.unwrap();
    }
}

#[tokio::test]
async fn a_connection_that_does_not_open_within_the_connect_timeout_fails_the_try() {
    // A listener that never accepts, with its queue of connections full: the kernel
    // drops further SYNs, so a connect hangs as to a host that does not answer.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut queued = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        {
            Ok(Ok(stream)) => queued.push(stream),
            _ => break,
        }
    }

    let mut client = client(port, Some(Duration::from_millis(300)));
    let started = Instant::now();
    // Bounded, so a connect the kernel completes after all fails the test, not hangs it.
    let failed = tokio::time::timeout(Duration::from_secs(5), check(&mut client, ""))
        .await
        .expect("the try ends within its connect timeout")
        .expect_err("no connection");
    let took = started.elapsed();
    assert_eq!(failed.code(), tonic::Code::Unavailable, "{failed:?}");
    assert!(
        failed.message().contains("no connection within 300ms"),
        "{failed:?}"
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "failed after {took:?}"
    );
    drop(listener);
}
