//! Optional mutual TLS between services: with a local CA, every hop between processes is
//! TLS with a certificate on both sides (gateway -> backends, parking-lot -> delivery).
//! A whole application (reserve, confirm, deliver, cancel, vacate) runs over it, and a
//! backend refuses a connection without a certificate of the CA before any call, however
//! good the token.
#![allow(clippy::unwrap_used)]

use parking_common::identity::Role;
use parking_e2e::{
    channel, day, eventually, gateway_as, reserve, tls_channel, Backend, Bearer, Cluster, Svc,
};
use parking_proto::v1 as pb;
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;

use pb::parking_lot_service_client::ParkingLotServiceClient as Lot;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_runs_over_mutual_tls_and_strangers_cannot_connect() {
    let mut c = Cluster::prepare(Backend::Sqlite, Default::default()).await;
    c.enable_mtls();
    for svc in Svc::ALL {
        c.start_service(svc).await;
    }
    let port = c.start_gateway().await;

    // Through the gateway, every backend hop over mTLS; the cancel's CancelDelivery too.
    let me = gateway_as(port, "3117").await;
    let mut reservations =
        pb::ticket_reservation_service_client::TicketReservationServiceClient::new(me.clone());
    let r = reservations
        .reserve_ticket(reserve(3117, &day(3)))
        .await
        .unwrap()
        .into_inner();
    let stage = |want: pb::ReservationStage| {
        let me = me.clone();
        async move {
            eventually(Duration::from_secs(30), &format!("{want:?}"), || {
                let mut status =
                    pb::reservation_status_service_client::ReservationStatusServiceClient::new(
                        me.clone(),
                    );
                async move {
                    let s = status
                        .get_reservation_status(pb::GetReservationStatusRequest {
                            reservation_id: r.id,
                            ..Default::default()
                        })
                        .await
                        .ok()?
                        .into_inner();
                    (s.stage() == want).then_some(())
                }
            })
            .await
        }
    };
    stage(pb::ReservationStage::StageDeliveryRequested).await;
    reservations
        .cancel_reservation(pb::CancelReservationRequest { id: r.id })
        .await
        .unwrap();
    stage(pb::ReservationStage::StageVacated).await;

    // Straight to a backend with a genuine admin token: without a certificate of the CA
    // there is no connection at all.
    let token = c.token("operator", Role::Admin);
    let lot_port = c.port(Svc::ParkingLot);
    let ask = |channel: tonic::transport::Channel| {
        let token = token.clone();
        async move {
            Lot::new(InterceptedService::new(channel, Bearer::new(Some(&token))))
                .get_daily_availability(pb::GetDailyAvailabilityRequest { date: day(3) })
                .await
        }
    };
    // Refused at the connection: the error is the transport's (its code varies with when
    // the TLS alert or the close arrives), never an answer of the service.
    let refused = |err: tonic::Status, what: &str| {
        let transport = std::error::Error::source(&err)
            .is_some_and(|source| source.is::<tonic::transport::Error>());
        assert!(transport, "{what}: {err:?}");
    };
    refused(
        ask(channel(lot_port).await).await.unwrap_err(),
        "plain text",
    );
    let dir = c.tls_dir().unwrap().to_owned();
    let ca = tonic::transport::Certificate::from_pem(std::fs::read(dir.join("ca.pem")).unwrap());
    let anonymous = tonic::transport::ClientTlsConfig::new().ca_certificate(ca.clone());
    refused(
        ask(tls_channel(lot_port, anonymous)).await.unwrap_err(),
        "no client certificate",
    );
    // A certificate of another CA.
    let stranger = dir.join("stranger");
    parking_common::tls::write_local_ca(&stranger, &["operator"]).unwrap();
    let files = parking_common::tls::local_files(&stranger, "operator");
    let foreign = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(ca)
        .identity(tonic::transport::Identity::from_pem(
            std::fs::read(files.tls_cert_file.unwrap()).unwrap(),
            std::fs::read(files.tls_key_file.unwrap()).unwrap(),
        ));
    refused(
        ask(tls_channel(lot_port, foreign)).await.unwrap_err(),
        "another CA",
    );
    // Our CA's certificate: connected, and the token decides as always.
    let ours = c.client_tls("operator").unwrap();
    let day3 = ask(tls_channel(lot_port, ours.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (day3.occupied, day3.remaining),
        (0, day3.capacity),
        "vacated"
    );
    let err = Lot::new(tls_channel(lot_port, ours))
        .get_daily_availability(pb::GetDailyAvailabilityRequest { date: day(3) })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::Unauthenticated,
        "a certificate is no token"
    );
}
