//! A backend that is not tonic answers an early error trailers-only (one HEADERS frame
//! with END_STREAM), as grpc C-core, grpc-go and Envoy do. Through the gateway's mesh path
//! the caller must get the same code in a form every gRPC client reads: before the fix
//! the gateway sent the status in headers followed by an empty DATA frame ending the
//! stream, which strict clients (grpc C-core: "Stream removed") report as UNKNOWN.
//! A scripted hyper upstream stands in for delivery; the answer is read at the wire.
#![allow(clippy::unwrap_used)]

use parking_common::identity::Role;
use parking_e2e::upstream::{wire_call, Answer, Upstream};
use parking_e2e::{with_token, Backend, Cluster};
use parking_proto::v1 as pb;
use tonic::Code;

const LIST: &str = "/parking.v1.TicketDeliveryService/ListDeliveries";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_error_keeps_its_code_and_its_trailers_only_form() {
    let mut c = Cluster::prepare(Backend::Sqlite, Default::default()).await;
    let token = c.token("manager", Role::Manager);
    let bearer = format!("Bearer {token}");
    for code in [
        Code::NotFound,
        Code::Internal,
        Code::Unavailable,
        Code::PermissionDenied,
    ] {
        for trailers_only in [true, false] {
            let upstream = Upstream::start(move |_| {
                if trailers_only {
                    Answer::TrailersOnly(code, "scripted")
                } else {
                    Answer::HeadersThenTrailers(code, "scripted")
                }
            })
            .await;
            let delivery = format!("http://127.0.0.1:{}", upstream.port);
            let port = c
                .start_gateway_with(&[("DELIVERY_URL", delivery.as_str())])
                .await;
            let what = format!("{code:?}, upstream trailers-only: {trailers_only}");

            let answer = pb::ticket_delivery_service_client::TicketDeliveryServiceClient::new(
                with_token(port, Some(&token)).await,
            )
            .list_deliveries(pb::ListDeliveriesRequest::default())
            .await
            .unwrap_err();
            assert_eq!(answer.code(), code, "tonic client, {what}: {answer:?}");
            assert_eq!(answer.message(), "scripted", "{what}");

            let wire = wire_call(port, LIST, &bearer).await;
            assert_eq!(wire.code(), Some(code as i32), "wire code, {what}");
            if trailers_only {
                assert!(
                    wire.headers_ended_stream && wire.trailers.is_none(),
                    "trailers-only stays trailers-only, {what}: headers {:?}",
                    wire.headers
                );
            }
            assert!(upstream.calls() >= 2, "the upstream answered ({what})");
        }
    }
}
