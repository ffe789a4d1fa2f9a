//! Sizes and durations as lab files and the command line write them:
//! `512M`, `1GiB`, `4096`; `90s`, `2m`, `500ms`. The lab file's sections
//! (topology, tests) take them as [`SizeSpec`] and [`DurationSpec`],
//! which the JSON Schema describes with [`SIZE_PATTERN`] and
//! [`DURATION_PATTERN`].

use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

/// A size with its unit ([`parse_size`]).
pub const SIZE_PATTERN: &str = r"^\s*[0-9]+\s*(B|K|KiB|M|MiB|G|GiB|T|TiB)?\s*$";
/// A duration with its unit ([`parse_duration`]).
pub const DURATION_PATTERN: &str = r"^\s*[0-9]+\s*(us|ms|s|m|h)?\s*$";

/// A byte size: a number of bytes, or a number with K, M, G or T (binary
/// units: `512M` is 512 MiB; `KiB`, `MiB`, `GiB`, `TiB` also accepted).
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum SizeSpec {
    /// Bytes.
    Bytes(u64),
    /// With a unit, e.g. `512M`, `1G`, `64MiB`.
    Text(#[schemars(regex(pattern = SIZE_PATTERN))] String),
}

impl SizeSpec {
    /// The bytes it says, or why it says none.
    pub fn to_bytes(&self) -> Result<u64, String> {
        match self {
            SizeSpec::Bytes(n) => Ok(*n),
            SizeSpec::Text(t) => parse_size(t),
        }
    }
}

/// A duration: a number of seconds, or a number with `ms`, `s`, `m` or `h`.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum DurationSpec {
    /// Seconds.
    Seconds(u64),
    /// With a unit, e.g. `90s`, `2m`, `500ms`.
    Text(#[schemars(regex(pattern = DURATION_PATTERN))] String),
}

impl DurationSpec {
    /// The duration it says, or why it says none.
    pub fn to_duration(&self) -> Result<Duration, String> {
        match self {
            DurationSpec::Seconds(s) => Ok(Duration::from_secs(*s)),
            DurationSpec::Text(t) => parse_duration(t),
        }
    }
}

/// `text` as its leading number and the unit after it (trimmed).
fn number_and_unit(text: &str) -> Option<(u64, &str)> {
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    Some((number.parse().ok()?, unit.trim()))
}

/// Parses `512M`, `1G`, `64MiB`, `4096`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) =
        number_and_unit(text).ok_or_else(|| format!("{text:?} is not a size like 512M or 1G"))?;
    let shift = match unit {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}: use K, M, G or T (binary units)"
            ))
        }
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses `90s`, `2m`, `500ms`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = number_and_unit(text)
        .ok_or_else(|| format!("{text:?} is not a duration like 90s or 2m"))?;
    let too_long = || format!("{text:?} is too long");
    Ok(match unit {
        "us" => Duration::from_micros(number),
        "ms" => Duration::from_millis(number),
        "" | "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number.checked_mul(60).ok_or_else(too_long)?),
        "h" => Duration::from_secs(number.checked_mul(3600).ok_or_else(too_long)?),
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}: use us, ms, s, m or h"
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size(" 64 KiB "), Ok(64 << 10));
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert_eq!(SizeSpec::Bytes(7).to_bytes(), Ok(7));
        assert_eq!(SizeSpec::Text("2K".into()).to_bytes(), Ok(2048));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("99999999999999999h").is_err());
        assert_eq!(
            DurationSpec::Text("3s".into()).to_duration(),
            Ok(Duration::from_secs(3))
        );
    }
}
