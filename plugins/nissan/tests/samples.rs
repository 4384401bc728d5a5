//! Every real response in `shared/testdata/nissan` parses into the
//! documented reading, with values checked; broken and reordered variants
//! are refused with a reason or read the same.

use std::path::PathBuf;

use serde_json::{json, Value};
use ulog_plugins_nissan::battery::{
    carwings_check_result, carwings_records, kamereon_battery, CheckResult, ResponseError,
};

fn sample(name: &str) -> Value {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/nissan");
    assert!(
        dir.is_dir(),
        "the Nissan samples are missing: expected {} (shared/ beside the repository)",
        dir.display()
    );
    serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap()
}

fn records(name: &str) -> Value {
    Value::Object(
        carwings_records(&sample(name))
            .unwrap()
            .expect("a reading")
            .fields,
    )
}

fn check(name: &str) -> Value {
    match carwings_check_result(&sample(name)).unwrap() {
        CheckResult::Ready(r) => Value::Object(r.fields),
        CheckResult::Pending => panic!("{name} is pending"),
    }
}

#[test]
fn every_sample_file_is_covered_by_a_test_here() {
    let this = include_str!("samples.rs");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/nissan");
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".json") {
            assert!(this.contains(&format!("\"{name}\"")), "{name} has no test");
        }
    }
}

#[test]
fn records_normal_charging() {
    assert_eq!(
        records("carwings_BatteryStatusRecordsRequest_normal_charging.json"),
        json!({"api": "carwings", "soc_pct": 100, "battery_capacity": 12, "battery_remaining": 12,
               "charging": true, "charging_status": "NORMAL_CHARGING",
               "plugged": true, "plug_state": "CONNECTED",
               "range_ac_on_km": 132, "range_ac_off_km": 134,
               "time_to_full_min": {"fast": 40},
               "reading_time": "2016-02-19T17:12:00Z"})
    );
}

#[test]
fn records_not_connected() {
    let r = records("carwings_BatteryStatusRecordsRequest_not_connected.json");
    assert_eq!(r["soc_pct"], 25);
    assert_eq!(r["plugged"], false);
    assert_eq!(r["charging"], false);
    assert_eq!(r["range_ac_on_km"], 39.2);
    assert_eq!(r["range_ac_off_km"], 39.7);
    assert_eq!(
        r["time_to_full_min"],
        json!({"slow": 1110, "normal": 360, "fast": 240})
    );
    assert_eq!(r["reading_time"], "2016-02-10T04:10:00Z");
}

#[test]
fn records_qc_connected() {
    let r = records("carwings_BatteryStatusRecordsRequest_qc_connected.json");
    assert_eq!(r["plug_state"], "QC_CONNECTED");
    assert_eq!(r["plugged"], true);
    assert!(r["soc_pct"].is_number());
}

#[test]
fn records_30kwh_soc91() {
    let r = records("carwings_BatteryStatusRecordsRequest_30kWh_SOC91.json");
    assert_eq!(r["soc_pct"], 91, "SOC.Value wins over remaining/capacity");
    assert_eq!(r["battery_capacity"], 240);
    assert_eq!(r["battery_remaining"], 220);
    assert_eq!(r["battery_remaining_wh"], 24480);
    assert_eq!(r["range_ac_off_km"], 168);
    assert_eq!(
        r["time_to_full_min"],
        json!({"slow": 270, "normal": 180, "fast": 90})
    );
    assert_eq!(r["reading_time"], "2019-01-21T13:29:00Z");
}

#[test]
fn records_24kwh_degraded_charging() {
    let r = records("carwings_BatteryStatusRecordsRequest_24kWh_degraded_charging.json");
    assert_eq!(r["soc_pct"], 54.5);
    assert_eq!(r["battery_capacity"], 11);
    assert_eq!(r["range_ac_on_km"], 66);
    assert_eq!(r["time_to_full_min"], json!({"fast": 180}));
    assert_eq!(r["reading_time"], "2019-01-26T21:22:00Z");
}

#[test]
fn records_soc100_voltlabel() {
    let r = records("carwings_BatteryStatusRecordsRequest_SOC100_voltlabel.json");
    assert_eq!(r["soc_pct"], 100);
    assert_eq!(r["battery_remaining_wh"], 28880);
    assert!(r.get("time_to_full_min").is_none());
    assert_eq!(r["reading_time"], "2017-04-24T23:43:00Z");
}

#[test]
fn records_empty_is_no_reading() {
    assert_eq!(
        carwings_records(&sample("carwings_BatteryStatusRecordsRequest_empty.json")).unwrap(),
        None
    );
}

#[test]
fn check_result_220v() {
    let r = check("carwings_BatteryStatusCheckResultRequest_220V.json");
    assert_eq!(r["soc_pct"], 83.3);
    assert_eq!(r["charging"], true);
    assert_eq!(r["charging_status"], "220V");
    assert_eq!(r["range_ac_on_km"], 115.3);
    assert!(
        r.get("time_to_full_min").is_none(),
        "empty hours/minutes are no value"
    );
    assert_eq!(r["reading_time"], "2016-01-02T17:17:38Z");
}

#[test]
fn check_result_qc() {
    let r = check("carwings_BatteryStatusCheckResultRequest_qc.json");
    assert_eq!(r["plug_state"], "QC_CONNECTED");
    assert_eq!(r["soc_pct"], 91.7);
}

#[test]
fn check_result_30kwh() {
    let r = check("carwings_BatteryStatusCheckResultRequest_30kWh.json");
    assert_eq!(r["soc_pct"], 100);
    assert_eq!(r["charging"], false);
    assert_eq!(r["range_ac_off_km"], 198);
}

#[test]
fn check_result_pending() {
    assert_eq!(
        carwings_check_result(&sample(
            "carwings_BatteryStatusCheckResultRequest_pending.json"
        ))
        .unwrap(),
        CheckResult::Pending
    );
}

#[test]
fn kamereon_nissan_leaf_v1() {
    let r = kamereon_battery(&sample(
        "kamereon_nissan_leaf_v1_battery-status.SYNTHETIC.json",
    ))
    .unwrap();
    assert_eq!(
        Value::Object(r.fields),
        json!({"api": "kamereon", "vin": "SJNFAAZE1U0000000", "soc_pct": 79, "battery_capacity": 40000,
               "battery_bars": 190, "battery_temperature_c": 11, "charging": true, "charging_status": 1,
               "plugged": true, "plug_state": "CONNECTED", "charging_power_w": 2200,
               "range_ac_on_km": 91, "range_ac_off_km": 98,
               "time_to_full_min": {"slow": 175, "normal": 120, "fast": 40},
               "reading_time": "2020-01-29T19:14:28Z"})
    );
}

#[test]
fn kamereon_renault_v2() {
    let r = kamereon_battery(&sample("kamereon_renault_battery-status_v2.json")).unwrap();
    let f = Value::Object(r.fields);
    assert_eq!(f["soc_pct"], 60);
    assert_eq!(f["range_ac_off_km"], 141);
    assert_eq!(f["battery_remaining_kwh"], 31);
    assert_eq!(f["charging_power_w"], 27000);
    assert_eq!(f["time_to_full_min"], json!({"current": 145}));
    assert_eq!(f["reading_time"], "2020-01-12T21:40:16Z");
}

#[test]
fn login_and_result_key_samples_are_not_battery_readings() {
    // These answer other requests; the parsers say so instead of guessing.
    for name in [
        "carwings_UserLoginRequest_response.json",
        "carwings_BatteryStatusCheckRequest_resultKey.json",
        "carwings_RemoteACRecordsRequest_on.json",
    ] {
        assert!(
            matches!(
                carwings_records(&sample(name)),
                Err(ResponseError::Shape(_))
            ),
            "{name}"
        );
    }
}

#[test]
fn broken_variants_are_refused_with_a_reason() {
    let mut v = sample("carwings_BatteryStatusRecordsRequest_30kWh_SOC91.json");
    v["BatteryStatusRecords"]["CruisingRangeAcOn"] = json!("far");
    assert_eq!(
        carwings_records(&v).unwrap_err().to_string(),
        "CruisingRangeAcOn: \"far\" is not a number"
    );
    let mut v = sample("carwings_BatteryStatusRecordsRequest_30kWh_SOC91.json");
    v["status"] = json!(401);
    v["message"] = json!("INVALID PARAMS");
    assert_eq!(
        carwings_records(&v).unwrap_err(),
        ResponseError::Status {
            status: 401,
            message: "INVALID PARAMS".into()
        }
    );
    let mut v = sample("kamereon_nissan_leaf_v1_battery-status.SYNTHETIC.json");
    v["data"]["attributes"]["lastUpdateTime"] = json!("29/01/2020");
    assert!(kamereon_battery(&v)
        .unwrap_err()
        .to_string()
        .contains("RFC 3339"));
    assert!(kamereon_battery(&json!({"errors": [{"status": "404"}]})).is_err());
    assert!(carwings_check_result(&json!({"status": 200, "responseFlag": "2"})).is_err());
}

#[test]
fn reordered_keys_read_the_same() {
    // JSON objects are unordered: rebuilding the sample in reverse key order
    // gives the same reading.
    fn reverse(v: &Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.iter()
                    .rev()
                    .map(|(k, v)| (k.clone(), reverse(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
    for name in [
        "carwings_BatteryStatusRecordsRequest_not_connected.json",
        "carwings_BatteryStatusRecordsRequest_30kWh_SOC91.json",
    ] {
        let a = carwings_records(&sample(name)).unwrap().unwrap();
        let b = carwings_records(&reverse(&sample(name))).unwrap().unwrap();
        let (mut a, mut b) = (a.fields, b.fields);
        a.sort_keys();
        b.sort_keys();
        assert_eq!(a, b, "{name}");
    }
}
