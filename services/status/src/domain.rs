//! The status view's rules: every event is a fact about one reservation; facts fill in
//! what they know, and the stage only moves forward by rank, so the view converges
//! whatever order events arrive in. No I/O here.

use parking_common::pb::event_envelope::Payload;

/// How far an application has come (names as in the contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Unspecified,
    Reserved,
    Occupied,
    FullyOccupied,
    DeliveryRequested,
    Shipped,
    CancelRequested,
    DeliveryCanceled,
    Vacated,
}

impl Stage {
    /// Later stages rank higher; Occupied and FullyOccupied are alternatives of one step.
    pub fn rank(self) -> i32 {
        match self {
            Self::Unspecified => 0,
            Self::Reserved => 1,
            Self::Occupied | Self::FullyOccupied => 2,
            Self::DeliveryRequested => 3,
            Self::Shipped => 4,
            Self::CancelRequested => 5,
            Self::DeliveryCanceled => 6,
            Self::Vacated => 7,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "STAGE_UNSPECIFIED",
            Self::Reserved => "STAGE_RESERVED",
            Self::Occupied => "STAGE_OCCUPIED",
            Self::FullyOccupied => "STAGE_FULLY_OCCUPIED",
            Self::DeliveryRequested => "STAGE_DELIVERY_REQUESTED",
            Self::Shipped => "STAGE_SHIPPED",
            Self::CancelRequested => "STAGE_CANCEL_REQUESTED",
            Self::DeliveryCanceled => "STAGE_DELIVERY_CANCELED",
            Self::Vacated => "STAGE_VACATED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Unspecified,
            Self::Reserved,
            Self::Occupied,
            Self::FullyOccupied,
            Self::DeliveryRequested,
            Self::Shipped,
            Self::CancelRequested,
            Self::DeliveryCanceled,
            Self::Vacated,
        ]
        .into_iter()
        .find(|stage| stage.as_str() == s)
    }
}

/// One reservation as the view shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub reservation_id: i64,
    /// 0 until an event that carries it arrived.
    pub member_id: i64,
    /// Empty until an event that carries it arrived.
    pub reservation_date: String,
    pub stage: Stage,
    pub parking_lot_id: i64,
    pub ticket_delivery_id: i64,
    pub space_number: i32,
}

impl View {
    pub fn empty(reservation_id: i64) -> Self {
        Self {
            reservation_id,
            member_id: 0,
            reservation_date: String::new(),
            stage: Stage::Unspecified,
            parking_lot_id: 0,
            ticket_delivery_id: 0,
            space_number: 0,
        }
    }
}

/// What one event tells about its reservation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fact {
    pub reservation_id: i64,
    pub stage: Option<Stage>,
    pub member_id: Option<i64>,
    pub reservation_date: Option<String>,
    pub parking_lot_id: Option<i64>,
    pub ticket_delivery_id: Option<i64>,
    pub space_number: Option<i32>,
}

/// Reads the fact in an event.
pub fn fact_of(payload: &Payload) -> Fact {
    let some_day = |d: &str| (!d.is_empty()).then(|| d.to_owned());
    match payload {
        Payload::TicketReserved(e) => Fact {
            reservation_id: e.reservation_id,
            stage: Some(Stage::Reserved),
            member_id: Some(e.member_id),
            reservation_date: some_day(&e.reservation_date),
            ..Fact::default()
        },
        Payload::TicketReservationCanceled(e) => Fact {
            reservation_id: e.reservation_id,
            stage: Some(Stage::CancelRequested),
            member_id: Some(e.member_id),
            reservation_date: some_day(&e.reservation_date),
            ..Fact::default()
        },
        Payload::Occupied(e) => Fact {
            reservation_id: e.reservation_id,
            stage: Some(Stage::Occupied),
            member_id: Some(e.member_id),
            reservation_date: some_day(&e.reservation_date),
            parking_lot_id: Some(e.parking_lot_id),
            space_number: Some(e.space_number),
            ..Fact::default()
        },
        Payload::FullyOccupied(e) => Fact {
            reservation_id: e.reservation_id,
            stage: Some(Stage::FullyOccupied),
            member_id: Some(e.member_id),
            reservation_date: some_day(&e.reservation_date),
            ..Fact::default()
        },
        Payload::Vacated(e) => Fact {
            reservation_id: e.reservation_id,
            stage: Some(Stage::Vacated),
            member_id: Some(e.member_id),
            reservation_date: some_day(&e.reservation_date),
            parking_lot_id: Some(e.parking_lot_id),
            space_number: Some(e.space_number),
            ..Fact::default()
        },
        Payload::DeliveryRequested(e) => Fact {
            reservation_id: e.reservation_id,
            stage: Some(Stage::DeliveryRequested),
            member_id: Some(e.member_id),
            reservation_date: some_day(&e.reservation_date),
            ticket_delivery_id: Some(e.delivery_id),
            space_number: Some(e.space_number),
            ..Fact::default()
        },
        Payload::Shipped(e) => Fact {
            reservation_id: e.reservation_id,
            stage: Some(Stage::Shipped),
            ticket_delivery_id: Some(e.delivery_id),
            ..Fact::default()
        },
        Payload::DeliveryCanceled(e) => Fact {
            reservation_id: e.reservation_id,
            stage: Some(Stage::DeliveryCanceled),
            ticket_delivery_id: Some(e.delivery_id),
            ..Fact::default()
        },
    }
}

/// The view after a fact: known fields filled (zero/empty never overwrites), stage only forward.
pub fn apply(mut view: View, fact: &Fact) -> View {
    if let Some(stage) = fact.stage {
        if stage.rank() > view.stage.rank() {
            view.stage = stage;
        }
    }
    if let Some(m) = fact.member_id.filter(|m| *m > 0) {
        view.member_id = m;
    }
    if let Some(d) = &fact.reservation_date {
        view.reservation_date = d.clone();
    }
    if let Some(p) = fact.parking_lot_id.filter(|p| *p > 0) {
        view.parking_lot_id = p;
    }
    if let Some(d) = fact.ticket_delivery_id.filter(|d| *d > 0) {
        view.ticket_delivery_id = d;
    }
    if let Some(s) = fact.space_number.filter(|s| *s > 0) {
        view.space_number = s;
    }
    view
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_common::pb::*;

    fn events() -> Vec<Payload> {
        vec![
            Payload::TicketReserved(TicketReserved {
                reservation_id: 1,
                member_id: 7,
                reservation_date: "2026-12-01".into(),
            }),
            Payload::Occupied(Occupied {
                reservation_id: 1,
                member_id: 7,
                reservation_date: "2026-12-01".into(),
                parking_lot_id: 11,
                space_number: 3,
            }),
            Payload::DeliveryRequested(DeliveryRequested {
                reservation_id: 1,
                delivery_id: 21,
                member_id: 7,
                reservation_date: "2026-12-01".into(),
                space_number: 3,
            }),
            Payload::Shipped(Shipped {
                reservation_id: 1,
                delivery_id: 21,
            }),
        ]
    }

    fn fold(order: &[usize]) -> View {
        let all = events();
        order
            .iter()
            .fold(View::empty(1), |v, i| apply(v, &fact_of(&all[*i])))
    }

    #[test]
    fn converges_in_any_order() {
        let expected = View {
            reservation_id: 1,
            member_id: 7,
            reservation_date: "2026-12-01".into(),
            stage: Stage::Shipped,
            parking_lot_id: 11,
            ticket_delivery_id: 21,
            space_number: 3,
        };
        // Every permutation of the four events.
        let mut orders = vec![];
        for a in 0..4 {
            for b in 0..4 {
                for c in 0..4 {
                    for d in 0..4 {
                        let o = [a, b, c, d];
                        let mut s = o.to_vec();
                        s.sort();
                        s.dedup();
                        if s.len() == 4 {
                            orders.push(o);
                        }
                    }
                }
            }
        }
        assert_eq!(orders.len(), 24);
        for o in orders {
            assert_eq!(fold(&o), expected, "order {o:?}");
        }
    }

    #[test]
    fn a_later_stage_never_goes_back() {
        let v = apply(
            View::empty(1),
            &Fact {
                reservation_id: 1,
                stage: Some(Stage::Vacated),
                ..Fact::default()
            },
        );
        let v = apply(
            v,
            &Fact {
                reservation_id: 1,
                stage: Some(Stage::Reserved),
                ..Fact::default()
            },
        );
        assert_eq!(v.stage, Stage::Vacated);
        assert_eq!(Stage::FullyOccupied.rank(), Stage::Occupied.rank());
    }

    #[test]
    fn stage_names_round_trip() {
        for s in [
            "STAGE_RESERVED",
            "STAGE_VACATED",
            "STAGE_UNSPECIFIED",
            "STAGE_FULLY_OCCUPIED",
        ] {
            assert_eq!(Stage::parse(s).map(Stage::as_str), Some(s));
        }
        assert_eq!(Stage::parse("x"), None);
    }
}
