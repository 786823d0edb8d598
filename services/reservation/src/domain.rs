//! The TicketReservation aggregate: a member's application for one day's ticket, and the
//! rules of its life (REQUESTED -> CONFIRMED | REJECTED, any but CANCELED -> CANCELED).
//! No I/O here.

use chrono::NaiveDate;

/// Where an application stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationState {
    /// Taken; ParkingLot has not answered yet.
    Requested,
    /// ParkingLot took a space (Occupied).
    Confirmed,
    /// The day was full (FullyOccupied).
    Rejected,
    /// The member cancelled.
    Canceled,
}

impl ReservationState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "REQUESTED",
            Self::Confirmed => "CONFIRMED",
            Self::Rejected => "REJECTED",
            Self::Canceled => "CANCELED",
        }
    }

    /// Reads a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "REQUESTED" => Self::Requested,
            "CONFIRMED" => Self::Confirmed,
            "REJECTED" => Self::Rejected,
            "CANCELED" => Self::Canceled,
            _ => return None,
        })
    }

    /// States that hold the member's one ticket for the day.
    pub const ACTIVE: [ReservationState; 2] = [Self::Requested, Self::Confirmed];

    /// States a cancellation may start from.
    pub const CANCELLABLE: [ReservationState; 3] =
        [Self::Requested, Self::Confirmed, Self::Rejected];
}

/// ParkingLot's answer to an application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// A space was taken.
    Occupied,
    /// The day was full.
    FullyOccupied,
}

/// The state an answer moves a reservation to, if any: only a REQUESTED one is settled
/// (a member who cancelled before the answer stays cancelled).
pub fn settle(current: ReservationState, answer: Settlement) -> Option<ReservationState> {
    match (current, answer) {
        (ReservationState::Requested, Settlement::Occupied) => Some(ReservationState::Confirmed),
        (ReservationState::Requested, Settlement::FullyOccupied) => {
            Some(ReservationState::Rejected)
        }
        _ => None,
    }
}

/// A validated application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Application {
    pub member_id: i64,
    pub date: NaiveDate,
    /// Idempotency key; `None` when the client sent none.
    pub request_id: Option<String>,
}

/// Input the domain refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidApplication {
    #[error("member_id must be a positive number (got {0})")]
    MemberId(i64),
    #[error(
        "request_id must be at most {max} characters of letters, digits, '-', '_', '.' or ':'"
    )]
    RequestId { max: usize },
}

/// Longest accepted request_id (a UUID is 36).
pub const MAX_REQUEST_ID: usize = 128;

impl Application {
    /// Checks the member and the idempotency key (the date is checked by the calendar).
    pub fn new(
        member_id: i64,
        date: NaiveDate,
        request_id: &str,
    ) -> Result<Self, InvalidApplication> {
        if member_id <= 0 {
            return Err(InvalidApplication::MemberId(member_id));
        }
        let request_id = request_id.trim();
        let ok = request_id.len() <= MAX_REQUEST_ID
            && request_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
        if !ok {
            return Err(InvalidApplication::RequestId {
                max: MAX_REQUEST_ID,
            });
        }
        Ok(Self {
            member_id,
            date,
            request_id: (!request_id.is_empty()).then(|| request_id.to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReservationState::*;

    fn day() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 12, 1).expect("valid")
    }

    #[test]
    fn only_requested_is_settled() {
        assert_eq!(settle(Requested, Settlement::Occupied), Some(Confirmed));
        assert_eq!(settle(Requested, Settlement::FullyOccupied), Some(Rejected));
        for s in [Confirmed, Rejected, Canceled] {
            assert_eq!(settle(s, Settlement::Occupied), None);
            assert_eq!(settle(s, Settlement::FullyOccupied), None);
        }
    }

    #[test]
    fn cancelled_cannot_be_cancelled_again() {
        assert!(!ReservationState::CANCELLABLE.contains(&Canceled));
        assert!(ReservationState::CANCELLABLE.contains(&Rejected));
    }

    #[test]
    fn states_round_trip() {
        for s in [Requested, Confirmed, Rejected, Canceled] {
            assert_eq!(ReservationState::parse(s.as_str()), Some(s));
        }
        assert_eq!(ReservationState::parse("nope"), None);
    }

    #[test]
    fn application_checks_member_and_key() {
        assert_eq!(
            Application::new(0, day(), ""),
            Err(InvalidApplication::MemberId(0))
        );
        assert_eq!(
            Application::new(-5, day(), ""),
            Err(InvalidApplication::MemberId(-5))
        );
        assert!(Application::new(1, day(), "a b").is_err());
        assert!(Application::new(1, day(), &"x".repeat(129)).is_err());
        let app = Application::new(3117, day(), " req-1 ").expect("valid");
        assert_eq!(app.request_id.as_deref(), Some("req-1"));
        assert_eq!(
            Application::new(1, day(), "").map(|a| a.request_id),
            Ok(None)
        );
    }
}
