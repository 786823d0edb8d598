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
pub fn on_cancel(allocation: Option<AllocationState>) -> OnCancel {
    match allocation {
        Some(AllocationState::Occupied) => OnCancel::CancelDeliveryThenVacate,
        None => OnCancel::RecordEarlyCancel,
        Some(_) => OnCancel::Nothing,
    }
}

/// The lowest space number in 1..=capacity not in `taken`.
pub fn lowest_free_space(taken: &[i32], capacity: i32) -> Option<i32> {
    (1..=capacity).find(|n| !taken.contains(n))
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

    #[test]
    fn spaces_are_reused_lowest_first() {
        assert_eq!(lowest_free_space(&[], 5), Some(1));
        assert_eq!(lowest_free_space(&[1, 2, 4], 5), Some(3));
        assert_eq!(lowest_free_space(&[1, 2, 3], 3), None);
        assert_eq!(lowest_free_space(&[], 0), None);
        // A space above a lowered capacity does not block the ones below it.
        assert_eq!(lowest_free_space(&[1, 5], 3), Some(2));
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
