//! parkingctl: the parking-mesh gRPC API for people. Human tables by default, `--json` for
//! scripts (one JSON document per answer, one per line while watching). Talks to the
//! gateway (or any service) at `--server` / `PARKING_SERVER`. Exit codes: 0 done, 1 the
//! server refused (its gRPC code and message are printed), 2 bad usage.

use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use parking_proto::v1 as pb;
use serde_json::{json, Value};
use std::process::ExitCode;
use tonic::transport::Channel;

#[derive(Parser, Debug)]
#[command(
    name = "parkingctl",
    version,
    about = "Daily parking tickets from the command line"
)]
struct Cli {
    /// The gateway (or a service) to talk to.
    #[arg(
        long,
        env = "PARKING_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    server: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Apply for a ticket for one day.
    Reserve {
        #[arg(long)]
        member: i64,
        /// YYYY-MM-DD, in the car park's time zone.
        #[arg(long)]
        date: String,
        /// Idempotency key: retrying with it returns the first result.
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// Cancel an application.
    Cancel { id: i64 },
    /// Where an application stands, with its history.
    Status {
        id: i64,
        /// Keep printing every change until Ctrl-C.
        #[arg(long)]
        watch: bool,
    },
    /// Applications, oldest first.
    List {
        /// Only this member's.
        #[arg(long, default_value_t = 0)]
        member: i64,
        #[arg(long, default_value_t = 50)]
        page_size: i32,
    },
    /// The parking manager's work list.
    Deliveries {
        #[arg(long, default_value = "")]
        date: String,
        #[arg(long)]
        state: Option<DeliveryState>,
        #[arg(long, default_value_t = 50)]
        page_size: i32,
    },
    /// Hand a ticket over.
    Ship { delivery_id: i64 },
    /// A day's capacity and occupancy; `--set` changes the capacity (admin).
    Capacity {
        date: String,
        #[arg(long)]
        set: Option<i32>,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum DeliveryState {
    Requested,
    Shipped,
    Canceled,
}

/// What the server said no with.
struct Refused(tonic::Status);

type Outcome = Result<(), Refused>;

impl From<tonic::Status> for Refused {
    fn from(s: tonic::Status) -> Self {
        Refused(s)
    }
}

fn reservation_json(r: &pb::TicketReservation) -> Value {
    json!({"id": r.id, "memberId": r.member_id, "reservationDate": r.reservation_date,
           "state": r.state().as_str_name(), "requestId": r.request_id})
}

fn status_json(s: &pb::ReservationStatus) -> Value {
    let history: Vec<Value> = s
        .history
        .iter()
        .map(|h| {
            json!({"eventType": h.event_type, "stage": h.stage().as_str_name(),
                   "occurredAt": h.occurred_at.as_ref().map(|t| t.to_string()).unwrap_or_default()})
        })
        .collect();
    json!({"reservationId": s.reservation_id, "memberId": s.member_id, "reservationDate": s.reservation_date,
           "stage": s.stage().as_str_name(), "parkingLotId": s.parking_lot_id,
           "ticketDeliveryId": s.ticket_delivery_id, "spaceNumber": s.space_number, "history": history})
}

fn delivery_json(d: &pb::TicketDelivery) -> Value {
    json!({"id": d.id, "reservationId": d.reservation_id, "memberId": d.member_id,
           "reservationDate": d.reservation_date, "spaceNumber": d.space_number, "state": d.state().as_str_name()})
}

fn availability_json(a: &pb::DailyAvailability) -> Value {
    json!({"date": a.date, "capacity": a.capacity, "occupied": a.occupied, "remaining": a.remaining})
}

/// Prints rows as aligned columns under a header.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    println!("{}", line(header.iter().map(|h| h.to_string()).collect()));
    for row in rows {
        println!("{}", line(row));
    }
}

fn short(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_owned()
}

fn print_status(s: &pb::ReservationStatus, json: bool) {
    if json {
        println!("{}", status_json(s));
        return;
    }
    println!(
        "reservation {}  member {}  date {}  stage {}  space {}  parking lot {}  delivery {}",
        s.reservation_id,
        s.member_id,
        s.reservation_date,
        short(s.stage().as_str_name(), "STAGE_"),
        s.space_number,
        s.parking_lot_id,
        s.ticket_delivery_id
    );
    table(
        &["EVENT", "STAGE", "AT"],
        s.history
            .iter()
            .map(|h| {
                vec![
                    h.event_type.clone(),
                    short(h.stage().as_str_name(), "STAGE_"),
                    h.occurred_at
                        .as_ref()
                        .map(|t| t.to_string())
                        .unwrap_or_default(),
                ]
            })
            .collect(),
    );
}

async fn run(cli: Cli, channel: Channel) -> Outcome {
    let json = cli.json;
    match cli.command {
        Command::Reserve {
            member,
            date,
            request_id,
        } => {
            let mut client =
                pb::ticket_reservation_service_client::TicketReservationServiceClient::new(channel);
            let r = client
                .reserve_ticket(pb::ReserveTicketRequest {
                    member_id: member,
                    reservation_date: date,
                    request_id,
                })
                .await?
                .into_inner();
            if json {
                println!("{}", reservation_json(&r));
            } else {
                println!(
                    "reservation {} for member {} on {}: {}",
                    r.id,
                    r.member_id,
                    r.reservation_date,
                    r.state().as_str_name()
                );
            }
        }
        Command::Cancel { id } => {
            let mut client =
                pb::ticket_reservation_service_client::TicketReservationServiceClient::new(channel);
            let r = client
                .cancel_reservation(pb::CancelReservationRequest { id })
                .await?
                .into_inner();
            if json {
                println!("{}", reservation_json(&r));
            } else {
                println!(
                    "reservation {} canceled; its space is freed once its delivery is cancelled",
                    r.id
                );
            }
        }
        Command::Status { id, watch } => {
            let mut client =
                pb::reservation_status_service_client::ReservationStatusServiceClient::new(channel);
            if watch {
                let mut stream = client
                    .watch_reservation_status(pb::WatchReservationStatusRequest {
                        reservation_id: id,
                    })
                    .await?
                    .into_inner();
                while let Some(update) = stream.next().await {
                    print_status(&update?, json);
                }
            } else {
                let s = client
                    .get_reservation_status(pb::GetReservationStatusRequest { reservation_id: id, ..Default::default() })
                    .await?
                    .into_inner();
                print_status(&s, json);
            }
        }
        Command::List { member, page_size } => {
            let mut client =
                pb::ticket_reservation_service_client::TicketReservationServiceClient::new(channel);
            let page = client
                .list_reservations(pb::ListReservationsRequest {
                    member_id: member,
                    page_size,
                    page_token: String::new(),
                })
                .await?
                .into_inner();
            if json {
                let all: Vec<Value> = page.reservations.iter().map(reservation_json).collect();
                println!(
                    "{}",
                    json!({"reservations": all, "nextPageToken": page.next_page_token})
                );
            } else {
                table(
                    &["ID", "MEMBER", "DATE", "STATE"],
                    page.reservations
                        .iter()
                        .map(|r| {
                            vec![
                                r.id.to_string(),
                                r.member_id.to_string(),
                                r.reservation_date.clone(),
                                r.state().as_str_name().to_owned(),
                            ]
                        })
                        .collect(),
                );
            }
        }
        Command::Deliveries {
            date,
            state,
            page_size,
        } => {
            let mut client =
                pb::ticket_delivery_service_client::TicketDeliveryServiceClient::new(channel);
            let state = match state {
                None => pb::DeliveryState::Unspecified,
                Some(DeliveryState::Requested) => pb::DeliveryState::DeliveryRequested,
                Some(DeliveryState::Shipped) => pb::DeliveryState::DeliveryShipped,
                Some(DeliveryState::Canceled) => pb::DeliveryState::DeliveryCanceled,
            };
            let page = client
                .list_deliveries(pb::ListDeliveriesRequest {
                    reservation_date: date,
                    state: state as i32,
                    page_size,
                    page_token: String::new(),
                })
                .await?
                .into_inner();
            if json {
                let all: Vec<Value> = page.deliveries.iter().map(delivery_json).collect();
                println!(
                    "{}",
                    json!({"deliveries": all, "nextPageToken": page.next_page_token})
                );
            } else {
                table(
                    &[
                        "DELIVERY",
                        "RESERVATION",
                        "MEMBER",
                        "DATE",
                        "SPACE",
                        "STATE",
                    ],
                    page.deliveries
                        .iter()
                        .map(|d| {
                            vec![
                                d.id.to_string(),
                                d.reservation_id.to_string(),
                                d.member_id.to_string(),
                                d.reservation_date.clone(),
                                d.space_number.to_string(),
                                short(d.state().as_str_name(), "DELIVERY_"),
                            ]
                        })
                        .collect(),
                );
            }
        }
        Command::Ship { delivery_id } => {
            let mut client =
                pb::ticket_delivery_service_client::TicketDeliveryServiceClient::new(channel);
            let d = client
                .ship_ticket(pb::ShipTicketRequest { delivery_id })
                .await?
                .into_inner();
            if json {
                println!("{}", delivery_json(&d));
            } else {
                println!(
                    "delivery {} (reservation {}): {}",
                    d.id,
                    d.reservation_id,
                    short(d.state().as_str_name(), "DELIVERY_")
                );
            }
        }
        Command::Capacity { date, set } => {
            let mut client = pb::parking_lot_service_client::ParkingLotServiceClient::new(channel);
            let a = match set {
                Some(capacity) => {
                    client
                        .set_daily_capacity(pb::SetDailyCapacityRequest { date, capacity })
                        .await?
                }
                None => {
                    client
                        .get_daily_availability(pb::GetDailyAvailabilityRequest { date })
                        .await?
                }
            }
            .into_inner();
            if json {
                println!("{}", availability_json(&a));
            } else {
                table(
                    &["DATE", "CAPACITY", "OCCUPIED", "REMAINING"],
                    vec![vec![
                        a.date.clone(),
                        a.capacity.to_string(),
                        a.occupied.to_string(),
                        a.remaining.to_string(),
                    ]],
                );
            }
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let channel = match Channel::from_shared(cli.server.clone()) {
        Ok(endpoint) => endpoint.connect_lazy(),
        Err(e) => {
            eprintln!("error: --server {:?} is not a URL: {e}", cli.server);
            return ExitCode::from(2);
        }
    };
    let json = cli.json;
    match run(cli, channel).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Refused(status)) => {
            if json {
                eprintln!(
                    "{}",
                    json!({"code": format!("{:?}", status.code()), "message": status.message()})
                );
            } else {
                eprintln!("error: {:?}: {}", status.code(), status.message());
            }
            ExitCode::from(1)
        }
    }
}
