//! Settings every service shares, as clap argument groups a service flattens into its
//! own typed configuration. Each can be given as a flag or an environment variable.

use chrono_tz::Tz;

/// Where events go and come from.
#[derive(clap::Args, Debug, Clone)]
pub struct EventArgs {
    /// NATS server with JetStream.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Prefix of every subject and stream: tests give each run its own so runs never
    /// see each other's events. Lower-case letters, digits, '_' and '-'.
    #[arg(long, env = "EVENT_NAMESPACE", default_value = "parking", value_parser = parse_namespace)]
    pub event_namespace: String,
    /// Most events one replica handles in one transaction per consumer.
    #[arg(long, env = "CONSUMER_BATCH", default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub consumer_batch: u16,
    /// Copies JetStream keeps of each stream (1 on one server; 3 on a 3-node cluster, so
    /// losing a node loses nothing).
    #[arg(long, env = "STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub stream_replicas: u8,
    /// Most calls to other services a policy has in flight at once (ParkingLot's
    /// CancelDelivery), per consumer.
    #[arg(long, env = "CONSUMER_CONCURRENCY", default_value_t = 8)]
    pub consumer_concurrency: usize,
}

/// The car park's calendar.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct CalendarArgs {
    /// Time zone in which a ticket's day is a calendar day.
    #[arg(long, env = "PARKING_TIME_ZONE", default_value = "Asia/Seoul")]
    pub time_zone: Tz,
    /// How many days ahead of today booking is open.
    #[arg(long, env = "BOOKING_WINDOW_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(0..=3650))]
    pub booking_window_days: u32,
}

impl CalendarArgs {
    /// The calendar these settings describe.
    pub fn calendar(&self) -> crate::calendar::Calendar {
        crate::calendar::Calendar {
            tz: self.time_zone,
            booking_window_days: self.booking_window_days,
        }
    }
}

/// How a server checks the tokens its callers send (see `auth`).
#[derive(clap::Args, Debug, Clone)]
pub struct AuthArgs {
    /// The gateway's published token keys (a JWK set), fetched when a token names a key
    /// not seen yet and at least once a minute.
    #[arg(
        long,
        env = "JWKS_URL",
        default_value = "http://127.0.0.1:8080/.well-known/jwks.json"
    )]
    pub jwks_url: String,
    /// The issuer (`iss`) tokens must name.
    #[arg(long, env = "TOKEN_ISSUER", default_value = "parking-mesh")]
    pub token_issuer: String,
    /// The audience (`aud`) tokens must name.
    #[arg(long, env = "TOKEN_AUDIENCE", default_value = "parking-mesh")]
    pub token_audience: String,
}

/// The identity a service calls others with: a client of the token endpoint
/// (client_credentials grant).
#[derive(clap::Args, Debug, Clone)]
pub struct ClientArgs {
    /// The OAuth2 token endpoint.
    #[arg(
        long,
        env = "TOKEN_URL",
        default_value = "http://127.0.0.1:8080/oauth2/token"
    )]
    pub token_url: String,
    /// This service's client id (an account made with `parkingctl users add <id> --client
    /// --role service`).
    #[arg(long, env = "CLIENT_ID")]
    pub client_id: String,
    /// A file holding the client's secret (a mounted Secret in Kubernetes), read at start.
    #[arg(long, env = "CLIENT_SECRET_FILE")]
    pub client_secret_file: std::path::PathBuf,
}

/// Mutual TLS between services (see `tls`): all three or none.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// This service's certificate (PEM), presented to callers and to the services it calls.
    #[arg(long, env = "TLS_CERT_FILE")]
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "TLS_KEY_FILE")]
    pub tls_key_file: Option<std::path::PathBuf>,
    /// The CA (PEM) whose certificates peers must present.
    #[arg(long, env = "TLS_CA_FILE")]
    pub tls_ca_file: Option<std::path::PathBuf>,
}

/// A listen address that may be switched off ("off").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalAddr(pub Option<std::net::SocketAddr>);

impl std::str::FromStr for OptionalAddr {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        if value.eq_ignore_ascii_case("off") {
            return Ok(Self(None));
        }
        value
            .parse()
            .map(|addr| Self(Some(addr)))
            .map_err(|e| format!("{value:?} is not host:port or \"off\": {e}"))
    }
}

/// EVENT_NAMESPACE's rule, for every binary that takes one (services and gateway).
pub fn parse_namespace(value: &str) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= 32
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(value.to_owned())
    } else {
        Err("use 1 to 32 lower-case letters, digits, '_' or '-'".to_owned())
    }
}

/// A URL (or a comma-separated list of them) with its credentials hidden, fit for a
/// start-up log line: `user:***@host` for a password, `***@host` for a token.
pub fn redact_url(url: &str) -> String {
    url.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

fn redact_one(url: &str) -> String {
    let scheme_end = url.find("://").map(|i| i + 3).unwrap_or(0);
    let rest = &url[scheme_end..];
    // The last '@' ends the user info, as URL parsers read it.
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let hidden = match userinfo.find(':') {
        Some(colon) => format!("{}:***", &userinfo[..colon]),
        None => "***".to_owned(),
    };
    format!("{}{}{}", &url[..scheme_end], hidden, &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credentials() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/parking"),
            "postgres://app:***@db:5432/parking"
        );
        // A lone user info may be a token (nats://TOKEN@host): hidden too.
        assert_eq!(
            redact_url("postgres://app@db/parking"),
            "postgres://***@db/parking"
        );
        assert_eq!(
            redact_url("nats://s3cr3tt0ken@nats:4222"),
            "nats://***@nats:4222"
        );
        assert_eq!(
            redact_url("postgres://u:p@ss@db/x"),
            "postgres://u:***@db/x"
        );
        assert_eq!(
            redact_url("nats://a:one@n1:4222,nats://b:two@n2:4222"),
            "nats://a:***@n1:4222,nats://b:***@n2:4222"
        );
        assert_eq!(
            redact_url("sqlite://var/a.db?mode=rwc"),
            "sqlite://var/a.db?mode=rwc"
        );
    }

    #[test]
    fn namespaces_are_subject_and_stream_safe() {
        assert!(parse_namespace("parking").is_ok());
        assert!(parse_namespace("t-1_a").is_ok());
        for bad in ["", "a.b", "A", "a>b", "a b"] {
            assert!(parse_namespace(bad).is_err(), "{bad}");
        }
    }
}
