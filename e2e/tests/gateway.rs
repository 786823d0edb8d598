//! The gateway as the single entry point: the seed's scenario over gRPC through port
//! 8080's stand-in only (streaming included), each step by the role that does it in the
//! seed (admin, employee, manager), reflection listing every service, rate limits, a
//! browser's gRPC-Web call with CORS, and a backend that is down answered with a readable
//! UNAVAILABLE.
#![allow(clippy::unwrap_used)]

use futures::StreamExt;
use parking_e2e::{channel, day, gateway_as, login, reserve, Backend, Cluster, Svc};
use parking_proto::v1 as pb;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_scenario_through_the_gateway_only() {
    let mut c = Cluster::start(Backend::Sqlite).await;
    let port = c.start_gateway().await;
    let (employee, manager, admin) = (
        gateway_as(port, "3117").await,
        gateway_as(port, "manager").await,
        gateway_as(port, "admin").await,
    );
    let mut reservations =
        pb::ticket_reservation_service_client::TicketReservationServiceClient::new(
            employee.clone(),
        );
    let mut lot = pb::parking_lot_service_client::ParkingLotServiceClient::new(employee.clone());
    let mut deliveries =
        pb::ticket_delivery_service_client::TicketDeliveryServiceClient::new(manager);
    let mut status =
        pb::reservation_status_service_client::ReservationStatusServiceClient::new(employee);

    let date = day(3);
    pb::parking_lot_service_client::ParkingLotServiceClient::new(admin.clone())
        .set_daily_capacity(pb::SetDailyCapacityRequest {
            date: date.clone(),
            capacity: 2,
        })
        .await
        .unwrap();
    let r = reservations
        .reserve_ticket(reserve(3117, &date))
        .await
        .unwrap()
        .into_inner();
    // Follow it on the server stream, through the gateway.
    let mut watch = status
        .watch_reservation_status(pb::WatchReservationStatusRequest {
            reservation_id: r.id,
        })
        .await
        .unwrap()
        .into_inner();
    let mut delivery_id = 0;
    while let Ok(Some(update)) = tokio::time::timeout(Duration::from_secs(30), watch.next()).await {
        let update = update.unwrap();
        if update.stage() == pb::ReservationStage::StageDeliveryRequested {
            delivery_id = update.ticket_delivery_id;
            break;
        }
    }
    assert!(delivery_id > 0, "the watch reached DELIVERY_REQUESTED");
    let shipped = deliveries
        .ship_ticket(pb::ShipTicketRequest { delivery_id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shipped.state(), pb::DeliveryState::DeliveryShipped);
    let got = reservations
        .get_reservation(pb::GetReservationRequest { id: r.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.state(), pb::ReservationState::Confirmed);
    let a = lot
        .get_daily_availability(pb::GetDailyAvailabilityRequest { date: date.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((a.capacity, a.occupied), (2, 1));
    // Errors come through unchanged.
    let err = pb::ticket_reservation_service_client::TicketReservationServiceClient::new(admin)
        .reserve_ticket(reserve(0, &date))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("member_id"), "{err:?}");

    // A backend down: UNAVAILABLE with a message, the others unaffected.
    c.stop_service(Svc::ParkingLot).await;
    let err = lot
        .get_daily_availability(pb::GetDailyAvailabilityRequest { date: date.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("parking-lot"), "{err:?}");
    reservations
        .get_reservation(pb::GetReservationRequest { id: r.id })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_through_the_gateway_lists_every_service() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let mut c = Cluster::start(Backend::Sqlite).await;
    // Reflection needs no token: it describes the API, it is not the API.
    let gw = channel(c.start_gateway().await).await;
    let mut client = ServerReflectionClient::new(gw);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for service in [
        "parking.v1.TicketReservationService",
        "parking.v1.ParkingLotService",
        "parking.v1.TicketDeliveryService",
        "parking.v1.ReservationStatusService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&service), "{service} missing from {names:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_above_the_rate_limit_is_refused_and_normal_traffic_is_not() {
    let mut c = Cluster::start(Backend::Sqlite).await;
    let port = c
        .start_gateway_with(&[("RATE_LIMIT_PER_ADDR", "5"), ("RATE_LIMIT_BURST", "5")])
        .await;
    let gw = gateway_as(port, "admin").await;
    let client = pb::ticket_reservation_service_client::TicketReservationServiceClient::new(gw);
    let calls = (0..30).map(|_| {
        let mut client = client.clone();
        async move {
            client
                .get_reservation(pb::GetReservationRequest { id: 999_999 })
                .await
                .unwrap_err()
        }
    });
    let refusals = futures::future::join_all(calls).await;
    let exhausted: Vec<_> = refusals
        .iter()
        .filter(|s| s.code() == tonic::Code::ResourceExhausted)
        .collect();
    assert!(
        exhausted.len() >= 20,
        "only {} of 30 refused",
        exhausted.len()
    );
    assert!(
        refusals.iter().any(|s| s.code() == tonic::Code::NotFound),
        "the burst allowance went through"
    );
    assert!(
        exhausted[0].message().contains("rate limit"),
        "{:?}",
        exhausted[0]
    );
    assert!(
        exhausted[0].metadata().get("retry-after").is_some(),
        "{:?}",
        exhausted[0]
    );

    // Traffic under the limit (about 3 calls a second against 5) is never refused.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..8 {
        let status = client
            .clone()
            .get_reservation(pb::GetReservationRequest { id: 999_999 })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A gRPC-Web call as a browser sends it: HTTP/1.1, `application/grpc-web+proto`, one
/// length-prefixed message; the answer's message frame and trailer frame read byte by byte.
async fn grpc_web(port: u16, token: &str, path: &str, message: &[u8]) -> (String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message);
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/grpc-web+proto\r\n\
         Accept: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\nOrigin: http://app.example\r\n\
         Authorization: Bearer {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer")
        + 4;
    let headers = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    let mut payload = raw[split..].to_vec();
    if headers.contains("transfer-encoding: chunked") {
        // De-chunk: "<hex size>\r\n<bytes>\r\n" ... "0\r\n\r\n".
        let mut out = Vec::new();
        let mut rest = &payload[..];
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap().trim(), 16)
                .unwrap();
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
            rest = &rest[eol + 2 + size + 2..];
        }
        payload = out;
    }
    (headers, payload)
}

/// Splits a gRPC-Web body into (message frames, trailer text).
fn frames(mut body: &[u8]) -> (Vec<Vec<u8>>, String) {
    let (mut messages, mut trailers) = (Vec::new(), String::new());
    while body.len() >= 5 {
        let flag = body[0];
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        let frame = &body[5..5 + len];
        if flag & 0x80 != 0 {
            trailers.push_str(&String::from_utf8_lossy(frame).to_lowercase());
        } else {
            messages.push(frame.to_vec());
        }
        body = &body[5 + len..];
    }
    (messages, trailers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_style_grpc_web_call_works() {
    use prost::Message;
    let mut c = Cluster::start(Backend::Sqlite).await;
    let port = c.start_gateway().await;
    let token = login(port, "3117").await;
    let request = pb::ReserveTicketRequest {
        member_id: 3117,
        reservation_date: day(2),
        request_id: "web-1".into(),
    };
    let (headers, body) = grpc_web(
        port,
        &token,
        "/parking.v1.TicketReservationService/ReserveTicket",
        &request.encode_to_vec(),
    )
    .await;
    assert!(headers.starts_with("http/1.1 200"), "{headers}");
    assert!(
        headers.contains("content-type: application/grpc-web+proto"),
        "{headers}"
    );
    // CORS: a page on another origin may read the answer and its gRPC status.
    assert!(
        headers.contains("access-control-allow-origin: *"),
        "{headers}"
    );
    let exposed = headers
        .lines()
        .find(|l| l.starts_with("access-control-expose-headers:"))
        .unwrap_or_default();
    assert!(exposed.contains("grpc-status"), "{headers}");
    let (messages, trailers) = frames(&body);
    assert!(trailers.contains("grpc-status:0"), "{trailers:?}");
    let reservation = pb::TicketReservation::decode(messages[0].as_slice()).unwrap();
    assert_eq!(
        (reservation.member_id, reservation.state()),
        (3117, pb::ReservationState::Requested)
    );

    // An error: the status arrives as gRPC-Web trailers (or trailers-only headers).
    let unknown = pb::GetReservationRequest { id: 999_999 };
    let (headers, body) = grpc_web(
        port,
        &token,
        "/parking.v1.TicketReservationService/GetReservation",
        &unknown.encode_to_vec(),
    )
    .await;
    let (_, trailers) = frames(&body);
    assert!(
        headers.contains("grpc-status: 5") || trailers.contains("grpc-status:5"),
        "NOT_FOUND expected: {headers} {trailers:?}"
    );
}

async fn http_get(port: u16, path: &str) -> (String, String) {
    http1(port, "GET", path, "").await
}

/// A plain HTTP/1.1 request with extra header lines; the head and the body of the answer.
async fn http1(port: u16, method: &str, path: &str, headers: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_endpoint_reports_every_backend() {
    let mut c = Cluster::start(Backend::Sqlite).await;
    let port = c.start_gateway().await;
    let (head, body) = http_get(port, "/status").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    for backend in ["reservation", "parking-lot", "delivery", "status"] {
        assert_eq!(report["backends"][backend], "SERVING", "{report}");
    }
    // No community service runs here: shown as such, and the gateway is still ok (the
    // core runs the same without it).
    assert!(
        report["optional_backends"]["community"]
            .as_str()
            .is_some_and(|s| s.starts_with("UNAVAILABLE")),
        "{report}"
    );
    assert_eq!(report["status"], "ok", "{report}");
    c.stop_service(Svc::Delivery).await;
    let (head, body) = http_get(port, "/status").await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        report["backends"]["delivery"]
            .as_str()
            .unwrap()
            .starts_with("UNAVAILABLE"),
        "{report}"
    );
    assert_eq!(report["backends"]["reservation"], "SERVING", "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_preflight_is_answered_without_a_token() {
    let mut c = Cluster::start(Backend::Sqlite).await;
    let port = c.start_gateway().await;
    let (head, _) = http1(
        port,
        "OPTIONS",
        "/parking.v1.TicketReservationService/ReserveTicket",
        "Origin: http://app.example\r\nAccess-Control-Request-Method: POST\r\n\
         Access-Control-Request-Headers: authorization,content-type,x-grpc-web\r\n",
    )
    .await;
    let head = head.to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("access-control-allow-origin: *"), "{head}");
    assert!(head.contains("authorization"), "{head}");
    assert!(head.contains("x-grpc-web"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_burst_is_limited_per_token_subject_and_others_are_not() {
    let mut c = Cluster::start(Backend::Sqlite).await;
    let port = c
        .start_gateway_with(&[
            ("RATE_LIMIT_PER_SUBJECT", "5"),
            ("RATE_LIMIT_SUBJECT_BURST", "5"),
        ])
        .await;
    let greedy = pb::ticket_reservation_service_client::TicketReservationServiceClient::new(
        gateway_as(port, "3117").await,
    );
    let other = pb::ticket_reservation_service_client::TicketReservationServiceClient::new(
        gateway_as(port, "6").await,
    );
    let calls = (0..30).map(|_| {
        let mut client = greedy.clone();
        async move {
            client
                .list_reservations(pb::ListReservationsRequest::default())
                .await
        }
    });
    let answers = futures::future::join_all(calls).await;
    let refused: Vec<_> = answers
        .iter()
        .filter_map(|a| a.as_ref().err())
        .filter(|s| s.code() == tonic::Code::ResourceExhausted)
        .collect();
    assert!(refused.len() >= 20, "only {} of 30 refused", refused.len());
    assert!(
        refused[0].message().contains("per token subject"),
        "{:?}",
        refused[0]
    );
    assert!(refused[0].metadata().get("retry-after").is_some());
    // The same address, another user: unaffected.
    for _ in 0..3 {
        other
            .clone()
            .list_reservations(pb::ListReservationsRequest::default())
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_goes_through_the_mesh_policy_and_streams_are_not_cut_by_its_timeout() {
    let mut c = Cluster::start(Backend::Sqlite).await;
    let folder = c.folder().to_owned();
    let route = |name: &str, rule: &str| {
        let path = folder.join(name);
        std::fs::write(
            &path,
            format!(
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: status}}\n\
                 spec:\n  hosts: [status]\n  http:\n  - {rule}\n    route:\n    - destination: {{host: status}}\n"
            ),
        )
        .unwrap();
        path.to_str().unwrap().to_owned()
    };
    // An Istio fault on the status host: every call aborted with UNAVAILABLE, the watch
    // stream included (Envoy's fault filter sees streams too).
    let aborted = route(
        "status-fault.yaml",
        "fault:\n      abort:\n        percentage: {value: 100}\n        grpcStatus: UNAVAILABLE",
    );
    let port = c.start_gateway_with(&[("MESH_CONFIG", &aborted)]).await;
    let employee = gateway_as(port, "3117").await;
    let mut reservations =
        pb::ticket_reservation_service_client::TicketReservationServiceClient::new(
            employee.clone(),
        );
    let r = reservations
        .reserve_ticket(reserve(3117, &day(2)))
        .await
        .unwrap()
        .into_inner();
    let mut status =
        pb::reservation_status_service_client::ReservationStatusServiceClient::new(employee);
    let get = pb::GetReservationStatusRequest {
        reservation_id: r.id,
        ..Default::default()
    };
    let watch = pb::WatchReservationStatusRequest {
        reservation_id: r.id,
    };
    let err = status.get_reservation_status(get).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    let err = status.watch_reservation_status(watch).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");

    // A route timeout of 300 ms bounds the time to a stream's first answer, not the
    // stream: the watch still delivers an update a second later.
    let timed = route("status-timeout.yaml", "timeout: 0.3s");
    let port = c.start_gateway_with(&[("MESH_CONFIG", &timed)]).await;
    let employee = gateway_as(port, "3117").await;
    let mut status = pb::reservation_status_service_client::ReservationStatusServiceClient::new(
        employee.clone(),
    );
    status.get_reservation_status(get).await.unwrap();
    let mut stream = status
        .watch_reservation_status(watch)
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.reservation_id, r.id);
    tokio::time::sleep(Duration::from_secs(1)).await;
    pb::ticket_reservation_service_client::TicketReservationServiceClient::new(employee)
        .cancel_reservation(pb::CancelReservationRequest { id: r.id })
        .await
        .unwrap();
    let cancelled = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(update) = stream.next().await {
            let update = update.unwrap();
            if update.stage() == pb::ReservationStage::StageCancelRequested
                || update.stage() == pb::ReservationStage::StageVacated
            {
                return Some(update);
            }
        }
        None
    })
    .await
    .unwrap();
    assert!(cancelled.is_some(), "the stream outlived the route timeout");
}
