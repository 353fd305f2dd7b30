//! Human units for sizes ("256MiB", "1GiB", "4096"), durations ("500ms", "10s") and rates: parsed
//! from the config and the command line, and printed back. A leaf module every layer may use.
//!
//! Sizes are binary: KiB/MiB/GiB/TiB, with DRBD's short forms k/K/M/G/T meaning the same, and
//! a bare number meaning bytes. Decimal SI suffixes (kB, MB) are refused rather than guessed.

use serde::{Deserialize, Deserializer};
use std::fmt;

/// A size in bytes, parsed from a number or a string with a binary unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_bytes(self.0))
    }
}

/// Render a byte count with the largest binary unit that divides it exactly (or with one
/// decimal when it does not: "1.5 GiB" style is for humans, not for re-parsing).
pub fn format_bytes(v: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (name, mul) in UNITS {
        if v >= mul && v.is_multiple_of(mul) {
            return format!("{}{}", v / mul, name);
        }
    }
    for (name, mul) in UNITS {
        if v >= mul {
            return format!("{:.1}{}", v as f64 / mul as f64, name);
        }
    }
    format!("{v}B")
}

/// Parse "256MiB", "1 GiB", "4k", "4096". Errors say what was wrong with the text.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "{text:?} is not a size: it must start with a number (e.g. \"256MiB\")"
        ));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?}: number too large"))?;
    let mul: u64 = match unit.trim() {
        "" | "B" | "b" => 1,
        "KiB" | "k" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "TiB" | "T" => 1 << 40,
        u @ ("kB" | "KB" | "MB" | "GB" | "TB") => {
            return Err(format!(
                "{text:?}: decimal unit {u:?} is ambiguous; use KiB, MiB, GiB or TiB"
            ))
        }
        u => {
            return Err(format!(
                "{text:?}: unknown unit {u:?}; use B, KiB, MiB, GiB or TiB"
            ))
        }
    };
    n.checked_mul(mul)
        .ok_or_else(|| format!("{text:?}: size overflows 64 bits"))
}

/// Parse "500ms", "10s", "2m", or a bare number of milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. \"500ms\", \"10s\")"))?;
    let mul = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1000,
        "m" | "min" => 60_000,
        u => {
            return Err(format!(
                "{text:?}: unknown duration unit {u:?}; use ms, s or m"
            ))
        }
    };
    n.checked_mul(mul)
        .ok_or_else(|| format!("{text:?}: duration overflows"))
}

/// A config value given as a bare number, or as a string with a unit that `parse` reads.
fn number_or_unit<'de, D: Deserializer<'de>>(
    d: D,
    parse: fn(&str) -> Result<u64, String>,
) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u64),
        S(String),
    }
    match Raw::deserialize(d)? {
        Raw::N(n) => Ok(n),
        Raw::S(s) => parse(&s).map_err(serde::de::Error::custom),
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        number_or_unit(d, parse_size).map(ByteSize)
    }
}

/// A duration in milliseconds, parsed from a number (ms) or a string with a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct DurationMs(pub u64);

impl<'de> Deserialize<'de> for DurationMs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        number_or_unit(d, parse_duration_ms).map(DurationMs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("1MB").unwrap_err().contains("ambiguous"));
        assert!(parse_size("1XB").unwrap_err().contains("unknown unit"));
        assert!(parse_size("MiB")
            .unwrap_err()
            .contains("must start with a number"));
        assert!(parse_size("99999999999TiB")
            .unwrap_err()
            .contains("overflow"));
    }

    #[test]
    fn format_roundtrips_exact_units() {
        for v in [512u64, 4096, 256 << 20, 3 << 30, 5 << 40] {
            assert_eq!(parse_size(&format_bytes(v)), Ok(v), "{v}");
        }
        assert_eq!(format_bytes(1536 << 20), "1536MiB");
        assert_eq!(format_bytes((1536 << 20) + 5), "1.5GiB");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("10s"), Ok(10_000));
        assert_eq!(parse_duration_ms("2m"), Ok(120_000));
        assert_eq!(parse_duration_ms("7"), Ok(7));
        assert!(parse_duration_ms("1h").is_err());
    }
}

/// Parse a link rate into bytes per second: "100Mbit", "1Gbit", "500kbit" (decimal bits, as tc
/// writes them), "12MiB/s", "4096B/s" (binary bytes), or a bare number of bytes per second.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a rate (e.g. \"100Mbit\", \"12MiB/s\")"))?;
    let bytes_per_s = match unit.trim() {
        "" | "B/s" => n,
        "bit" | "bps" => n / 8.0,
        "kbit" | "Kbit" => n * 1e3 / 8.0,
        "mbit" | "Mbit" => n * 1e6 / 8.0,
        "gbit" | "Gbit" => n * 1e9 / 8.0,
        "KiB/s" => n * 1024.0,
        "MiB/s" => n * 1048576.0,
        "GiB/s" => n * 1073741824.0,
        u => {
            return Err(format!(
                "{text:?}: unknown rate unit {u:?}; use kbit, Mbit, Gbit, KiB/s, MiB/s or GiB/s"
            ))
        }
    };
    if !(1.0..=1e12).contains(&bytes_per_s) {
        return Err(format!("{text:?}: rate out of range (1 B/s to 8 Tbit/s)"));
    }
    Ok(bytes_per_s.round() as u64)
}

/// Render bytes per second as Mbit/s, the unit WAN links are sold in.
pub fn format_rate(bytes_per_s: u64) -> String {
    let bits = bytes_per_s as f64 * 8.0;
    if bits >= 1e9 {
        format!("{:.2}Gbit", bits / 1e9)
    } else if bits >= 1e6 {
        format!("{:.1}Mbit", bits / 1e6)
    } else {
        format!("{:.1}kbit", bits / 1e3)
    }
}

/// A rate in bytes per second, parsed from a number or a string with a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Rate(pub u64);

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        number_or_unit(d, parse_rate).map(Rate)
    }
}

#[cfg(test)]
mod rate_tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("100Mbit"), Ok(12_500_000));
        assert_eq!(parse_rate("1Gbit"), Ok(125_000_000));
        assert_eq!(parse_rate("500kbit"), Ok(62_500));
        assert_eq!(parse_rate("12MiB/s"), Ok(12 << 20));
        assert_eq!(parse_rate("2.5Mbit"), Ok(312_500));
        assert!(parse_rate("100Mb")
            .unwrap_err()
            .contains("unknown rate unit"));
        assert!(parse_rate("0").is_err());
        assert_eq!(format_rate(12_500_000), "100.0Mbit");
    }
}
