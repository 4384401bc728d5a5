//! `filter validate`: a schema check on each record.
//!
//! Events from devices (a phone app's iBeacon enter/exit reports, say) are
//! only as good as the app that sent them. This filter checks declared fields
//! — type, presence, range, allowed values, a regex — and sends an event
//! that fails to the `errors` label with a precise reason
//! (`field "lat": 95.2 is above the maximum 90`), so nothing malformed
//! reaches a store and nothing is dropped silently. It can also build a
//! `{ "lat": .., "lon": .. }` object from two numeric fields, the shape the
//! Elasticsearch output maps to a `geo_point`.
//!
//! ```text
//! filter "phone.**" validate {
//!   fields = {
//!     household      = { type = "string", regex = /^hh-[0-9]{4}$/ }
//!     event          = { type = "string", one_of = ["enter", "exit"] }
//!     lat            = { type = "number", min = -90, max = 90 }
//!     lon            = { type = "number", min = -180, max = 180 }
//!     accuracy_m     = { type = "number", min = 0, required = false }
//!     "beacon.major" = { type = "int", min = 0, max = 65535 }
//!     time           = { type = "timestamp" }
//!   }
//!   geo_point = { lat = "lat", lon = "lon", into = "location" }
//! }
//! ```
//!
//! Field names with dots reach into nested objects (`beacon.major`). Every
//! rule is checked at load time (an unknown type, a regex that does not
//! compile, `min` above `max` are configuration errors with the field named).

use regex::Regex;
use serde_json::{Map, Value as Json};
use ulog_engine::{
    async_trait, Batch, BuildContext, BuildError, Filter, ParamKind, ParamSpec, Params,
    PluginError, PluginKind, PluginSpec, Registry, Rejected, Value,
};

/// The plugin's documentation and parameters.
pub fn spec() -> PluginSpec {
    PluginSpec::new(
        PluginKind::Filter,
        "validate",
        "Checks each record against declared fields (type, required, min/max, one_of, regex); \
         an event that fails goes to the `errors` label with the reason. Optionally builds a \
         geo point object from two numeric fields.",
    )
    .param(ParamSpec::required(
        "fields",
        ParamKind::Map,
        "The rules, field name (dots reach into objects) = { type = \"string\" | \"int\" | \
         \"number\" | \"bool\" | \"object\" | \"array\" | \"timestamp\" (RFC 3339 text or Unix \
         seconds), required = true, min = .., max = .., one_of = [..], regex = /../ }.",
    ))
    .param(ParamSpec::optional(
        "geo_point",
        ParamKind::Map,
        "Builds `{ \"lat\": .., \"lon\": .. }` into the field `into` (default `location`) from the \
         numeric fields `lat` and `lon` (default `lat` / `lon`), after the checks pass.",
    ))
}

/// Registers `filter validate`.
pub fn register(registry: &mut Registry) {
    registry.add_filter(spec(), |params: &Params, _: &BuildContext| {
        Ok(std::sync::Arc::new(ValidateFilter::from_params(params)?) as std::sync::Arc<dyn Filter>)
    });
}

/// The type a field must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FieldType {
    Str,
    Int,
    Number,
    Bool,
    Object,
    Array,
    Timestamp,
}

impl FieldType {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "string" => Self::Str,
            "int" | "integer" => Self::Int,
            "number" | "float" => Self::Number,
            "bool" | "boolean" => Self::Bool,
            "object" => Self::Object,
            "array" => Self::Array,
            "timestamp" => Self::Timestamp,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Str => "a string",
            Self::Int => "an integer",
            Self::Number => "a number",
            Self::Bool => "a boolean",
            Self::Object => "an object",
            Self::Array => "an array",
            Self::Timestamp => "a timestamp (RFC 3339 text or Unix seconds)",
        }
    }
}

/// One field's rule.
#[derive(Debug)]
struct Rule {
    name: String,
    path: Vec<String>,
    kind: FieldType,
    required: bool,
    min: Option<f64>,
    max: Option<f64>,
    one_of: Vec<Json>,
    regex: Option<Regex>,
}

#[derive(Debug)]
struct GeoPoint {
    lat: Vec<String>,
    lon: Vec<String>,
    into: String,
}

/// A built `validate` filter.
#[derive(Debug)]
pub struct ValidateFilter {
    rules: Vec<Rule>,
    geo: Option<GeoPoint>,
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

fn to_json(v: &Value) -> Option<Json> {
    Some(match v {
        Value::Str(s) => Json::String(s.clone()),
        Value::Int(i) => Json::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f).map(Json::Number)?,
        Value::Bool(b) => Json::Bool(*b),
        _ => return None,
    })
}

fn path(name: &str) -> Vec<String> {
    name.split('.').map(str::to_string).collect()
}

impl ValidateFilter {
    /// Builds the filter, checking every rule.
    ///
    /// # Errors
    /// A rule that is not a map, an unknown type or key, a bad regex, a
    /// number bound on a non-number, `min` above `max`.
    pub fn from_params(params: &Params) -> Result<Self, BuildError> {
        let mut rules = Vec::new();
        for (name, rule) in params.map("fields")? {
            let bad = |m: String| BuildError::param("fields", format!("field {name:?}: {m}"));
            let Value::Map(entries) = rule else {
                return Err(bad(format!(
                    "the rule must be a map such as {{ type = \"string\" }}, got {}",
                    rule.type_name()
                )));
            };
            let mut r = Rule {
                name: name.clone(),
                path: path(name),
                kind: FieldType::Str,
                required: true,
                min: None,
                max: None,
                one_of: Vec::new(),
                regex: None,
            };
            let mut typed = false;
            for (key, v) in entries {
                match (key.as_str(), v) {
                    ("type", Value::Str(t)) => {
                        r.kind = FieldType::parse(t).ok_or_else(|| {
                            bad(format!("unknown type {t:?}; use string, int, number, bool, object, array or timestamp"))
                        })?;
                        typed = true;
                    }
                    ("required", Value::Bool(b)) => r.required = *b,
                    ("min", v) if number(v).is_some() => r.min = number(v),
                    ("max", v) if number(v).is_some() => r.max = number(v),
                    ("one_of", Value::List(items)) => {
                        r.one_of = items
                            .iter()
                            .map(|i| {
                                to_json(i).ok_or_else(|| {
                                    bad(format!(
                                        "one_of takes strings, numbers or booleans, got {}",
                                        i.type_name()
                                    ))
                                })
                            })
                            .collect::<Result<_, _>>()?;
                    }
                    ("regex", Value::Regex(src) | Value::Str(src)) => {
                        r.regex = Some(
                            Regex::new(src)
                                .map_err(|e| bad(format!("regex does not compile: {e}")))?,
                        );
                    }
                    (k @ ("type" | "required" | "min" | "max" | "one_of" | "regex"), v) => {
                        return Err(bad(format!("`{k}` cannot be {}", v.type_name())))
                    }
                    (k, _) => {
                        return Err(bad(format!(
                        "unknown key `{k}`; a rule takes type, required, min, max, one_of, regex"
                    )))
                    }
                }
            }
            if !typed {
                return Err(bad("a rule needs a `type`".into()));
            }
            if (r.min.is_some() || r.max.is_some())
                && !matches!(
                    r.kind,
                    FieldType::Int | FieldType::Number | FieldType::Str | FieldType::Array
                )
            {
                return Err(bad(format!("min/max do not apply to {}", r.kind.name())));
            }
            if let (Some(lo), Some(hi)) = (r.min, r.max) {
                if lo > hi {
                    return Err(bad(format!("min {lo} is above max {hi}")));
                }
            }
            if r.regex.is_some() && r.kind != FieldType::Str {
                return Err(bad("regex applies to strings only".into()));
            }
            rules.push(r);
        }
        if rules.is_empty() {
            return Err(BuildError::param("fields", "declare at least one field"));
        }
        let geo = match params.get("geo_point") {
            None => None,
            Some(Value::Map(entries)) => {
                let mut g = GeoPoint {
                    lat: path("lat"),
                    lon: path("lon"),
                    into: "location".into(),
                };
                for (k, v) in entries {
                    let Value::Str(s) = v else {
                        return Err(BuildError::param(
                            "geo_point",
                            format!("`{k}` must be a field name"),
                        ));
                    };
                    match k.as_str() {
                        "lat" => g.lat = path(s),
                        "lon" => g.lon = path(s),
                        "into" => g.into = s.clone(),
                        other => {
                            return Err(BuildError::param(
                                "geo_point",
                                format!("unknown key `{other}`; use lat, lon, into"),
                            ))
                        }
                    }
                }
                Some(g)
            }
            Some(v) => {
                return Err(BuildError::param(
                    "geo_point",
                    format!("must be a map, got {}", v.type_name()),
                ))
            }
        };
        Ok(Self { rules, geo })
    }

    /// Checks one record; the first rule it breaks, as a reason.
    fn check(&self, record: &Map<String, Json>) -> Result<(), String> {
        for r in &self.rules {
            let Some(v) = lookup(record, &r.path) else {
                if r.required {
                    return Err(format!("field {:?} is missing", r.name));
                }
                continue;
            };
            if v.is_null() && !r.required {
                continue;
            }
            let fail = |m: String| Err(format!("field {:?}: {m}", r.name));
            let ok_type = match r.kind {
                FieldType::Str => v.is_string(),
                FieldType::Int => v.is_i64() || v.is_u64(),
                FieldType::Number => v.is_number(),
                FieldType::Bool => v.is_boolean(),
                FieldType::Object => v.is_object(),
                FieldType::Array => v.is_array(),
                FieldType::Timestamp => match v {
                    Json::Number(n) => n.as_f64().is_some_and(f64::is_finite),
                    Json::String(s) => chrono::DateTime::parse_from_rfc3339(s).is_ok(),
                    _ => false,
                },
            };
            if !ok_type {
                return fail(format!("{} is not {}", short(v), r.kind.name()));
            }
            // Strings and arrays are bounded by length, numbers by value.
            let measure = match v {
                Json::Number(n) => n.as_f64(),
                Json::String(s) if r.kind == FieldType::Str => Some(s.chars().count() as f64),
                Json::Array(a) => Some(a.len() as f64),
                _ => None,
            };
            let what = |n: f64| match v {
                Json::Number(_) => short(v),
                Json::String(_) => format!("length {n}"),
                _ => format!("{n} items"),
            };
            if let (Some(m), Some(lo)) = (measure, r.min) {
                if m < lo {
                    return fail(format!("{} is below the minimum {lo}", what(m)));
                }
            }
            if let (Some(m), Some(hi)) = (measure, r.max) {
                if m > hi {
                    return fail(format!("{} is above the maximum {hi}", what(m)));
                }
            }
            if !r.one_of.is_empty() && !r.one_of.iter().any(|a| same(a, v)) {
                let allowed: Vec<String> = r.one_of.iter().map(|a| a.to_string()).collect();
                return fail(format!("{} is not one of {}", short(v), allowed.join(", ")));
            }
            if let (Some(re), Json::String(s)) = (&r.regex, v) {
                if !re.is_match(s) {
                    return fail(format!("{} does not match /{}/", short(v), re.as_str()));
                }
            }
        }
        if let Some(g) = &self.geo {
            for (p, what) in [(&g.lat, "latitude"), (&g.lon, "longitude")] {
                match lookup(record, p) {
                    Some(Json::Number(_)) => {}
                    Some(v) => {
                        return Err(format!(
                            "geo point {what} {:?}: {} is not a number",
                            p.join("."),
                            short(v)
                        ))
                    }
                    None => return Err(format!("geo point {what} {:?} is missing", p.join("."))),
                }
            }
        }
        Ok(())
    }
}

fn lookup<'a>(record: &'a Map<String, Json>, path: &[String]) -> Option<&'a Json> {
    // A top-level key that contains dots wins over nesting.
    if path.len() > 1 {
        if let Some(v) = record.get(&path.join(".")) {
            return Some(v);
        }
    }
    let (first, rest) = path.split_first()?;
    let mut v = record.get(first)?;
    for p in rest {
        v = v.as_object()?.get(p)?;
    }
    Some(v)
}

/// 1 and 1.0 are the same number for `one_of`.
fn same(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// A value as it appears in a reason, cut to stay readable.
fn short(v: &Json) -> String {
    let mut s = v.to_string();
    if s.len() > 60 {
        let mut end = 57;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

#[async_trait]
impl Filter for ValidateFilter {
    /// Each record is checked on its own.
    fn order_independent(&self) -> bool {
        true
    }

    async fn filter(
        &self,
        batch: &mut Batch,
        rejects: &mut Vec<Rejected>,
    ) -> Result<(), PluginError> {
        let mut kept = Vec::with_capacity(batch.events.len());
        for mut event in batch.events.drain(..) {
            let result = self.check(event.record.map_mut());
            match result {
                Ok(()) => {
                    if let Some(g) = &self.geo {
                        let map = event.record.map_mut();
                        let lat = lookup(map, &g.lat).cloned();
                        let lon = lookup(map, &g.lon).cloned();
                        if let (Some(lat), Some(lon)) = (lat, lon) {
                            let mut point = Map::new();
                            point.insert("lat".into(), lat);
                            point.insert("lon".into(), lon);
                            map.insert(g.into.clone(), Json::Object(point));
                        }
                    }
                    kept.push(event);
                }
                Err(reason) => rejects.push(Rejected { event, reason }),
            }
        }
        batch.events = kept;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use ulog_engine::{Event, EventTime, Tag};

    fn filter(
        fields: Vec<(&str, Value)>,
        geo: Option<Value>,
    ) -> Result<ValidateFilter, BuildError> {
        let mut given: Vec<(String, Value)> = vec![(
            "fields".into(),
            Value::Map(
                fields
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            ),
        )];
        if let Some(g) = geo {
            given.push(("geo_point".into(), g));
        }
        let params = spec()
            .validate(&given)
            .map_err(|e| BuildError::param("x", format!("{e:?}")))?;
        ValidateFilter::from_params(&params)
    }

    fn rule(entries: &[(&str, Value)]) -> Value {
        Value::Map(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    fn s(t: &str) -> Value {
        Value::Str(t.into())
    }

    fn phone() -> ValidateFilter {
        filter(
            vec![
                (
                    "household",
                    rule(&[
                        ("type", s("string")),
                        ("regex", Value::Regex("^hh-[0-9]{4}$".into())),
                    ]),
                ),
                (
                    "event",
                    rule(&[
                        ("type", s("string")),
                        ("one_of", Value::List(vec![s("enter"), s("exit")])),
                    ]),
                ),
                (
                    "lat",
                    rule(&[
                        ("type", s("number")),
                        ("min", Value::Int(-90)),
                        ("max", Value::Int(90)),
                    ]),
                ),
                (
                    "lon",
                    rule(&[
                        ("type", s("number")),
                        ("min", Value::Int(-180)),
                        ("max", Value::Int(180)),
                    ]),
                ),
                (
                    "accuracy_m",
                    rule(&[
                        ("type", s("number")),
                        ("min", Value::Int(0)),
                        ("required", Value::Bool(false)),
                    ]),
                ),
                (
                    "beacon.major",
                    rule(&[
                        ("type", s("int")),
                        ("min", Value::Int(0)),
                        ("max", Value::Int(65535)),
                    ]),
                ),
                ("time", rule(&[("type", s("timestamp"))])),
            ],
            Some(Value::Map(vec![("into".into(), s("location"))])),
        )
        .unwrap()
    }

    fn good() -> Json {
        json!({"household": "hh-0042", "device": "d1", "beacon": {"uuid": "u", "major": 1, "minor": 7},
               "event": "enter", "lat": 52.04, "lon": -0.76, "accuracy_m": 12.5, "time": "2016-05-04T18:02:11Z"})
    }

    fn reason(f: &ValidateFilter, v: Json) -> Option<String> {
        f.check(v.as_object().unwrap()).err()
    }

    #[test]
    fn each_check_names_the_field_and_the_problem() {
        let f = phone();
        assert_eq!(reason(&f, good()), None);
        let cases: Vec<(&str, Json, &str)> = vec![
            (
                "lat",
                json!(95.2),
                "field \"lat\": 95.2 is above the maximum 90",
            ),
            (
                "lon",
                json!(-181),
                "field \"lon\": -181 is below the minimum -180",
            ),
            (
                "lat",
                json!("52.0"),
                "field \"lat\": \"52.0\" is not a number",
            ),
            (
                "event",
                json!("left"),
                "field \"event\": \"left\" is not one of \"enter\", \"exit\"",
            ),
            (
                "household",
                json!("house-1"),
                "field \"household\": \"house-1\" does not match /^hh-[0-9]{4}$/",
            ),
            (
                "time",
                json!("yesterday"),
                "field \"time\": \"yesterday\" is not a timestamp (RFC 3339 text or Unix seconds)",
            ),
            (
                "accuracy_m",
                json!(-1),
                "field \"accuracy_m\": -1 is below the minimum 0",
            ),
        ];
        for (field, value, want) in cases {
            let mut v = good();
            v[field] = value;
            assert_eq!(reason(&f, v).as_deref(), Some(want), "{field}");
        }
        let mut v = good();
        v.as_object_mut().unwrap().remove("household");
        assert_eq!(
            reason(&f, v).as_deref(),
            Some("field \"household\" is missing")
        );
        let mut v = good();
        v["beacon"]["major"] = json!(1.5);
        assert_eq!(
            reason(&f, v).as_deref(),
            Some("field \"beacon.major\": 1.5 is not an integer")
        );
        // Optional fields may be absent or null; timestamps may be numbers.
        let mut v = good();
        v.as_object_mut().unwrap().remove("accuracy_m");
        v["time"] = json!(1462384931.5);
        assert_eq!(reason(&f, v), None);
    }

    #[test]
    fn bad_rules_are_configuration_errors() {
        let cases: Vec<(Vec<(&str, Value)>, &str)> = vec![
            (
                vec![("a", rule(&[("type", s("text"))]))],
                "unknown type \"text\"",
            ),
            (
                vec![("a", rule(&[("kind", s("string"))]))],
                "unknown key `kind`",
            ),
            (
                vec![("a", rule(&[("required", Value::Bool(true))]))],
                "needs a `type`",
            ),
            (
                vec![(
                    "a",
                    rule(&[
                        ("type", s("number")),
                        ("min", Value::Int(5)),
                        ("max", Value::Int(1)),
                    ]),
                )],
                "min 5 is above max 1",
            ),
            (
                vec![(
                    "a",
                    rule(&[("type", s("string")), ("regex", Value::Regex("(".into()))]),
                )],
                "regex does not compile",
            ),
            (
                vec![(
                    "a",
                    rule(&[("type", s("int")), ("regex", Value::Regex("x".into()))]),
                )],
                "regex applies to strings only",
            ),
            (vec![("a", s("string"))], "the rule must be a map"),
        ];
        for (fields, want) in cases {
            let err = filter(fields, None).unwrap_err().to_string();
            assert!(err.contains(want), "{err} (wanted {want})");
        }
    }

    #[tokio::test]
    async fn failing_events_are_rejected_and_good_ones_get_a_location() {
        let f = phone();
        let mut bad = good();
        bad["lat"] = json!(120);
        let mut batch = Batch::new(
            Tag::parse("phone.events").unwrap(),
            vec![
                Event::new(
                    EventTime::from_unix_nanos(1),
                    good().as_object().unwrap().clone(),
                ),
                Event::new(
                    EventTime::from_unix_nanos(2),
                    bad.as_object().unwrap().clone(),
                ),
            ],
        );
        let mut rejects = Vec::new();
        f.filter(&mut batch, &mut rejects).await.unwrap();
        assert_eq!(batch.events.len(), 1);
        assert_eq!(
            batch.events[0].record.to_map().get("location"),
            Some(&json!({"lat": 52.04, "lon": -0.76}))
        );
        assert_eq!(rejects.len(), 1);
        assert_eq!(
            rejects[0].reason,
            "field \"lat\": 120 is above the maximum 90"
        );
        assert_eq!(rejects[0].event.time, EventTime::from_unix_nanos(2));
    }
}
