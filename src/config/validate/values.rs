//! The value checks every section uses: paths (resolved against the config's directory),
//! integers in a range, choices, durations ("30s", "15m", "2h", "30d") and sizes ("64 MiB").

use std::path::PathBuf;
use std::time::Duration;

use super::super::raw::{RawDuration, RawInt, RawSize};
use super::Check;

pub(super) const KIB: u64 = 1 << 10;
pub(super) const MIB: u64 = 1 << 20;
pub(super) const GIB: u64 = 1 << 30;
const DEFAULT_MAX_FILE_BYTES: u64 = 64 * MIB;
pub(super) const SECOND: Duration = Duration::from_secs(1);
pub(super) const MINUTE: Duration = Duration::from_secs(60);
pub(super) const DAY: Duration = Duration::from_secs(86_400);

impl Check<'_> {
    /// A number strictly between 0 and 1; `default` when absent.
    pub(super) fn fraction(&mut self, key: &str, value: Option<f64>, default: f64) -> f64 {
        let value = value.unwrap_or(default);
        if !(value > 0.0 && value < 1.0) {
            self.problem(
                key,
                format!("must be strictly between 0 and 1, got {value}"),
            );
            return default;
        }
        value
    }

    /// A finite number above 0; `default` when absent.
    pub(super) fn positive(&mut self, key: &str, value: Option<f64>, default: f64) -> f64 {
        let value = value.unwrap_or(default);
        if !(value.is_finite() && value > 0.0) {
            self.problem(key, format!("must be a positive number, got {value}"));
            return default;
        }
        value
    }

    /// A path, resolved against the config file's directory when relative.
    pub(super) fn path(&mut self, key: &str, value: String) -> PathBuf {
        if value.is_empty() {
            self.problem(key, "must not be empty");
        }
        let path = PathBuf::from(value);
        if path.is_absolute() {
            path
        } else {
            self.base.join(path)
        }
    }

    pub(super) fn path_or(
        &mut self,
        key: &str,
        value: Option<String>,
        default: impl FnOnce() -> PathBuf,
    ) -> PathBuf {
        match value {
            Some(value) => self.path(key, value),
            None => default(),
        }
    }

    /// An integer within `min..=max`, converted to the config's type; `default` when absent.
    pub(super) fn integer<T: TryFrom<i64> + Default>(
        &mut self,
        key: &str,
        value: Option<RawInt>,
        default: i64,
        min: i64,
        max: i64,
    ) -> T {
        let value = value.map_or(default, |RawInt(value)| value);
        if value < min {
            self.problem(key, format!("must be at least {min}, got {value}"));
        } else if value > max {
            self.problem(key, format!("must be at most {max}, got {value}"));
        }
        T::try_from(value).unwrap_or_default()
    }

    /// One of a fixed set of strings; the first option is the default.
    pub(super) fn choice<T: Copy>(
        &mut self,
        key: &str,
        value: Option<String>,
        default: T,
        options: &[(&str, T)],
    ) -> T {
        let Some(value) = value else {
            return default;
        };
        if let Some(&(_, chosen)) = options.iter().find(|(name, _)| *name == value) {
            return chosen;
        }
        let allowed: Vec<String> = options
            .iter()
            .map(|(name, _)| format!("\"{name}\""))
            .collect();
        self.problem(
            key,
            format!(
                "unknown value \"{value}\", expected one of {}",
                allowed.join(", ")
            ),
        );
        default
    }

    pub(super) fn duration(
        &mut self,
        key: &str,
        value: Option<RawDuration>,
        default: Duration,
        min: Duration,
    ) -> Duration {
        let Some(RawDuration(text)) = value else {
            return default;
        };
        match parse_duration(&text) {
            Ok(duration) if duration < min => {
                self.problem(
                    key,
                    format!("must be at least {}, got \"{text}\"", show_duration(min)),
                );
                default
            }
            Ok(duration) => duration,
            Err(message) => {
                self.problem(key, format!("cannot parse \"{text}\": {message}"));
                default
            }
        }
    }

    pub(super) fn size(&mut self, key: &str, value: Option<RawSize>) -> u64 {
        self.size_or(key, value, DEFAULT_MAX_FILE_BYTES)
    }

    /// A size in bytes (`64 MiB`, or a number of bytes), at least 1; `default` when unset or
    /// invalid (the problem recorded).
    pub(super) fn size_or(&mut self, key: &str, value: Option<RawSize>, default: u64) -> u64 {
        let bytes = match value {
            None => return default,
            Some(RawSize::Bytes(bytes)) => u64::try_from(bytes)
                .map_err(|_| format!("must be a positive number of bytes, got {bytes}")),
            Some(RawSize::Text(text)) => {
                parse_size(&text).map_err(|message| format!("cannot parse \"{text}\": {message}"))
            }
        };
        match bytes {
            Ok(0) => {
                self.problem(key, "must be at least 1 byte, got 0");
                default
            }
            Ok(bytes) => bytes,
            Err(message) => {
                self.problem(key, message);
                default
            }
        }
    }

    pub(super) fn name(&mut self, key: &str, value: Option<String>, default: &str) -> String {
        match value {
            None => default.to_owned(),
            Some(value) if value.trim().is_empty() => {
                self.problem(key, "must not be empty");
                value
            }
            Some(value) => value,
        }
    }

    /// A list of names: none empty, none twice.
    pub(super) fn names(&mut self, key: &str, values: Vec<String>) -> Vec<String> {
        for (index, value) in values.iter().enumerate() {
            if value.trim().is_empty() {
                self.problem(&format!("{key}[{index}]"), "must not be empty");
            } else if values[..index].contains(value) {
                self.problem(
                    &format!("{key}[{index}]"),
                    format!("\"{value}\" is listed twice"),
                );
            }
        }
        values
    }
}

/// Parses a duration such as `500ms`, `2s`, `15m`, `1h` or `30d`: a whole number and a unit,
/// optionally separated by spaces.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const EXPECTED: &str = "expected a whole number and a unit: ms, s, m, h or d (e.g. \"15m\")";
    let (number, unit) = split_number(text).ok_or_else(|| EXPECTED.to_owned())?;
    let seconds_per_unit: u64 = match unit {
        "ms" => {
            let millis = parse_count(number)?;
            return Ok(Duration::from_millis(millis));
        }
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "" => return Err(format!("missing unit: {EXPECTED}")),
        other => return Err(format!("unknown unit \"{other}\": {EXPECTED}")),
    };
    let seconds = parse_count(number)?
        .checked_mul(seconds_per_unit)
        .ok_or_else(|| "too large".to_owned())?;
    Ok(Duration::from_secs(seconds))
}

/// Parses a size such as `1048576`, `512 KiB`, `64 MiB` or `1 GB`: a whole number of bytes with
/// an optional binary (KiB, MiB, GiB) or decimal (KB, MB, GB) unit.
pub fn parse_size(text: &str) -> Result<u64, String> {
    const EXPECTED: &str = "expected a whole number and an optional unit: B, KiB, MiB, GiB, KB, MB or GB (e.g. \"64 MiB\")";
    let (number, unit) = split_number(text).ok_or_else(|| EXPECTED.to_owned())?;
    let multiplier: u64 = match unit {
        "" | "B" => 1,
        "KiB" => KIB,
        "MiB" => MIB,
        "GiB" => GIB,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(format!("unknown unit \"{other}\": {EXPECTED}")),
    };
    parse_count(number)?
        .checked_mul(multiplier)
        .ok_or_else(|| "too large".to_owned())
}

/// Splits `" 15 m "` into `("15", "m")`; `None` when it does not start with a digit.
fn split_number(text: &str) -> Option<(&str, &str)> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    if digits == 0 {
        return None;
    }
    let (number, unit) = text.split_at(digits);
    Some((number, unit.trim_start()))
}

fn parse_count(digits: &str) -> Result<u64, String> {
    digits.parse::<u64>().map_err(|_| "too large".to_owned())
}

/// Renders a duration the way the config writes it, for messages.
pub fn show_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    if duration.subsec_nanos() != 0 || seconds == 0 {
        format!("{}ms", duration.as_millis())
    } else if seconds.is_multiple_of(86_400) {
        format!("{}d", seconds / 86_400)
    } else if seconds.is_multiple_of(3600) {
        format!("{}h", seconds / 3600)
    } else if seconds.is_multiple_of(60) {
        format!("{}m", seconds / 60)
    } else {
        format!("{seconds}s")
    }
}
