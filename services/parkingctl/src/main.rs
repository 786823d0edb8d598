//! parkingctl: the parking-mesh gRPC API for people. Human tables by default, `--json` for
//! scripts (one JSON document per answer, one per line while watching). Talks to the
//! gateway (or any service) at `--server` / `PARKING_SERVER`. Exit codes: 0 done, 1 the
//! server refused (its gRPC code and message are printed), 2 bad usage.
//!
//! `login` gets an access token from the gateway's OAuth2 endpoint and keeps it in a file
//! only its owner can read; every other call sends it. `users add` writes the gateway's
//! accounts file (argon2id hashes, never a password).

use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use gateway::users::{write_private, Accounts};
use parking_common::grpc::Bearer;
use parking_common::identity::Role;
use parking_proto::v1 as pb;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;
use tonic::service::interceptor::InterceptedService;
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
    /// Where `login` keeps the access token [default: ~/.config/parkingctl/token].
    #[arg(long, env = "PARKING_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// An access token to use instead of the saved one.
    #[arg(long, env = "PARKING_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Get an access token (password from PARKING_PASSWORD, --password-stdin or a prompt).
    Login {
        /// Your login: an employee's member id.
        #[arg(long)]
        user: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Write the gateway's accounts file.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
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
    /// Make a local CA and a certificate per service for mTLS on one machine
    /// (`<dir>/ca.pem`, `<dir>/<name>.pem`, `<dir>/<name>-key.pem`).
    Certs {
        /// Where the files go.
        #[arg(long, default_value = "var/tls")]
        dir: PathBuf,
        /// Who gets a certificate.
        #[arg(default_values = ["gateway", "reservation", "parking-lot", "delivery", "status", "operator"])]
        names: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum UsersCommand {
    /// Add or replace a user (or with --client, a client of the client_credentials grant).
    Add {
        /// Login name (an employee's member id) or client id.
        name: String,
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Add a program's client id and secret instead of a person.
        #[arg(long)]
        client: bool,
        /// The accounts file.
        #[arg(long, env = "ACCOUNTS_FILE", default_value = "var/accounts.yaml")]
        file: PathBuf,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Who is in the accounts file.
    List {
        #[arg(long, env = "ACCOUNTS_FILE", default_value = "var/accounts.yaml")]
        file: PathBuf,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum DeliveryState {
    Requested,
    Shipped,
    Canceled,
}

/// Why a command failed.
enum Refused {
    /// The server said no.
    Server(tonic::Status),
    /// Something here went wrong (a file, the terminal, a login refused): the message.
    Local(String),
    /// The command line makes no sense.
    Usage(String),
}

type Outcome = Result<(), Refused>;

impl From<tonic::Status> for Refused {
    fn from(s: tonic::Status) -> Self {
        Refused::Server(s)
    }
}

type Api = InterceptedService<Channel, Bearer>;

fn default_token_file() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("parkingctl").join("token")
}

/// A password from PARKING_PASSWORD, the first line of standard input, or the terminal.
fn read_password(from_stdin: bool, prompt: &str) -> Result<String, Refused> {
    if let Ok(password) = std::env::var("PARKING_PASSWORD") {
        return Ok(password);
    }
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| Refused::Local(format!("reading the password: {e}")))?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        rpassword::prompt_password(prompt)
            .map_err(|e| Refused::Local(format!("reading the password: {e}")))?
    };
    Ok(password)
}

/// The password grant against the gateway's `/oauth2/token`, over the same connection
/// the gRPC calls use.
async fn login(
    server: &str,
    channel: Channel,
    user: &str,
    password: &str,
) -> Result<(String, u64), Refused> {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let form = serde_urlencoded::to_string([
        ("grant_type", "password"),
        ("username", user),
        ("password", password),
    ])
    .map_err(|e| Refused::Local(e.to_string()))?;
    let request = http::Request::post(format!("{}/oauth2/token", server.trim_end_matches('/')))
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(tonic::body::Body::new(http_body_util::Full::new(
            bytes::Bytes::from(form),
        )))
        .map_err(|e| Refused::Local(e.to_string()))?;
    let response = channel
        .oneshot(request)
        .await
        .map_err(|e| Refused::Local(format!("cannot reach {server}: {e}")))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| Refused::Local(format!("reading the answer: {e}")))?
        .to_bytes();
    let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if !status.is_success() {
        let why = answer["error_description"]
            .as_str()
            .or(answer["error"]["message"].as_str())
            .unwrap_or("no reason given");
        return Err(Refused::Local(format!("login refused ({status}): {why}")));
    }
    match (
        answer["access_token"].as_str(),
        answer["expires_in"].as_u64(),
    ) {
        (Some(token), Some(expires)) => Ok((token.to_owned(), expires)),
        _ => Err(Refused::Local("the token endpoint sent no token".into())),
    }
}

fn users(command: UsersCommand, json: bool) -> Outcome {
    let local = |e: gateway::users::Error| Refused::Local(e.to_string());
    match command {
        UsersCommand::Add {
            name,
            role,
            client,
            file,
            password_stdin,
        } => {
            let mut accounts = Accounts::load_or_default(&file).map_err(local)?;
            let what = if client { "secret" } else { "password" };
            let password = read_password(password_stdin, &format!("{what} for {name}: "))?;
            accounts
                .set(client, &name, role, &password)
                .map_err(local)?;
            accounts.save(&file).map_err(local)?;
            if json {
                println!(
                    "{}",
                    json!({"name": name, "role": role.as_str(), "client": client, "file": file})
                );
            } else {
                let kind = if client { "client" } else { "user" };
                println!("{kind} {name} ({role}) written to {}", file.display());
            }
        }
        UsersCommand::List { file } => {
            let accounts = Accounts::load(&file).map_err(local)?;
            let rows = accounts
                .users
                .iter()
                .map(|(n, a)| (n, a, "user"))
                .chain(accounts.clients.iter().map(|(n, a)| (n, a, "client")));
            if json {
                let all: Vec<Value> = rows
                    .map(|(n, a, kind)| json!({"name": n, "role": a.role.as_str(), "kind": kind}))
                    .collect();
                println!("{}", json!({ "accounts": all }));
            } else {
                table(
                    &["NAME", "ROLE", "KIND"],
                    rows.map(|(n, a, kind)| vec![n.clone(), a.role.to_string(), kind.to_owned()])
                        .collect(),
                );
            }
        }
    }
    Ok(())
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
    let token_file = cli.token_file.clone().unwrap_or_else(default_token_file);
    let token = match &cli.token {
        Some(token) => Some(token.clone()),
        None => std::fs::read_to_string(&token_file)
            .ok()
            .map(|t| t.trim().to_owned()),
    };
    let bearer = Bearer::new(token.as_deref().filter(|t| !t.is_empty()));
    let api: Api = InterceptedService::new(channel.clone(), bearer);
    match cli.command {
        Command::Login {
            user,
            password_stdin,
        } => {
            let password = read_password(password_stdin, &format!("password for {user}: "))?;
            let (token, expires_in) = login(&cli.server, channel, &user, &password).await?;
            write_private(&token_file, &token).map_err(|e| {
                Refused::Local(format!("saving the token to {}: {e}", token_file.display()))
            })?;
            if json {
                println!(
                    "{}",
                    json!({"user": user, "expiresIn": expires_in, "tokenFile": token_file})
                );
            } else {
                println!(
                    "logged in as {user} for {} min; token saved in {}",
                    expires_in / 60,
                    token_file.display()
                );
            }
        }
        // Handled in main: they need no server.
        Command::Users { .. } | Command::Certs { .. } => {}
        Command::Reserve {
            member,
            date,
            request_id,
        } => {
            let mut client =
                pb::ticket_reservation_service_client::TicketReservationServiceClient::new(
                    api.clone(),
                );
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
                pb::ticket_reservation_service_client::TicketReservationServiceClient::new(
                    api.clone(),
                );
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
                pb::reservation_status_service_client::ReservationStatusServiceClient::new(
                    api.clone(),
                );
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
                    .get_reservation_status(pb::GetReservationStatusRequest {
                        reservation_id: id,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                print_status(&s, json);
            }
        }
        Command::List { member, page_size } => {
            let mut client =
                pb::ticket_reservation_service_client::TicketReservationServiceClient::new(
                    api.clone(),
                );
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
                pb::ticket_delivery_service_client::TicketDeliveryServiceClient::new(api.clone());
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
                pb::ticket_delivery_service_client::TicketDeliveryServiceClient::new(api.clone());
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
            let mut client =
                pb::parking_lot_service_client::ParkingLotServiceClient::new(api.clone());
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
    let json = cli.json;
    let outcome = match cli.command {
        // The accounts file is local: no server involved.
        Command::Users { command } => users(command, json),
        Command::Certs { dir, names } => {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            parking_common::tls::write_local_ca(&dir, &names)
                .map(|()| {
                    println!(
                        "CA and certificates for {} in {}",
                        names.join(", "),
                        dir.display()
                    )
                })
                .map_err(|e| Refused::Local(e.to_string()))
        }
        _ => match Channel::from_shared(cli.server.clone()) {
            Ok(endpoint) => run(cli, endpoint.connect_lazy()).await,
            Err(e) => Err(Refused::Usage(format!(
                "--server {:?} is not a URL: {e}",
                cli.server
            ))),
        },
    };
    let (code, message) = match outcome {
        Ok(()) => return ExitCode::SUCCESS,
        Err(Refused::Usage(message)) => (2, json!({ "message": message })),
        Err(Refused::Local(message)) => (1, json!({ "message": message })),
        Err(Refused::Server(status)) => (
            1,
            json!({"code": format!("{:?}", status.code()), "message": status.message()}),
        ),
    };
    if json {
        eprintln!("{message}");
    } else {
        match (message["code"].as_str(), message["message"].as_str()) {
            (Some(code), Some(text)) => eprintln!("error: {code}: {text}"),
            (_, text) => eprintln!("error: {}", text.unwrap_or_default()),
        }
    }
    ExitCode::from(code)
}
