//! Logs as a collector reads them: every line of every process is one JSON object, lines
//! logged while serving a reservation carry its trace id and correlation id, and no line
//! holds a password, a client secret, an access token, a password hash or the signing key,
//! even at debug level.
#![allow(clippy::unwrap_used)]

use parking_e2e::{day, eventually, login, password_of, reserve, with_token, Backend, Cluster};
use parking_proto::v1 as pb;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_json_with_trace_ids_and_never_hold_a_secret() {
    let json = [("LOG_FORMAT", "json"), ("RUST_LOG", "debug")];
    let mut c = Cluster::start_with_env(Backend::Sqlite, &json).await;
    let port = c.start_gateway_with(&json).await;

    // Everything secret this test handles.
    let token = login(port, "3117").await;
    let wrong = "wrong-password-do-not-log";
    let form = format!("grant_type=password&username=3117&password={wrong}");
    parking_e2e::http(
        port,
        http::Request::post("/oauth2/token")
            .header("content-type", "application/x-www-form-urlencoded"),
        form,
    )
    .await;
    let client_secret = password_of("ops-bot");
    let form =
        format!("grant_type=client_credentials&client_id=ops-bot&client_secret={client_secret}");
    let (status, _, body) = parking_e2e::http(
        port,
        http::Request::post("/oauth2/token")
            .header("content-type", "application/x-www-form-urlencoded"),
        form,
    )
    .await;
    assert_eq!(status, 200);
    let client_token: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let client_token = client_token["access_token"].as_str().unwrap().to_owned();
    let r = pb::ticket_reservation_service_client::TicketReservationServiceClient::new(
        with_token(port, Some(&token)).await,
    )
    .reserve_ticket(reserve(3117, &day(3)))
    .await
    .unwrap()
    .into_inner();
    parking_e2e::http(
        port,
        http::Request::get(format!("/ticketReservations/{}", r.id))
            .header("authorization", format!("Bearer {token}")),
        "",
    )
    .await;
    let _ = pb::ticket_delivery_service_client::TicketDeliveryServiceClient::new(
        with_token(port, Some(&client_token)).await,
    )
    .list_deliveries(pb::ListDeliveriesRequest::default())
    .await;
    // Let the events run through every service (their logs included).
    let c = &c;
    eventually(
        Duration::from_secs(30),
        "the status view logged the delivery order",
        || async move {
            c.all_logs()
                .iter()
                .any(|(file, text)| {
                    file.starts_with("status-") && text.contains("DeliveryRequested")
                })
                .then_some(())
        },
    )
    .await;

    let accounts = std::fs::read_to_string(c.accounts_file()).unwrap();
    let hash = accounts
        .lines()
        .find_map(|l| l.split("hash: ").nth(1))
        .unwrap()
        .trim_matches(|ch| ch == '\'' || ch == '"' || ch == ' ')
        .to_owned();
    let key = std::fs::read_to_string(c.token_key_file()).unwrap();
    let key_body = key.lines().nth(1).unwrap().to_owned();
    let signature = token.rsplit('.').next().unwrap().to_owned();
    let secrets = [
        ("password", password_of("3117")),
        ("wrong password", wrong.to_owned()),
        ("client secret", client_secret),
        ("access token signature", signature),
        ("client token", client_token),
        ("password hash", hash),
        ("signing key", key_body),
    ];
    let logs = c.all_logs();
    assert!(
        logs.len() >= 5,
        "{:?}",
        logs.iter().map(|l| &l.0).collect::<Vec<_>>()
    );
    let mut traced = false;
    let mut handler_line = false;
    for (file, text) in &logs {
        for (what, secret) in &secrets {
            assert!(!text.contains(secret.as_str()), "{file} holds the {what}");
        }
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{file}: not JSON ({e}): {line}"));
            let ours = value["correlation_id"].as_str() == Some(r.id.to_string().as_str())
                && value["trace_id"].as_str().is_some_and(|t| t.len() == 32)
                && value["span_id"].is_string();
            traced |= ours;
            // The handler's own line, correlated through its call span.
            handler_line |=
                ours && file.starts_with("reservation-") && value["message"] == "ticket reserved";
        }
    }
    assert!(handler_line, "ReserveTicket's own log line lacks its ids");
    assert!(
        traced,
        "no log line with the reservation's correlation id and a trace id"
    );
}
