//! The logs' timestamps, written as `tracing-subscriber` writes them by default (RFC 3339 in
//! UTC, to the microsecond: `2026-12-02T02:09:34.243529Z`), but with the date and time of day
//! worked out once a second per thread instead of for every line: every request writes an
//! access line, and the calendar arithmetic and padded fields cost it more than the line's own
//! fields.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

/// The timer of the logs.
pub(crate) struct LogTime;

thread_local! {
    /// The second this thread last wrote a timestamp in, and its `YYYY-MM-DDTHH:MM:SS`.
    static LAST: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

impl FormatTime for LogTime {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        LAST.with_borrow_mut(|(second, text)| {
            if *second != now.as_secs() {
                *second = now.as_secs();
                text.clear();
                write_second(text, now.as_secs())?;
            }
            write!(w, "{text}.{:06}Z", now.subsec_micros())
        })
    }
}

/// `YYYY-MM-DDTHH:MM:SS` of `secs` after the Unix epoch, in UTC (the proleptic Gregorian
/// calendar, by days since 0000-03-01 so that a leap day ends its year).
fn write_second(out: &mut String, secs: u64) -> fmt::Result {
    let days = secs / 86_400;
    let of_day = secs % 86_400;
    // Days since 0000-03-01, in 400-year eras of 146,097 days.
    let since = days + 719_468;
    let era = since / 146_097;
    let of_era = since % 146_097;
    let year_of_era = (of_era - of_era / 1_460 + of_era / 36_524 - of_era / 146_096) / 365;
    let of_year = of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months from March: 153 days in each five.
    let month_from_march = (5 * of_year + 2) / 153;
    let day = of_year - (153 * month_from_march + 2) / 5 + 1;
    let (month, year) = if month_from_march < 10 {
        (month_from_march + 3, year_of_era + era * 400)
    } else {
        (month_from_march - 9, year_of_era + era * 400 + 1)
    };
    write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        of_day / 3_600,
        of_day / 60 % 60,
        of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second(secs: u64) -> String {
        let mut out = String::new();
        write_second(&mut out, secs).unwrap();
        out
    }

    #[test]
    fn seconds_read_as_the_calendar_does() {
        assert_eq!(second(0), "1970-01-01T00:00:00");
        assert_eq!(second(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(second(1_709_164_799), "2024-02-28T23:59:59");
        assert_eq!(second(1_796_176_213), "2026-12-02T01:50:13");
        assert_eq!(second(4_107_542_399), "2100-02-28T23:59:59");
        assert_eq!(second(4_107_542_400), "2100-03-01T00:00:00");
    }

    #[test]
    fn timestamps_are_written_as_the_default_timer_writes_them() {
        // Both read the clock: try again if a second turned between the two reads.
        for _ in 0..10 {
            let mut ours = String::new();
            let mut theirs = String::new();
            LogTime.format_time(&mut Writer::new(&mut ours)).unwrap();
            tracing_subscriber::fmt::time::SystemTime
                .format_time(&mut Writer::new(&mut theirs))
                .unwrap();
            assert_eq!(ours.len(), theirs.len(), "{ours} against {theirs}");
            assert!(ours.ends_with('Z') && ours.as_bytes()[19] == b'.', "{ours}");
            if ours[..19] == theirs[..19] {
                return;
            }
        }
        panic!("the timestamps never agreed on their second");
    }
}
