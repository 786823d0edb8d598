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
    /// Messages one replica handles at once per consumer.
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
    #[arg(long, env = "BOOKING_WINDOW_DAYS", default_value_t = 30)]
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

fn parse_namespace(value: &str) -> Result<String, String> {
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

/// A URL with its password replaced, fit for a start-up log line.
pub fn redact_url(url: &str) -> String {
    // scheme://user:password@host/...: blank what lies between the first ':' after the
    // scheme and the '@'.
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    match (rest.find('@'), rest.find(':')) {
        (Some(at), Some(colon)) if colon < at => {
            format!(
                "{}{}:***{}",
                &url[..scheme_end],
                &rest[..colon],
                &rest[at..]
            )
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/parking"),
            "postgres://app:***@db:5432/parking"
        );
        assert_eq!(
            redact_url("postgres://app@db/parking"),
            "postgres://app@db/parking"
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
