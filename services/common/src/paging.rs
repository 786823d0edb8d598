//! Keyset paging for list calls: the page token is the last id of the previous page,
//! so a page never skips or repeats rows when rows are added meanwhile.

use tonic::Status;

/// Default page size when the caller sends 0.
pub const DEFAULT_PAGE_SIZE: u64 = 20;
/// Largest page a caller may ask for.
pub const MAX_PAGE_SIZE: u64 = 200;

/// A validated page request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Rows to return.
    pub size: u64,
    /// Return rows with an id greater than this (0 for the first page).
    pub after_id: i64,
}

impl Page {
    /// Validates `page_size` and `page_token` as a list request carries them.
    pub fn from_request(page_size: i32, page_token: &str) -> Result<Self, Status> {
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n < 0 => {
                return Err(Status::invalid_argument(format!(
                    "page_size must not be negative (got {n})"
                )))
            }
            n => (n as u64).min(MAX_PAGE_SIZE),
        };
        let after_id = if page_token.is_empty() {
            0
        } else {
            page_token
                .parse::<i64>()
                .ok()
                .filter(|id| *id > 0)
                .ok_or_else(|| {
                    Status::invalid_argument(
                        "page_token is not one this service issued; send the next_page_token of the previous page",
                    )
                })?
        };
        Ok(Self { size, after_id })
    }

    /// The token for the next page, given the ids of this page (empty when it was the last).
    pub fn next_token(&self, returned: usize, last_id: Option<i64>) -> String {
        match last_id {
            Some(id) if returned as u64 == self.size => id.to_string(),
            _ => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_caps() {
        assert_eq!(
            Page::from_request(0, "").map(|p| p.size).ok(),
            Some(DEFAULT_PAGE_SIZE)
        );
        assert_eq!(
            Page::from_request(10_000, "").map(|p| p.size).ok(),
            Some(MAX_PAGE_SIZE)
        );
        assert_eq!(
            Page::from_request(5, "42").map(|p| p.after_id).ok(),
            Some(42)
        );
    }

    #[test]
    fn bad_input_is_invalid_argument() {
        for (size, token) in [(-1, ""), (5, "abc"), (5, "-3"), (5, "0")] {
            let err = Page::from_request(size, token).err().map(|s| s.code());
            assert_eq!(err, Some(tonic::Code::InvalidArgument), "{size} {token}");
        }
    }

    #[test]
    fn next_token_only_when_page_is_full() {
        let page = Page {
            size: 2,
            after_id: 0,
        };
        assert_eq!(page.next_token(2, Some(9)), "9");
        assert_eq!(page.next_token(1, Some(9)), "");
        assert_eq!(page.next_token(0, None), "");
    }
}
