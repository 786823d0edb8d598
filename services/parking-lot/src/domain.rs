//! The ParkingLot context's rules: a day has a capacity (the seed's maxparking), each
//! Occupied allocation holds one numbered space, and a cancellation frees a space only
//! after its delivery was cancelled. No I/O here.

/// Where an allocation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocationState {
    /// Holds a space.
    Occupied,
    /// The day was full when the application came; holds nothing.
    FullyOccupied,
    /// Held a space, freed after its delivery was cancelled.
    Vacated,
    /// The cancellation arrived before the application: a late TicketReserved takes nothing.
    CanceledBeforeAllocation,
}

impl AllocationState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Occupied => "OCCUPIED",
            Self::FullyOccupied => "FULLY_OCCUPIED",
            Self::Vacated => "VACATED",
            Self::CanceledBeforeAllocation => "CANCELED_BEFORE_ALLOCATION",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "OCCUPIED" => Self::Occupied,
            "FULLY_OCCUPIED" => Self::FullyOccupied,
            "VACATED" => Self::Vacated,
            "CANCELED_BEFORE_ALLOCATION" => Self::CanceledBeforeAllocation,
            _ => return None,
        })
    }
}

/// What a cancellation means for the lot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCancel {
    /// A space is held: cancel its delivery (synchronously), then vacate.
    CancelDeliveryThenVacate,
    /// Nothing allocated yet: remember the cancellation so a late application takes nothing.
    RecordEarlyCancel,
    /// Nothing held (rejected, already vacated, already cancelled): free nothing, call no one.
    Nothing,
}

/// Decides what a cancellation does, given the allocation (if any) of the reservation.
/// Asked before the transaction, to know whether delivery must be called.
pub fn on_cancel(allocation: Option<AllocationState>) -> OnCancel {
    match allocation {
        Some(AllocationState::Occupied) => OnCancel::CancelDeliveryThenVacate,
        None => OnCancel::RecordEarlyCancel,
        Some(_) => OnCancel::Nothing,
    }
}

/// What a cancellation does inside the transaction, after delivery was (or was not) called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vacating {
    /// Delivery confirmed: free the space, publish Vacated.
    Vacate,
    /// Still nothing allocated: record the cancellation.
    RecordEarlyCancel,
    /// Nothing held: nothing to do.
    Nothing,
    /// A space was taken after delivery was (not) called: decide again later, from the start.
    AllocatedMeanwhile,
}

/// Decides a cancellation against the allocation as the transaction sees it. A space is
/// freed only when delivery confirmed the cancellation.
pub fn on_cancel_confirmed(
    allocation: Option<AllocationState>,
    delivery_canceled: bool,
) -> Vacating {
    match (on_cancel(allocation), delivery_canceled) {
        (OnCancel::CancelDeliveryThenVacate, true) => Vacating::Vacate,
        (OnCancel::CancelDeliveryThenVacate, false) => Vacating::AllocatedMeanwhile,
        (OnCancel::RecordEarlyCancel, _) => Vacating::RecordEarlyCancel,
        (OnCancel::Nothing, _) => Vacating::Nothing,
    }
}

/// A day as allocation sees it, read under the day's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LotDay {
    /// Spaces the day has (the admin's override or MAX_PARKING).
    pub capacity: i32,
    /// Spaces held now (the day's counter).
    pub occupied: i32,
    /// The highest space number the day ever handed out (0 when none).
    pub highest_handed_out: i32,
    /// Free space numbers up to `highest_handed_out` (freed by cancellations), ascending.
    /// Spaces go lowest first, so every number up to the highest was handed out once: a
    /// gap is always a space that was vacated and not taken again.
    pub gaps: Vec<i32>,
}

impl LotDay {
    /// True when some space up to the highest handed out is free: only then are the gaps
    /// worth reading.
    pub fn has_gaps(occupied: i32, highest_handed_out: i32) -> bool {
        highest_handed_out > occupied
    }

    /// The highest space handed out once `answers` are given.
    pub fn highest_after(&self, answers: &[Allocated]) -> i32 {
        answers
            .iter()
            .filter_map(|a| match a {
                Allocated::Occupied { space } => Some(*space),
                Allocated::FullyOccupied => None,
            })
            .fold(self.highest_handed_out, i32::max)
    }
}

/// ParkingLot's answer to one application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocated {
    /// A space was taken: the lowest one free.
    Occupied { space: i32 },
    /// The day was full.
    FullyOccupied,
}

/// Decides `applications` for one day in their order: each takes the lowest free space in
/// 1..=capacity while the day is under capacity, the rest are FullyOccupied. The quota
/// holds whatever the input: never more Occupied than `capacity - occupied`.
pub fn allocate(day: &LotDay, applications: usize) -> Vec<Allocated> {
    let room = usize::try_from((day.capacity - day.occupied).max(0)).unwrap_or(0);
    let gaps = day.gaps.iter().copied().filter(|s| *s >= 1);
    let above = (day.highest_handed_out.max(0) + 1)..;
    let mut free = gaps.chain(above).take_while(|space| *space <= day.capacity);
    (0..applications)
        .map(|i| match (i < room).then(|| free.next()).flatten() {
            Some(space) => Allocated::Occupied { space },
            None => Allocated::FullyOccupied,
        })
        .collect()
}

/// Spaces still free.
pub fn remaining(capacity: i32, occupied: i32) -> i32 {
    (capacity - occupied).max(0)
}

/// A capacity an admin may set.
pub fn check_capacity(capacity: i32) -> Result<i32, String> {
    if capacity < 0 {
        Err(format!("capacity must be zero or more (got {capacity})"))
    } else {
        Ok(capacity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_frees_only_an_occupied_space() {
        assert_eq!(
            on_cancel(Some(AllocationState::Occupied)),
            OnCancel::CancelDeliveryThenVacate
        );
        assert_eq!(on_cancel(None), OnCancel::RecordEarlyCancel);
        for s in [
            AllocationState::FullyOccupied,
            AllocationState::Vacated,
            AllocationState::CanceledBeforeAllocation,
        ] {
            assert_eq!(on_cancel(Some(s)), OnCancel::Nothing);
        }
    }

    /// The day as the store reads it when `held` are the spaces taken and spaces up to
    /// `highest` were handed out once.
    fn day_handed(capacity: i32, held: &[i32], highest: i32) -> LotDay {
        LotDay {
            capacity,
            occupied: held.len() as i32,
            highest_handed_out: highest,
            gaps: (1..=highest).filter(|s| !held.contains(s)).collect(),
        }
    }

    fn day(capacity: i32, held: &[i32]) -> LotDay {
        day_handed(capacity, held, held.iter().copied().max().unwrap_or(0))
    }

    fn spaces(decisions: &[Allocated]) -> Vec<Option<i32>> {
        decisions
            .iter()
            .map(|d| match d {
                Allocated::Occupied { space } => Some(*space),
                Allocated::FullyOccupied => None,
            })
            .collect()
    }

    #[test]
    fn spaces_are_taken_lowest_first() {
        assert_eq!(spaces(&allocate(&day(5, &[]), 2)), [Some(1), Some(2)]);
        assert_eq!(
            spaces(&allocate(&day(5, &[1, 2, 4]), 3)),
            [Some(3), Some(5), None]
        );
        assert_eq!(spaces(&allocate(&day(3, &[1, 2, 3]), 1)), [None]);
        assert_eq!(spaces(&allocate(&day(0, &[]), 2)), [None, None]);
        // A space above a lowered capacity does not block the ones below it.
        assert_eq!(spaces(&allocate(&day(3, &[1, 5]), 2)), [Some(2), None]);
        assert_eq!(
            spaces(&allocate(&day(4, &[1, 5]), 3)),
            [Some(2), Some(3), None]
        );
    }

    #[test]
    fn the_quota_holds_for_any_day() {
        // Every held set and capacity up to 7, every batch size up to 9: never more than
        // the room, never a held or out-of-range space, never twice the same, lowest first.
        for capacity in 0..=7 {
            for mask in 0u32..(1 << 7) {
                let held: Vec<i32> = (1..=7).filter(|s| mask & (1 << (s - 1)) != 0).collect();
                if held.len() as i32 > capacity.max(0) {
                    continue;
                }
                for n in 0..=9 {
                    // Handed out up to the highest held, or up to 7 (the rest vacated).
                    for d in [day(capacity, &held), day_handed(capacity, &held, 7)] {
                        let got: Vec<i32> =
                            spaces(&allocate(&d, n)).into_iter().flatten().collect();
                        let expected: Vec<i32> = (1..=capacity)
                            .filter(|s| !held.contains(s))
                            .take(n.min((capacity - held.len() as i32).max(0) as usize))
                            .collect();
                        assert_eq!(got, expected, "capacity {capacity} held {held:?} n {n}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_cancellation_frees_only_after_delivery() {
        use AllocationState::*;
        assert_eq!(on_cancel_confirmed(Some(Occupied), true), Vacating::Vacate);
        assert_eq!(
            on_cancel_confirmed(Some(Occupied), false),
            Vacating::AllocatedMeanwhile
        );
        assert_eq!(
            on_cancel_confirmed(None, false),
            Vacating::RecordEarlyCancel
        );
        for s in [FullyOccupied, Vacated, CanceledBeforeAllocation] {
            assert_eq!(on_cancel_confirmed(Some(s), true), Vacating::Nothing);
        }
    }

    #[test]
    fn capacity_and_remaining() {
        assert!(check_capacity(-1).is_err());
        assert_eq!(check_capacity(0), Ok(0));
        assert_eq!(remaining(5, 2), 3);
        assert_eq!(remaining(3, 5), 0);
    }

    #[test]
    fn states_round_trip() {
        for s in [
            AllocationState::Occupied,
            AllocationState::FullyOccupied,
            AllocationState::Vacated,
            AllocationState::CanceledBeforeAllocation,
        ] {
            assert_eq!(AllocationState::parse(s.as_str()), Some(s));
        }
    }
}
