//! Nissan battery-status responses into one typed reading.
//!
//! Two services report a Leaf's battery: the legacy **Carwings** API
//! (`BatteryStatusRecordsRequest.php`, `BatteryStatusCheckResultRequest.php`:
//! every value a string, ranges in metres, capacity in bars or tenths of
//! kWh, three date formats) and the current **NissanConnect / Kamereon**
//! API (`/v1/cars/{vin}/battery-status`, JSON:API attributes, numbers,
//! ranges in km). Both become the same record, documented in
//! `docs/plugins/nissan.md`.

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde_json::{Map, Value};

/// Why a response is not a battery reading.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResponseError {
    /// The body is not JSON, or not the expected shape.
    #[error("unexpected response: {0}")]
    Shape(String),
    /// The service answered with an error status in its body.
    #[error("the service answered status {status}: {message}")]
    Status {
        /// The `status` field.
        status: i64,
        /// Its `message`, if any.
        message: String,
    },
    /// A value that should be a number or a date is not.
    #[error("{field}: {text:?} is not {what}")]
    Value {
        /// The field.
        field: String,
        /// Its text.
        text: String,
        /// What it should have been.
        what: &'static str,
    },
}

/// One battery reading, in ulog's schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// When the car took the reading (the car's own time), if it says.
    pub time: Option<DateTime<Utc>>,
    /// The record fields.
    pub fields: Map<String, Value>,
}

/// A Carwings "check result" poll: not ready yet, or the fresh reading.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckResult {
    /// `responseFlag` "0": the car has not answered yet; poll again.
    Pending,
    /// The car answered.
    Ready(Reading),
}

fn shape(m: impl Into<String>) -> ResponseError {
    ResponseError::Shape(m.into())
}

/// Checks the `status` field Carwings puts in every body.
fn carwings_status(body: &Value) -> Result<(), ResponseError> {
    let status = match body.get("status") {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        _ => return Err(shape("no `status` field")),
    };
    if status != 200 {
        return Err(ResponseError::Status {
            status,
            message: body
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        });
    }
    Ok(())
}

/// A Carwings number: a string such as `"39192.0"`, or `""` for none.
fn num(obj: &Value, field: &str) -> Result<Option<f64>, ResponseError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => {
            s.trim()
                .parse::<f64>()
                .map(Some)
                .map_err(|_| ResponseError::Value {
                    field: field.into(),
                    text: s.clone(),
                    what: "a number",
                })
        }
        Some(other) => Err(ResponseError::Value {
            field: field.into(),
            text: other.to_string(),
            what: "a number",
        }),
    }
}

fn json_num(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        Value::from(f as i64)
    } else {
        serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
    }
}

fn round1(f: f64) -> f64 {
    (f * 10.0).round() / 10.0
}

/// Carwings writes dates three ways; all are read as UTC (the service's own
/// `NotificationDateAndTime` is UTC; the others are taken as such, see the docs).
pub fn carwings_time(text: &str) -> Option<DateTime<Utc>> {
    let t = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for fmt in [
        "%Y/%m/%d %H:%M",
        "%b %d, %Y %I:%M %p",
        "%d-%b-%Y %H:%M",
        "%Y-%m-%d %H:%M:%S",
    ] {
        if let Ok(n) = NaiveDateTime::parse_from_str(&t, fmt) {
            return Some(Utc.from_utc_datetime(&n));
        }
    }
    None
}

fn minutes(
    block: Option<&Value>,
    hour_key: &str,
    min_key: &str,
) -> Result<Option<f64>, ResponseError> {
    let Some(b) = block else { return Ok(None) };
    let (h, m) = (num(b, hour_key)?, num(b, min_key)?);
    Ok(match (h, m) {
        (None, None) => None,
        (h, m) => Some(h.unwrap_or(0.0) * 60.0 + m.unwrap_or(0.0)),
    })
}

fn insert_time(fields: &mut Map<String, Value>, time: Option<DateTime<Utc>>) {
    if let Some(t) = time {
        fields.insert(
            "reading_time".into(),
            t.format("%Y-%m-%dT%H:%M:%SZ").to_string().into(),
        );
    }
}

/// Parses `BatteryStatusRecordsRequest.php`: the last reading the service
/// holds. `Ok(None)` when it holds none (`"BatteryStatusRecords": []`).
///
/// # Errors
/// A body that is not a battery status, or a `status` other than 200.
pub fn carwings_records(body: &Value) -> Result<Option<Reading>, ResponseError> {
    carwings_status(body)?;
    let rec = body
        .get("BatteryStatusRecords")
        .ok_or_else(|| shape("no `BatteryStatusRecords`"))?;
    if rec.as_array().is_some_and(Vec::is_empty) {
        return Ok(None);
    }
    if !rec.is_object() {
        return Err(shape("`BatteryStatusRecords` is not an object"));
    }
    let status = rec
        .get("BatteryStatus")
        .ok_or_else(|| shape("no `BatteryStatus`"))?;
    let mut f = Map::new();
    f.insert("api".into(), "carwings".into());
    let capacity = num(status, "BatteryCapacity")?;
    let remaining = num(status, "BatteryRemainingAmount")?;
    let soc = match status
        .get("SOC")
        .map(|s| num(s, "Value"))
        .transpose()?
        .flatten()
    {
        Some(v) => Some(v),
        None => match (remaining, capacity) {
            (Some(r), Some(c)) if c > 0.0 => Some(round1(r / c * 100.0)),
            _ => None,
        },
    };
    if let Some(v) = soc {
        f.insert("soc_pct".into(), json_num(v));
    }
    if let Some(c) = capacity {
        f.insert("battery_capacity".into(), json_num(c));
    }
    if let Some(r) = remaining {
        f.insert("battery_remaining".into(), json_num(r));
    }
    if let Some(wh) = num(status, "BatteryRemainingAmountWH")? {
        f.insert("battery_remaining_wh".into(), json_num(wh));
    }
    let charging_status = status
        .get("BatteryChargingStatus")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    f.insert(
        "charging".into(),
        Value::Bool(!charging_status.is_empty() && charging_status != "NOT_CHARGING"),
    );
    f.insert("charging_status".into(), charging_status.into());
    plug(&mut f, rec.get("PluginState").and_then(Value::as_str));
    ranges(
        &mut f,
        num(rec, "CruisingRangeAcOn")?,
        num(rec, "CruisingRangeAcOff")?,
        1000.0,
    );
    let mut ttf = Map::new();
    for (key, name) in [
        ("TimeRequiredToFull", "slow"),
        ("TimeRequiredToFull200", "normal"),
        ("TimeRequiredToFull200_6kW", "fast"),
    ] {
        if let Some(m) = minutes(rec.get(key), "HourRequiredToFull", "MinutesRequiredToFull")? {
            ttf.insert(name.into(), json_num(m));
        }
    }
    if !ttf.is_empty() {
        f.insert("time_to_full_min".into(), Value::Object(ttf));
    }
    let time = [
        "NotificationDateAndTime",
        "OperationDateAndTime",
        "TargetDate",
    ]
    .iter()
    .find_map(|k| rec.get(*k).and_then(Value::as_str).and_then(carwings_time));
    insert_time(&mut f, time);
    Ok(Some(Reading { time, fields: f }))
}

fn plug(f: &mut Map<String, Value>, state: Option<&str>) {
    if let Some(s) = state {
        f.insert(
            "plugged".into(),
            Value::Bool(s != "NOT_CONNECTED" && !s.is_empty()),
        );
        f.insert("plug_state".into(), s.into());
    }
}

fn ranges(f: &mut Map<String, Value>, on: Option<f64>, off: Option<f64>, per_km: f64) {
    if let Some(v) = on {
        f.insert("range_ac_on_km".into(), json_num(round1(v / per_km)));
    }
    if let Some(v) = off {
        f.insert("range_ac_off_km".into(), json_num(round1(v / per_km)));
    }
}

/// Parses `BatteryStatusCheckResultRequest.php`, the answer to a fresh
/// reading asked of the car.
///
/// # Errors
/// As [`carwings_records`].
pub fn carwings_check_result(body: &Value) -> Result<CheckResult, ResponseError> {
    carwings_status(body)?;
    match body.get("responseFlag").and_then(Value::as_str) {
        Some("0") => return Ok(CheckResult::Pending),
        Some("1") => {}
        other => {
            return Err(shape(format!(
                "responseFlag is {other:?}, not \"0\" or \"1\""
            )))
        }
    }
    let mut f = Map::new();
    f.insert("api".into(), "carwings".into());
    let capacity = num(body, "batteryCapacity")?;
    // `batteryDegradation` is the remaining amount, in the units of the capacity.
    let remaining = num(body, "batteryDegradation")?;
    if let (Some(r), Some(c)) = (remaining, capacity) {
        if c > 0.0 {
            f.insert("soc_pct".into(), json_num(round1(r / c * 100.0)));
        }
    }
    if let Some(c) = capacity {
        f.insert("battery_capacity".into(), json_num(c));
    }
    if let Some(r) = remaining {
        f.insert("battery_remaining".into(), json_num(r));
    }
    let charging = body.get("charging").and_then(Value::as_str) == Some("YES");
    f.insert("charging".into(), Value::Bool(charging));
    if let Some(mode) = body.get("chargeMode").and_then(Value::as_str) {
        f.insert("charging_status".into(), mode.into());
    }
    plug(&mut f, body.get("pluginState").and_then(Value::as_str));
    ranges(
        &mut f,
        num(body, "cruisingRangeAcOn")?,
        num(body, "cruisingRangeAcOff")?,
        1000.0,
    );
    let mut ttf = Map::new();
    for (key, name) in [
        ("timeRequiredToFull", "slow"),
        ("timeRequiredToFull200", "normal"),
        ("timeRequiredToFull200_6kW", "fast"),
    ] {
        if let Some(m) = minutes(body.get(key), "hours", "minutes")? {
            ttf.insert(name.into(), json_num(m));
        }
    }
    if !ttf.is_empty() {
        f.insert("time_to_full_min".into(), Value::Object(ttf));
    }
    let time = body
        .get("timeStamp")
        .and_then(Value::as_str)
        .and_then(carwings_time);
    insert_time(&mut f, time);
    Ok(CheckResult::Ready(Reading { time, fields: f }))
}

/// Parses a Kamereon `battery-status` response (v1 as Nissan's Leaf
/// answers it, or v2 with `batteryAutonomy` / `chargingStatus`).
///
/// # Errors
/// A body without `data.attributes`, or values of the wrong type.
pub fn kamereon_battery(body: &Value) -> Result<Reading, ResponseError> {
    let a = body
        .pointer("/data/attributes")
        .filter(|a| a.is_object())
        .ok_or_else(|| shape("no `data.attributes` object"))?;
    let mut f = Map::new();
    f.insert("api".into(), "kamereon".into());
    if let Some(vin) = body.pointer("/data/id").and_then(Value::as_str) {
        f.insert("vin".into(), vin.into());
    }
    if let Some(v) = num(a, "batteryLevel")? {
        f.insert("soc_pct".into(), json_num(v));
    }
    if let Some(v) = num(a, "batteryCapacity")? {
        f.insert("battery_capacity".into(), json_num(v));
    }
    if let Some(v) = num(a, "batteryBarLevel")? {
        f.insert("battery_bars".into(), json_num(v));
    }
    if let Some(v) = num(a, "batteryAvailableEnergy")? {
        f.insert("battery_remaining_kwh".into(), json_num(v));
    }
    if let Some(v) = num(a, "batteryTemperature")? {
        f.insert("battery_temperature_c".into(), json_num(v));
    }
    let charge = match num(a, "chargeStatus")? {
        Some(v) => Some(v),
        None => num(a, "chargingStatus")?,
    };
    if let Some(c) = charge {
        f.insert("charging".into(), Value::Bool(c > 0.0));
        f.insert("charging_status".into(), json_num(c));
    }
    if let Some(p) = num(a, "plugStatus")? {
        plug(
            &mut f,
            Some(if p > 0.0 {
                "CONNECTED"
            } else {
                "NOT_CONNECTED"
            }),
        );
    }
    if let Some(w) = num(a, "instantaneousPower")? {
        f.insert("charging_power_w".into(), json_num(w));
    } else if let Some(kw) = num(a, "chargingInstantaneousPower")? {
        f.insert("charging_power_w".into(), json_num(kw * 1000.0));
    }
    let on = num(a, "rangeHvacOn")?;
    let off = match num(a, "rangeHvacOff")? {
        Some(v) => Some(v),
        None => num(a, "batteryAutonomy")?,
    };
    ranges(&mut f, on, off, 1.0);
    let mut ttf = Map::new();
    for (key, name) in [
        ("timeRequiredToFullSlow", "slow"),
        ("timeRequiredToFullNormal", "normal"),
        ("timeRequiredToFullFast", "fast"),
        ("chargingRemainingTime", "current"),
    ] {
        if let Some(m) = num(a, key)? {
            ttf.insert(name.into(), json_num(m));
        }
    }
    if !ttf.is_empty() {
        f.insert("time_to_full_min".into(), Value::Object(ttf));
    }
    let time = match ["lastUpdateTime", "timestamp"]
        .iter()
        .find_map(|k| a.get(*k).and_then(Value::as_str))
    {
        Some(t) => Some(
            DateTime::parse_from_rfc3339(t)
                .map(|d| d.with_timezone(&Utc))
                .map_err(|_| ResponseError::Value {
                    field: "lastUpdateTime".into(),
                    text: t.into(),
                    what: "an RFC 3339 time",
                })?,
        ),
        None => None,
    };
    insert_time(&mut f, time);
    Ok(Reading { time, fields: f })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_carwings_date_forms() {
        let want = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        assert_eq!(
            carwings_time("2016/02/10 04:10"),
            Some(want("2016-02-10T04:10:00Z"))
        );
        assert_eq!(
            carwings_time("Feb  9, 2016 11:09 PM"),
            Some(want("2016-02-09T23:09:00Z"))
        );
        assert_eq!(
            carwings_time("21-Jan-2019 13:29"),
            Some(want("2019-01-21T13:29:00Z"))
        );
        assert_eq!(
            carwings_time("2016-01-02 17:17:38"),
            Some(want("2016-01-02T17:17:38Z"))
        );
        assert_eq!(carwings_time("yesterday"), None);
    }
}
