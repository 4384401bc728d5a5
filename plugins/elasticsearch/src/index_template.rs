//! The index template installed before the first document is written.
//!
//! A template has to be in place before an index is created: once a field
//! has a mapping, it keeps it. Left to dynamic mapping, the first reading of
//! a day decides the type of each field for the whole day: `power_w: 483`
//! (a whole number) makes the field `long` and every later `483.5` is
//! truncated; `location: {"lat":…, "lon":…}` becomes two floats that no map
//! can draw; a time string may become `text`. So the output installs a
//! template, on its first write, when configured to:
//!
//! - `template = "trial"`: the built-in mappings for the trial's data
//!   ([`trial_mappings`]): phone iBeacon events, OWL meters, Nissan EV
//!   batteries;
//! - `template_file = "…json"`: your own template body.
//!
//! It uses the composable API, `PUT _index_template/<name>` (Elasticsearch
//! 7.8+, OpenSearch 1.0+). `template_api = "legacy"` uses `PUT
//! _template/<name>` instead, for Elasticsearch 6.x/7.0–7.7 clusters (the
//! body is the legacy format: `index_patterns`, `order`, `settings`,
//! `mappings` at the top); there is no automatic fallback, the choice is
//! the configuration's.

use serde_json::{json, Map, Value};

/// Which API installs the template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateApi {
    /// `_index_template` (composable).
    Composable,
    /// `_template` (legacy, for old clusters).
    Legacy,
}

/// Where the template's content comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum TemplateSource {
    /// The built-in trial mappings.
    Trial,
    /// A JSON file with the template body (read on the first write).
    File(std::path::PathBuf),
}

/// A template to install, as configured.
#[derive(Debug, Clone)]
pub struct TemplateSpec {
    /// Its name on the cluster.
    pub name: String,
    /// Its content.
    pub source: TemplateSource,
    /// Which API.
    pub api: TemplateApi,
    /// The index patterns it applies to.
    pub patterns: Vec<String>,
    /// Its priority (composable) or order (legacy) among templates that
    /// match the same index.
    pub priority: i64,
    /// Whether the output writes to a data stream (the template then says
    /// so: `"data_stream": {}`).
    pub data_stream: bool,
    /// The document field with the event time, mapped as a date.
    pub time_key: String,
    /// Whether the time field is `date_nanos` (nanosecond precision).
    pub time_nanos: bool,
    /// The document field with the tag, if any (a keyword).
    pub tag_key: Option<String>,
}

impl TemplateSpec {
    /// The request path, relative to a host.
    pub fn path(&self) -> String {
        match self.api {
            TemplateApi::Composable => format!("/_index_template/{}", self.name),
            TemplateApi::Legacy => format!("/_template/{}", self.name),
        }
    }

    /// The request body.
    ///
    /// # Errors
    /// A template file that cannot be read or is not a JSON object.
    pub fn body(&self) -> Result<Vec<u8>, String> {
        let mut body = match &self.source {
            TemplateSource::Trial => {
                let mappings =
                    trial_mappings(&self.time_key, self.time_nanos, self.tag_key.as_deref());
                match self.api {
                    TemplateApi::Composable => json!({
                        "template": { "mappings": mappings },
                        "_meta": { "managed_by": "ulog", "template": "trial" }
                    }),
                    TemplateApi::Legacy => json!({ "mappings": mappings }),
                }
            }
            TemplateSource::File(path) => {
                let text = std::fs::read(path)
                    .map_err(|e| format!("reading the template file {}: {e}", path.display()))?;
                let v: Value = serde_json::from_slice(&text).map_err(|e| {
                    format!("the template file {} is not JSON: {e}", path.display())
                })?;
                if !v.is_object() {
                    return Err(format!(
                        "the template file {} must hold a JSON object",
                        path.display()
                    ));
                }
                v
            }
        };
        let obj = body.as_object_mut().unwrap_or_else(|| unreachable!());
        obj.entry("index_patterns")
            .or_insert_with(|| json!(self.patterns));
        match self.api {
            TemplateApi::Composable => {
                obj.entry("priority")
                    .or_insert_with(|| json!(self.priority));
                if self.data_stream {
                    obj.entry("data_stream").or_insert_with(|| json!({}));
                }
            }
            TemplateApi::Legacy => {
                obj.entry("order").or_insert_with(|| json!(self.priority));
            }
        }
        serde_json::to_vec(&body).map_err(|e| e.to_string())
    }
}

/// The trial's mappings: field names as the phone-events schema
/// (`docs/plugins/phone-events.md`), `input owl` (`docs/plugins/owl.md`) and
/// `input nissan` (`docs/plugins/nissan.md`) write them.
///
/// - `location`: `geo_point`, for the beacon heatmap (geotile/geohash
///   aggregations) and `geo_bounding_box` queries.
/// - the event time (`time_key`), the phone's `time`, the car's
///   `reading_time`, OWL's `timestamp` (Unix seconds): dates.
/// - power, energy, cost, temperature and state-of-charge figures:
///   `double`, so a first whole-number reading cannot make them `long`.
/// - battery millivolts, radio figures, beacon major/minor: `long`.
/// - household, device, vin, gateway and beacon ids, packet kinds, event
///   kinds: `keyword` (exact match, terms aggregations), as are all other
///   strings (`dynamic_templates`), instead of analysed text.
pub fn trial_mappings(time_key: &str, time_nanos: bool, tag_key: Option<&str>) -> Value {
    let keyword = || json!({ "type": "keyword", "ignore_above": 1024 });
    let double = || json!({ "type": "double" });
    let long = || json!({ "type": "long" });
    let date = || json!({ "type": "date" });
    let mut props = Map::new();
    props.insert(
        time_key.to_string(),
        json!({ "type": if time_nanos { "date_nanos" } else { "date" } }),
    );
    if let Some(t) = tag_key {
        props.insert(t.to_string(), keyword());
    }
    for k in [
        "household",
        "device",
        "device_id",
        "vin",
        "event",
        "packet",
        "firmware",
        "api",
        "plug_state",
        "charging_status",
    ] {
        props.insert(k.to_string(), keyword());
    }
    // Phone iBeacon events.
    props.insert("location".into(), json!({ "type": "geo_point" }));
    props.insert("time".into(), date());
    props.insert("lat".into(), double());
    props.insert("lon".into(), double());
    props.insert("accuracy_m".into(), double());
    props.insert(
        "beacon".into(),
        json!({ "properties": {
            "uuid": keyword(), "major": long(), "minor": long()
        }}),
    );
    // OWL meters: electricity, solar, heating, hot water, weather.
    props.insert(
        "timestamp".into(),
        json!({ "type": "date", "format": "epoch_second||strict_date_optional_time" }),
    );
    for k in ["rssi_dbm", "lqi", "battery_mv", "battery_pct"] {
        props.insert(k.to_string(), long());
    }
    for k in [
        "total_power_w",
        "total_energy_today_wh",
        "cost_now",
        "cost_today",
        "tariff_price",
        "generating_w",
        "exporting_w",
        "generated_today_wh",
        "exported_today_wh",
        "temperature_c",
    ] {
        props.insert(k.to_string(), double());
    }
    props.insert(
        "channels".into(),
        json!({ "properties": {
            "index": long(), "power_w": double(), "energy_today_wh": double()
        }}),
    );
    props.insert(
        "zones".into(),
        json!({ "properties": {
            "zone_id": keyword(), "rssi_dbm": long(), "lqi": long(), "battery_mv": long(),
            "temperature_c": double(), "required_c": double(), "ambient_c": double(),
            "humidity_pct": double()
        }}),
    );
    // Nissan EV batteries.
    props.insert("reading_time".into(), date());
    for k in [
        "soc_pct",
        "battery_capacity",
        "battery_remaining",
        "battery_remaining_wh",
        "battery_remaining_kwh",
        "battery_bars",
        "battery_temperature_c",
        "range_ac_on_km",
        "range_ac_off_km",
        "charging_power_w",
    ] {
        props.insert(k.to_string(), double());
    }
    props.insert("plugged".into(), json!({ "type": "boolean" }));
    props.insert("charging".into(), json!({ "type": "boolean" }));
    json!({
        "dynamic_templates": [
            { "strings_as_keywords": {
                "match_mapping_type": "string",
                "mapping": { "type": "keyword", "ignore_above": 1024 }
            }}
        ],
        "properties": props
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(api: TemplateApi, data_stream: bool) -> TemplateSpec {
        TemplateSpec {
            name: "ulog-mk".into(),
            source: TemplateSource::Trial,
            api,
            patterns: vec!["mk-*".into()],
            priority: 200,
            data_stream,
            time_key: "@timestamp".into(),
            time_nanos: false,
            tag_key: Some("tag".into()),
        }
    }

    #[test]
    fn composable_and_legacy_bodies() {
        let s = spec(TemplateApi::Composable, true);
        assert_eq!(s.path(), "/_index_template/ulog-mk");
        let b: Value = serde_json::from_slice(&s.body().unwrap()).unwrap();
        assert_eq!(b["index_patterns"], json!(["mk-*"]));
        assert_eq!(b["priority"], 200);
        assert_eq!(b["data_stream"], json!({}));
        let props = &b["template"]["mappings"]["properties"];
        assert_eq!(props["location"]["type"], "geo_point");
        assert_eq!(props["@timestamp"]["type"], "date");
        assert_eq!(props["tag"]["type"], "keyword");
        assert_eq!(props["household"]["type"], "keyword");
        assert_eq!(props["generating_w"]["type"], "double");
        assert_eq!(props["battery_mv"]["type"], "long");
        assert_eq!(props["channels"]["properties"]["power_w"]["type"], "double");

        let s = spec(TemplateApi::Legacy, false);
        assert_eq!(s.path(), "/_template/ulog-mk");
        let b: Value = serde_json::from_slice(&s.body().unwrap()).unwrap();
        assert_eq!(b["order"], 200);
        assert!(b.get("template").is_none());
        assert_eq!(b["mappings"]["properties"]["location"]["type"], "geo_point");
    }

    #[test]
    fn a_file_keeps_its_own_patterns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        std::fs::write(&path, r#"{"index_patterns":["own-*"],"template":{}}"#).unwrap();
        let mut s = spec(TemplateApi::Composable, false);
        s.source = TemplateSource::File(path.clone());
        let b: Value = serde_json::from_slice(&s.body().unwrap()).unwrap();
        assert_eq!(b["index_patterns"], json!(["own-*"]));
        assert_eq!(b["priority"], 200);
        std::fs::write(&path, "[1]").unwrap();
        assert!(s.body().unwrap_err().contains("JSON object"));
        s.source = TemplateSource::File(dir.path().join("missing.json"));
        assert!(s.body().unwrap_err().contains("missing.json"));
    }
}
