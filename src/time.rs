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

/// Adds, beside every time in a JSON document, the same time in RFC 3339: a key ending in `_at`
/// (or named `since`) holding unix milliseconds gets a sibling `<key>_rfc3339`. The
/// milliseconds stay, for programs; people and `jq` read the other.
pub fn with_rfc3339(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            let times: Vec<(String, String)> = map
                .iter()
                .filter(|(k, _)| k.ends_with("_at") || k.as_str() == "since")
                .filter_map(|(k, v)| Some((format!("{k}_rfc3339"), rfc3339(v.as_i64()?))))
                .collect();
            for v in map.values_mut() {
                with_rfc3339(v);
            }
            for (k, v) in times {
                map.entry(k).or_insert(serde_json::Value::String(v));
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(with_rfc3339),
        _ => {}
    }
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
    use super::*;

    #[test]
    fn json_times_get_rfc3339_beside_them() {
        let mut v = serde_json::json!({
            "detected_at": 1_772_431_217_250_i64,
            "resolved_at": null,
            "events": [{"fired_at": 0, "since": 1_772_431_200_000_i64, "window_ms": 60_000}],
        });
        with_rfc3339(&mut v);
        assert_eq!(v["detected_at_rfc3339"], "2026-03-02T06:00:17.25Z");
        assert_eq!(v["detected_at"], 1_772_431_217_250_i64);
        assert!(v.get("resolved_at_rfc3339").is_none());
        assert_eq!(v["events"][0]["since_rfc3339"], "2026-03-02T06:00:00Z");
        assert_eq!(v["events"][0]["fired_at_rfc3339"], "1970-01-01T00:00:00Z");
        assert!(v["events"][0].get("window_ms_rfc3339").is_none());
    }

    #[test]
    fn round_trip() {
        let ms = 1_772_431_217_250;
        assert_eq!(super::rfc3339(ms), "2026-03-02T06:00:17.25Z");
        assert_eq!(super::parse(&super::rfc3339(ms)), Some(ms));
        assert_eq!(super::human(ms), "2026-03-02 06:00:17 UTC");
    }
}
