//! Reading and printing moments for the audit commands: RFC 3339, a plain date, `now`,
//! or `@<unix seconds>`; printed as RFC 3339 UTC.

use std::time::{SystemTime, UNIX_EPOCH};

/// The range of Unix seconds a moment may take: years 0000 to 9999, which RFC 3339 can
/// write and whose microseconds fit in an i64.
const SECONDS: std::ops::RangeInclusive<i64> = -62_167_219_200..=253_402_300_799;

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
        if !SECONDS.contains(&seconds) {
            return Err(format!(
                "Unix time out of range (years 0000 to 9999): {input}"
            ));
        }
        return Ok(seconds * 1_000_000);
    }
    let bad = || {
        format!("not a time (use RFC 3339 like 2026-11-28T09:30:00Z, a date, `now` or @<unix seconds>): {input}")
    };
    // Every form below is ASCII: anything else is refused here, so the positions below
    // are character boundaries.
    if !s.is_ascii() {
        return Err(bad());
    }
    let num = |range: std::ops::Range<usize>| -> Result<i64, String> {
        s.get(range)
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse().ok())
            .ok_or_else(bad)
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if s.get(4..5) != Some("-")
        || s.get(7..8) != Some("-")
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
    {
        return Err(bad());
    }
    let days = days_from_civil(year, month as u32, day as u32);
    if s.len() == 10 {
        return Ok(days * 86_400 * 1_000_000);
    }
    if !matches!(s.get(10..11), Some("T" | "t" | " "))
        || s.get(13..14) != Some(":")
        || s.get(16..17) != Some(":")
    {
        return Err(bad());
    }
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = s.get(19..).ok_or_else(bad)?;
    let mut micros = 0i64;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let padded = format!("{:0<6}", &fraction[..digits.min(6)]);
        micros = padded.parse().map_err(|_| bad())?;
        rest = &fraction[digits..];
    }
    let offset_seconds = match rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2]
            if [h1, h2, m1, m2].iter().all(|b| b.is_ascii_digit()) =>
        {
            let digit = |b: &u8| i64::from(b - b'0');
            let (h, m) = (digit(h1) * 10 + digit(h2), digit(m1) * 10 + digit(m2));
            let sign = if *sign == b'-' { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return Err(bad()),
    };
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    Ok(seconds * 1_000_000 + micros)
}

/// Proleptic Gregorian date → days since 1970-01-01 (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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
