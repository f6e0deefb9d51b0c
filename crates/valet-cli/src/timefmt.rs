//! Reading and printing moments for the audit commands: RFC 3339, a plain date, `now`,
//! or `@<unix seconds>`; printed as RFC 3339 UTC.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use time::format_description::well_known::Rfc3339;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::{Date, OffsetDateTime};

const DATE: &[BorrowedFormatItem<'_>] = format_description!("[year]-[month]-[day]");

/// Parses a moment into Unix microseconds.
pub fn parse(input: &str) -> Result<i64, String> {
    let s = input.trim();
    if s == "now" {
        return Ok(SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64));
    }
    if let Some(seconds) = s.strip_prefix('@') {
        let seconds: i64 = seconds
            .parse()
            .map_err(|_| format!("not a Unix time: {input}"))?;
        return OffsetDateTime::from_unix_timestamp(seconds)
            .map(micros)
            .map_err(|_| format!("Unix time out of range (years -9999 to 9999): {input}"));
    }
    if let Ok(date) = Date::parse(s, DATE) {
        return Ok(micros(date.midnight().assume_utc()));
    }
    // RFC 3339 lets applications write a space between date and time.
    let s = match (s.get(..10), s.get(10..11), s.get(11..)) {
        (Some(date), Some(" "), Some(time)) => Cow::Owned(format!("{date}T{time}")),
        _ => Cow::Borrowed(s),
    };
    OffsetDateTime::parse(&s, &Rfc3339).map(micros).map_err(|_| {
        format!("not a time (use RFC 3339 like 2026-11-28T09:30:00Z, a date, `now` or @<unix seconds>): {input}")
    })
}

/// A moment's Unix microseconds (years -9999 to 9999 fit an i64 many times over).
fn micros(moment: OffsetDateTime) -> i64 {
    (moment.unix_timestamp_nanos() / 1000) as i64
}

pub fn format_micros(micros: i64) -> String {
    valet_wire::rfc3339_from_unix_millis(micros.div_euclid(1000))
}

pub fn format_millis(millis: i64) -> String {
    valet_wire::rfc3339_from_unix_millis(millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_accepted_forms() {
        assert_eq!(parse("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse("1970-01-02"), Ok(86_400_000_000));
        assert_eq!(
            parse("2000-02-29T12:00:00.5+02:00"),
            Ok((951_825_600 - 7200) * 1_000_000 + 500_000)
        );
        assert_eq!(parse("@10"), Ok(10_000_000));
        assert_eq!(parse("1970-01-01 00:00:01z"), Ok(1_000_000));
        assert!(parse("yesterday").is_err());
        assert!(parse("2026-13-01").is_err());
        let now = parse("now").expect("now");
        assert!(now > 1_700_000_000_000_000);
    }

    #[test]
    fn non_ascii_input_is_refused_not_a_panic() {
        for input in [
            "2026-01-01T00:00:00+0\u{e9}00",
            "2026-01-01T00:00:00+\u{e9}:00",
            "2026-01-01T00:00:00.\u{e9}Z",
            "2026-01-01T00:00:00\u{e9}",
            "\u{e9}026-01-01",
            "2026-01-01T00:00:00+00:0\u{e9}",
        ] {
            assert!(parse(input).is_err(), "{input}");
        }
    }

    #[test]
    fn unix_times_beyond_the_printable_range_are_refused() {
        for input in ["@99999999999999999", "@-99999999999999999", "@253402300800"] {
            let answer = parse(input);
            assert!(
                answer.as_ref().is_err_and(|e| e.contains("out of range")),
                "{input}: {answer:?}"
            );
        }
        // The last second of year 9999 is still a time.
        assert_eq!(parse("@253402300799"), Ok(253_402_300_799_000_000));
        assert_eq!(parse("@-1"), Ok(-1_000_000));
    }

    #[test]
    fn formats_round_trip() {
        let t = parse("2026-11-28T04:30:15.250Z").expect("parse");
        assert_eq!(format_micros(t), "2026-11-28T04:30:15.250Z");
    }
}
