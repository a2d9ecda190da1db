//! Durations as Go and Kubernetes spell them (`30s`, `1m30s`, `500ms`,
//! `2h`, `1.5s`), for flags and config files; a bare number is seconds.

use std::time::Duration;

/// Parses a Go-style duration; a bare non-negative number is seconds.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("an empty duration".into());
    }
    if let Ok(secs) = s.parse::<f64>() {
        return seconds(secs, s);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{s:?}: a number without a unit (ns, us, ms, s, m, h)"))?;
        if num_len == 0 {
            return Err(format!("{s:?}: expected a number at {rest:?}"));
        }
        let n: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("{s:?}: {:?} is not a number", &rest[..num_len]))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            u => return Err(format!("{s:?}: unknown unit {u:?} (ns, us, ms, s, m, h)")),
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    seconds(total, s)
}

fn seconds(secs: f64, s: &str) -> Result<Duration, String> {
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?}: not a non-negative duration"));
    }
    // A year is more than any timeout or period here could mean.
    if secs > 365.0 * 86_400.0 {
        return Err(format!("{s:?}: longer than a year"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A clap value parser: [`parse`] within `[min, max]`.
pub fn within(min: Duration, max: Duration) -> impl Fn(&str) -> Result<Duration, String> + Clone {
    move |s| {
        let d = parse(s)?;
        if d < min || d > max {
            return Err(format!("{s:?}: must be from {min:?} to {max:?}"));
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_and_bare_seconds() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        for bad in ["", "s", "10x", "-1s", "1e999", "99999999h", "1s5", "NaN"] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        let p = within(Duration::from_secs(1), Duration::from_secs(60));
        assert!(p("0s").is_err() && p("2m").is_err() && p("45s").is_ok());
    }
}
