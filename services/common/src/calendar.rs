//! Calendar days in the car park's time zone. A ticket is for one calendar day
//! ("YYYY-MM-DD"); "today" is today where the car park is, not where the server runs,
//! and booking opens a configurable number of days ahead.

use chrono::{NaiveDate, Utc};
use chrono_tz::Tz;

/// Why a date was refused; each message tells the caller what to send instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DateError {
    /// Not of the form YYYY-MM-DD.
    #[error("{field} {value:?} is not a date of the form YYYY-MM-DD")]
    Malformed { field: &'static str, value: String },
    /// Of the right form but no such day, e.g. 2026-02-30.
    #[error("{field} {value:?} is not a day of the calendar")]
    Impossible { field: &'static str, value: String },
    /// Before today in the car park's time zone.
    #[error("{field} {value} is in the past (today is {today} in {tz})")]
    Past {
        field: &'static str,
        value: NaiveDate,
        today: NaiveDate,
        tz: Tz,
    },
    /// After the booking window.
    #[error("{field} {value} is beyond the booking window: tickets can be booked up to {window_days} days ahead, until {last}")]
    TooFarAhead {
        field: &'static str,
        value: NaiveDate,
        last: NaiveDate,
        window_days: u32,
    },
}

/// Parses a calendar day "YYYY-MM-DD", telling a malformed value from an impossible day.
pub fn parse_day(field: &'static str, value: &str) -> Result<NaiveDate, DateError> {
    let b = value.as_bytes();
    let well_formed = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !well_formed {
        return Err(DateError::Malformed {
            field,
            value: value.to_owned(),
        });
    }
    // The digits were checked above, so these parses only fail on overflow, never here.
    let num = |range: std::ops::Range<usize>| value[range].parse::<u32>().unwrap_or(0);
    NaiveDate::from_ymd_opt(num(0..4) as i32, num(5..7), num(8..10)).ok_or(DateError::Impossible {
        field,
        value: value.to_owned(),
    })
}

/// The car park's calendar: its time zone and how far ahead booking opens.
#[derive(Debug, Clone, Copy)]
pub struct Calendar {
    /// Where "today" is decided.
    pub tz: Tz,
    /// Days after today that may still be booked.
    pub booking_window_days: u32,
}

impl Calendar {
    /// Today in the car park's time zone.
    pub fn today(&self) -> NaiveDate {
        Utc::now().with_timezone(&self.tz).date_naive()
    }

    /// Parses a date and checks it is bookable: not past, not beyond the window.
    pub fn bookable_day(&self, field: &'static str, value: &str) -> Result<NaiveDate, DateError> {
        let day = parse_day(field, value)?;
        self.check_bookable(field, day, self.today())?;
        Ok(day)
    }

    /// Checks a parsed day against `today` (split out so tests choose the day).
    pub fn check_bookable(
        &self,
        field: &'static str,
        day: NaiveDate,
        today: NaiveDate,
    ) -> Result<(), DateError> {
        if day < today {
            return Err(DateError::Past {
                field,
                value: day,
                today,
                tz: self.tz,
            });
        }
        let last = today.checked_add_days(chrono::Days::new(u64::from(self.booking_window_days)));
        if let Some(last) = last.filter(|last| day > *last) {
            return Err(DateError::TooFarAhead {
                field,
                value: day,
                last,
                window_days: self.booking_window_days,
            });
        }
        Ok(())
    }
}

/// Formats a day the way the contract carries it.
pub fn format_day(day: NaiveDate) -> String {
    day.format("%Y-%m-%d").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("test date")
    }

    #[test]
    fn parses_and_formats_round_trip() {
        assert_eq!(parse_day("d", "2026-07-13"), Ok(day("2026-07-13")));
        assert_eq!(format_day(day("2026-07-03")), "2026-07-03");
    }

    #[test]
    fn tells_malformed_from_impossible() {
        for bad in [
            "",
            "2026-7-13",
            "13-07-2026",
            "2026/07/13",
            "2026-07-13T00",
            "２０２６-07-13",
            "abcd-ef-gh",
        ] {
            assert!(
                matches!(parse_day("d", bad), Err(DateError::Malformed { .. })),
                "{bad}"
            );
        }
        for bad in ["2026-02-30", "2026-13-01", "2026-00-10", "2025-02-29"] {
            assert!(
                matches!(parse_day("d", bad), Err(DateError::Impossible { .. })),
                "{bad}"
            );
        }
        assert!(parse_day("d", "2028-02-29").is_ok());
    }

    #[test]
    fn booking_window_is_inclusive() {
        let cal = Calendar {
            tz: chrono_tz::Asia::Seoul,
            booking_window_days: 30,
        };
        let today = day("2026-11-26");
        assert!(cal.check_bookable("d", today, today).is_ok());
        assert!(cal.check_bookable("d", day("2026-12-26"), today).is_ok());
        assert!(matches!(
            cal.check_bookable("d", day("2026-12-27"), today),
            Err(DateError::TooFarAhead { .. })
        ));
        assert!(matches!(
            cal.check_bookable("d", day("2026-11-25"), today),
            Err(DateError::Past { .. })
        ));
    }
}
