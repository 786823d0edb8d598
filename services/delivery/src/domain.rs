//! The TicketDelivery aggregate: an order to hand a physical ticket to a member, on the
//! parking manager's list (REQUESTED -> SHIPPED; either -> CANCELED). No I/O here.

/// Where a delivery order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    Requested,
    Shipped,
    Canceled,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "REQUESTED",
            Self::Shipped => "SHIPPED",
            Self::Canceled => "CANCELED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "REQUESTED" => Self::Requested,
            "SHIPPED" => Self::Shipped,
            "CANCELED" => Self::Canceled,
            _ => return None,
        })
    }
}

/// What ShipTicket does to an order in a given state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ship {
    /// REQUESTED -> SHIPPED, publish Shipped.
    Now,
    /// Already shipped: answer the same again (the manager's retry is harmless).
    Already,
    /// The reservation was cancelled: there is no ticket to hand over.
    Refused,
}

pub fn ship(state: DeliveryState) -> Ship {
    match state {
        DeliveryState::Requested => Ship::Now,
        DeliveryState::Shipped => Ship::Already,
        DeliveryState::Canceled => Ship::Refused,
    }
}

/// States ShipTicket moves to SHIPPED (the ones [`ship`] answers `Now` for).
pub const SHIPPABLE: [DeliveryState; 1] = [DeliveryState::Requested];

/// States CancelDelivery moves to CANCELED (and publishes DeliveryCanceled); a shipped
/// ticket is cancelled too: the member no longer has a space for it.
pub const CANCELLABLE: [DeliveryState; 2] = [DeliveryState::Requested, DeliveryState::Shipped];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ship_only_requested() {
        assert_eq!(ship(DeliveryState::Requested), Ship::Now);
        assert_eq!(ship(DeliveryState::Shipped), Ship::Already);
        assert_eq!(ship(DeliveryState::Canceled), Ship::Refused);
        for s in [
            DeliveryState::Requested,
            DeliveryState::Shipped,
            DeliveryState::Canceled,
        ] {
            assert_eq!(SHIPPABLE.contains(&s), ship(s) == Ship::Now, "{s:?}");
        }
    }

    #[test]
    fn cancel_is_idempotent() {
        assert!(!CANCELLABLE.contains(&DeliveryState::Canceled));
    }

    #[test]
    fn states_round_trip() {
        for s in [
            DeliveryState::Requested,
            DeliveryState::Shipped,
            DeliveryState::Canceled,
        ] {
            assert_eq!(DeliveryState::parse(s.as_str()), Some(s));
        }
    }
}
