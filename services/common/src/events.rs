//! Events on JetStream: one stream per publishing context, subjects
//! `<namespace>.<context>.<EventName>`, every message an [`EventEnvelope`] whose
//! correlation id is the reservation id.

use crate::pb::{event_envelope::Payload, EventEnvelope};
use chrono::{DateTime, Utc};
use prost::Message;

/// A bounded context that publishes events (one stream each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventContext {
    /// TicketReservation: TicketReserved, TicketReservationCanceled.
    Reservation,
    /// ParkingLot: Occupied, FullyOccupied, Vacated.
    ParkingLot,
    /// TicketDelivery: DeliveryRequested, Shipped, DeliveryCanceled.
    Delivery,
}

impl EventContext {
    /// Every publishing context.
    pub const ALL: [EventContext; 3] = [Self::Reservation, Self::ParkingLot, Self::Delivery];

    /// The subject token of the context.
    pub fn token(self) -> &'static str {
        match self {
            Self::Reservation => "reservation",
            Self::ParkingLot => "parkinglot",
            Self::Delivery => "delivery",
        }
    }

    /// The JetStream stream of this context in `namespace`, e.g. `PARKING_RESERVATION`.
    pub fn stream(self, namespace: &str) -> String {
        format!("{}_{}", namespace, self.token())
            .to_ascii_uppercase()
            .replace('-', "_")
    }

    /// Subjects the stream holds: `<namespace>.<context>.>`.
    pub fn stream_subjects(self, namespace: &str) -> String {
        format!("{namespace}.{}.>", self.token())
    }

    /// The subject of one event name in this context.
    pub fn subject(self, namespace: &str, event_name: &str) -> String {
        format!("{namespace}.{}.{event_name}", self.token())
    }
}

/// The event's name (the last subject token) and the context that publishes it.
pub fn describe(payload: &Payload) -> (&'static str, EventContext) {
    use EventContext::*;
    match payload {
        Payload::TicketReserved(_) => ("TicketReserved", Reservation),
        Payload::TicketReservationCanceled(_) => ("TicketReservationCanceled", Reservation),
        Payload::Occupied(_) => ("Occupied", ParkingLot),
        Payload::FullyOccupied(_) => ("FullyOccupied", ParkingLot),
        Payload::Vacated(_) => ("Vacated", ParkingLot),
        Payload::DeliveryRequested(_) => ("DeliveryRequested", Delivery),
        Payload::Shipped(_) => ("Shipped", Delivery),
        Payload::DeliveryCanceled(_) => ("DeliveryCanceled", Delivery),
    }
}

/// A new envelope for `payload`, correlated by reservation id, stamped now, carrying the
/// current trace context (so the outbox row keeps it).
pub fn envelope(reservation_id: i64, payload: Payload) -> EventEnvelope {
    let (traceparent, tracestate) = crate::propagation::current();
    EventEnvelope {
        event_id: uuid::Uuid::now_v7().to_string(),
        correlation_id: reservation_id.to_string(),
        occurred_at: Some(timestamp(Utc::now())),
        traceparent,
        tracestate,
        payload: Some(payload),
    }
}

/// A chrono time as a protobuf timestamp.
pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

/// A protobuf timestamp as chrono time (the epoch when absent or out of range).
pub fn from_timestamp(ts: Option<&prost_types::Timestamp>) -> DateTime<Utc> {
    ts.and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .unwrap_or_default()
}

/// An event that could not be read off the wire.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not an EventEnvelope: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("envelope {0} carries no payload")]
    Empty(String),
}

/// Decodes an envelope, refusing one without a payload.
pub fn decode(bytes: &[u8]) -> Result<(EventEnvelope, Payload), DecodeError> {
    let mut envelope = EventEnvelope::decode(bytes)?;
    let payload = envelope
        .payload
        .take()
        .ok_or_else(|| DecodeError::Empty(envelope.event_id.clone()))?;
    Ok((envelope, payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::TicketReserved;

    #[test]
    fn names_follow_the_design() {
        assert_eq!(
            EventContext::Reservation.stream("parking"),
            "PARKING_RESERVATION"
        );
        assert_eq!(EventContext::ParkingLot.stream("t-1"), "T_1_PARKINGLOT");
        assert_eq!(
            EventContext::Delivery.subject("parking", "Shipped"),
            "parking.delivery.Shipped"
        );
        assert_eq!(
            EventContext::Reservation.stream_subjects("p"),
            "p.reservation.>"
        );
    }

    #[test]
    fn envelope_round_trips() {
        let payload = Payload::TicketReserved(TicketReserved {
            reservation_id: 7,
            member_id: 3117,
            reservation_date: "2026-12-01".into(),
        });
        let env = envelope(7, payload.clone());
        assert_eq!(env.correlation_id, "7");
        let (back, p) = decode(&env.encode_to_vec()).expect("decodes");
        assert_eq!(back.event_id, env.event_id);
        assert_eq!(p, payload);
        assert!(decode(b"\xff\xff").is_err());
        let empty = EventEnvelope {
            event_id: "x".into(),
            ..Default::default()
        };
        assert!(matches!(
            decode(&empty.encode_to_vec()),
            Err(DecodeError::Empty(_))
        ));
    }
}
