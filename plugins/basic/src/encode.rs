//! Writing records with the optional `tag_key` / `time_key` fields that
//! several outputs offer (stdout, file, http).
//!
//! The fields are spliced into the record's JSON text
//! ([`Record::write_json_with`]), so a raw record is never parsed just to add
//! them. The tag's JSON value is built once per batch, not once per event.

use chrono::format::{Fixed, Item, Numeric, StrftimeItems};
use chrono::{DateTime, Utc};
use serde_json::Value;
use ulog_engine::{BuildError, EventTime, ParamKind, ParamSpec, Params, Record, Tag};

/// How `time_key` renders the event time.
#[derive(Clone, Debug)]
pub enum TimeFormat {
    /// Seconds since the epoch as a JSON float (fluentd's default).
    Float,
    /// A string rendered with a pre-compiled strftime format, in UTC.
    Strftime(Vec<Item<'static>>),
}

/// Compiles a strftime format once, refusing what chrono cannot render.
///
/// # Errors
/// A [`BuildError`] on `param` when `fmt` has an unknown `%` directive.
pub fn compile_strftime(param: &str, fmt: &str) -> Result<Vec<Item<'static>>, BuildError> {
    let items = StrftimeItems::new(fmt)
        .parse_to_owned()
        .map_err(|e| BuildError::param(param, format!("invalid strftime format {fmt:?}: {e}")))?;
    if items.iter().any(|i| matches!(i, Item::Error)) {
        return Err(BuildError::param(
            param,
            format!("invalid strftime format {fmt:?}"),
        ));
    }
    Ok(items)
}

/// Whether a compiled strftime format shows anything finer than a second
/// (then a rendering cannot be reused for the whole second).
pub fn strftime_uses_subsec(items: &[Item<'_>]) -> bool {
    items.iter().any(|i| {
        matches!(
            i,
            Item::Numeric(Numeric::Nanosecond, _)
                | Item::Fixed(
                    Fixed::Nanosecond
                        | Fixed::Nanosecond3
                        | Fixed::Nanosecond6
                        | Fixed::Nanosecond9
                        | Fixed::Internal(_)
                )
        )
    })
}

/// Seconds since the epoch as a float, computed from the whole seconds and
/// the fraction separately: `nanos as f64 / 1e9` loses the last digits
/// (1700000000.25 would print as 1700000000.2499998).
pub fn secs_f64(time: EventTime) -> f64 {
    time.secs() as f64 + f64::from(time.subsec_nanos()) / 1e9
}

/// An [`EventTime`] as a chrono UTC time (the epoch if out of chrono's range).
pub fn to_datetime(time: EventTime) -> DateTime<Utc> {
    DateTime::from_timestamp(time.secs(), time.subsec_nanos()).unwrap_or_default()
}

/// The optional fields an output adds to each record it writes.
#[derive(Clone, Debug, Default)]
pub struct ExtraFields {
    tag_key: Option<String>,
    time_key: Option<String>,
    time_format: Option<Vec<Item<'static>>>,
}

impl ExtraFields {
    /// The parameters this reads: `tag_key`, `time_key`, `time_format`.
    pub fn params() -> Vec<ParamSpec> {
        vec![
            ParamSpec::optional(
                "tag_key",
                ParamKind::Str,
                "When set, each written record gets the event's tag in this field.",
            ),
            ParamSpec::optional(
                "time_key",
                ParamKind::Str,
                "When set, each written record gets the event's time in this field \
                 (float seconds since the epoch unless `time_format` is given).",
            ),
            ParamSpec::optional(
                "time_format",
                ParamKind::Str,
                "A strftime format (UTC) for the `time_key` field, e.g. \"%Y-%m-%dT%H:%M:%S%.3fZ\"; \
                 unset writes float seconds.",
            ),
        ]
    }

    /// Reads the parameters declared by [`ExtraFields::params`].
    ///
    /// # Errors
    /// An invalid `time_format`.
    pub fn from_params(params: &Params) -> Result<Self, BuildError> {
        let time_format = params
            .opt_str("time_format")?
            .map(|f| compile_strftime("time_format", f))
            .transpose()?;
        Ok(Self {
            tag_key: params.opt_str("tag_key")?.map(str::to_string),
            time_key: params.opt_str("time_key")?.map(str::to_string),
            time_format,
        })
    }

    /// Fields configured by hand (embedders, tests).
    pub fn new(tag_key: Option<&str>, time_key: Option<&str>) -> Self {
        Self {
            tag_key: tag_key.map(str::to_string),
            time_key: time_key.map(str::to_string),
            time_format: None,
        }
    }

    /// True when neither field is configured (records are written as they are).
    pub fn is_empty(&self) -> bool {
        self.tag_key.is_none() && self.time_key.is_none()
    }

    /// Prepares the per-batch part (the tag's JSON value).
    pub fn for_batch(&self, tag: &Tag) -> BatchFields<'_> {
        BatchFields {
            extra: self,
            tag: self
                .tag_key
                .as_ref()
                .map(|_| Value::String(tag.as_str().to_string())),
        }
    }

    /// The time rendered as `time_key` would write it.
    pub fn time_value(&self, time: EventTime) -> Value {
        match &self.time_format {
            None => serde_json::Number::from_f64(secs_f64(time)).map_or(Value::Null, Value::Number),
            Some(items) => Value::String(
                to_datetime(time)
                    .format_with_items(items.iter())
                    .to_string(),
            ),
        }
    }
}

/// [`ExtraFields`] bound to one batch's tag.
pub struct BatchFields<'a> {
    extra: &'a ExtraFields,
    tag: Option<Value>,
}

impl BatchFields<'_> {
    /// Appends `record` as compact JSON with the configured fields added.
    pub fn write_json(&self, record: &Record, time: EventTime, out: &mut Vec<u8>) {
        let time_value = self
            .extra
            .time_key
            .as_ref()
            .map(|_| self.extra.time_value(time));
        let mut fields: [(&str, &Value); 2] = [("", &Value::Null); 2];
        let mut n = 0;
        if let (Some(k), Some(v)) = (&self.extra.tag_key, &self.tag) {
            fields[n] = (k, v);
            n += 1;
        }
        if let (Some(k), Some(v)) = (&self.extra.time_key, &time_value) {
            fields[n] = (k, v);
            n += 1;
        }
        record.write_json_with(out, &fields[..n]);
    }

    /// The record as a map with the configured fields added (for encodings
    /// other than JSON text). Borrows a parsed record when nothing is added.
    pub fn to_map<'r>(
        &self,
        record: &'r Record,
        time: EventTime,
    ) -> std::borrow::Cow<'r, serde_json::Map<String, Value>> {
        let mut map = record.to_map();
        if let (Some(k), Some(v)) = (&self.extra.tag_key, &self.tag) {
            map.to_mut().insert(k.clone(), v.clone());
        }
        if let Some(k) = &self.extra.time_key {
            map.to_mut().insert(k.clone(), self.extra.time_value(time));
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use serde_json::json;

    #[test]
    fn adds_tag_and_float_time_to_raw_text() {
        let extra = ExtraFields::new(Some("tag"), Some("time"));
        let rec = Record::from_json_bytes(Bytes::from_static(b"{\"a\":1}")).unwrap();
        let mut out = Vec::new();
        extra.for_batch(&Tag::new_unchecked("x.y")).write_json(
            &rec,
            EventTime::from_secs_nanos(1_700_000_000, 500_000_000),
            &mut out,
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&out).unwrap(),
            json!({"a":1,"tag":"x.y","time":1_700_000_000.5})
        );
    }

    #[test]
    fn strftime_time_format_renders_utc() {
        let extra = ExtraFields {
            tag_key: None,
            time_key: Some("t".into()),
            time_format: Some(compile_strftime("time_format", "%Y-%m-%dT%H:%M:%S%.3fZ").unwrap()),
        };
        let v = extra.time_value(EventTime::from_secs_nanos(0, 1_000_000));
        assert_eq!(v, json!("1970-01-01T00:00:00.001Z"));
    }

    #[test]
    fn bad_strftime_is_a_build_error() {
        let e = compile_strftime("time_format", "%Q").unwrap_err();
        assert_eq!(e.param.as_deref(), Some("time_format"));
    }

    #[test]
    fn subsecond_formats_are_detected() {
        assert!(strftime_uses_subsec(
            &compile_strftime("p", "%H%.3f").unwrap()
        ));
        assert!(!strftime_uses_subsec(
            &compile_strftime("p", "%Y/%m/%d %H:%M:%S").unwrap()
        ));
    }
}
