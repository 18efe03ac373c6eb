//! Time as sensei keeps it: unix milliseconds (what the database stores), to and from RFC 3339
//! (what notifications, JSON output and records carry).

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub fn now_ms() -> i64 {
    let now = OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

fn datetime(ms: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

/// `2026-03-02T06:00:17.250Z`.
pub fn rfc3339(ms: i64) -> String {
    datetime(ms)
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// `2026-03-02 06:00 UTC`, for people.
pub fn human(ms: i64) -> String {
    match datetime(ms) {
        Some(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        None => ms.to_string(),
    }
}

pub fn parse(text: &str) -> Option<i64> {
    OffsetDateTime::parse(text, &Rfc3339)
        .ok()
        .and_then(|t| i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok())
}

/// Serde for `i64` unix ms as RFC 3339.
pub mod rfc3339_ms {
    use serde::{Deserialize, Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::rfc3339(*ms))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let text = String::deserialize(d)?;
        super::parse(&text).ok_or_else(|| de::Error::custom(format!("not RFC 3339: {text}")))
    }
}

/// Serde for `Option<i64>` unix ms as RFC 3339 or null.
pub mod rfc3339_ms_opt {
    use serde::{Deserialize, Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
        match ms {
            Some(ms) => s.serialize_str(&super::rfc3339(*ms)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) => super::parse(&text)
                .map(Some)
                .ok_or_else(|| de::Error::custom(format!("not RFC 3339: {text}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        let ms = 1_772_431_217_250;
        assert_eq!(super::rfc3339(ms), "2026-03-02T06:00:17.25Z");
        assert_eq!(super::parse(&super::rfc3339(ms)), Some(ms));
        assert_eq!(super::human(ms), "2026-03-02 06:00:17 UTC");
    }
}
