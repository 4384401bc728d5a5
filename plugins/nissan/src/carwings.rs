//! The legacy Carwings service ("NissanConnect EV"): form POSTs to
//! `<base_url>/<Request>.php`, JSON answers with a `status` field.
//!
//! Login is two steps: `InitialApp_v2.php` hands out a key (`baseprm`),
//! the password is sent Blowfish-ECB-encrypted with it (PKCS#5 padding,
//! base64) to `UserLoginRequest.php`, which answers with the session id
//! (`custom_sessionid`), the car's DCM id and the account's time zone. The
//! session is kept until the service refuses it (status 401/404), then ulog
//! logs in again.

use base64::Engine as _;
use blowfish::Blowfish;
use ecb::cipher::{block_padding::Pkcs7, BlockEncryptMut, KeyInit};
use serde_json::Value;

use crate::battery::{
    carwings_check_result, carwings_records, CheckResult, Reading, ResponseError,
};
use crate::client::{Answer, Http, HttpError};

/// The app identifier the Carwings service expects from its clients (a
/// fixed value every client sends with each login).
pub const INITIAL_APP_STR: &str = "9s5rfKVuMrT03RtzajWNcA";

/// Why a Carwings call failed, and whether trying again later may work.
#[derive(Debug, thiserror::Error)]
pub enum CarwingsError {
    /// No answer or not JSON: try again later.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The service asked to slow down (HTTP 429 or 503).
    #[error("rate limited (HTTP {status})")]
    RateLimited {
        /// The HTTP status.
        status: u16,
        /// How long it asked to wait.
        retry_after: Option<std::time::Duration>,
    },
    /// The session is no longer valid: log in again.
    #[error("the session expired (status {0})")]
    SessionExpired(i64),
    /// The login was refused (wrong user or password).
    #[error("login refused: {0}")]
    LoginRefused(String),
    /// The answer made no sense.
    #[error(transparent)]
    Response(#[from] ResponseError),
}

/// Encrypts the password as `UserLoginRequest.php` wants it.
///
/// # Errors
/// A key of a length Blowfish cannot take (4–56 bytes).
pub fn encrypt_password(password: &str, key: &str) -> Result<String, String> {
    let cipher = ecb::Encryptor::<Blowfish>::new_from_slice(key.as_bytes()).map_err(|_| {
        format!(
            "the service's key has {} bytes; Blowfish takes 4 to 56",
            key.len()
        )
    })?;
    let ct = cipher.encrypt_padded_vec_mut::<Pkcs7>(password.as_bytes());
    Ok(base64::engine::general_purpose::STANDARD.encode(ct))
}

/// A logged-in session.
#[derive(Debug, Clone)]
pub struct Session {
    /// `custom_sessionid`.
    pub id: String,
    /// The DCM (telematics unit) id of the account's car.
    pub dcm_id: String,
    /// The car's VIN.
    pub vin: String,
    /// The account's time zone name.
    pub tz: String,
}

/// The Carwings client of one account.
pub struct Carwings {
    http: Http,
    base: String,
    region: String,
    user: String,
    password: String,
    /// The current session, once logged in.
    pub session: Option<Session>,
    /// Logins made, for the logs and tests.
    pub logins: u64,
}

fn status_of(body: &Value) -> i64 {
    match body.get("status") {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

impl Carwings {
    /// A client for `user` at `base` (ending in `/`), region code `region` (NE, NNA, NCI...).
    pub fn new(http: Http, base: &str, region: &str, user: &str, password: &str) -> Self {
        let mut base = base.to_string();
        if !base.ends_with('/') {
            base.push('/');
        }
        Self {
            http,
            base,
            region: region.into(),
            user: user.into(),
            password: password.into(),
            session: None,
            logins: 0,
        }
    }

    async fn call(&self, request: &str, fields: &[(&str, &str)]) -> Result<Value, CarwingsError> {
        let url = format!("{}{request}.php", self.base);
        let Answer {
            status,
            body,
            retry_after,
        } = self.http.post_form(&url, fields, &[]).await?;
        if status == 429 || status == 503 {
            return Err(CarwingsError::RateLimited {
                status,
                retry_after,
            });
        }
        if status >= 500 {
            return Err(HttpError::Transport {
                url,
                message: format!("HTTP {status}"),
            }
            .into());
        }
        let s = status_of(&body);
        if s == 401 || s == 404 || status == 401 {
            return Err(CarwingsError::SessionExpired(if s != 0 { s } else { 401 }));
        }
        Ok(body)
    }

    /// Logs in (both steps).
    ///
    /// # Errors
    /// [`CarwingsError::LoginRefused`] for a wrong user or password, others as the calls fail.
    pub async fn login(&mut self) -> Result<&Session, CarwingsError> {
        let lg = "en-US";
        let init = self
            .call(
                "InitialApp_v2",
                &[
                    ("RegionCode", &self.region),
                    ("lg", lg),
                    ("initial_app_str", INITIAL_APP_STR),
                ],
            )
            .await?;
        let key = init
            .get("baseprm")
            .and_then(Value::as_str)
            .ok_or_else(|| ResponseError::Shape("InitialApp_v2 gave no `baseprm`".into()))?
            .to_string();
        let password = encrypt_password(&self.password, &key).map_err(ResponseError::Shape)?;
        let body = match self
            .call(
                "UserLoginRequest",
                &[
                    ("RegionCode", &self.region),
                    ("initial_app_str", INITIAL_APP_STR),
                    ("UserId", &self.user),
                    ("Password", &password),
                    ("lg", lg),
                ],
            )
            .await
        {
            Err(CarwingsError::SessionExpired(s)) => {
                return Err(CarwingsError::LoginRefused(format!(
                    "status {s} for user {:?}",
                    self.user
                )))
            }
            other => other?,
        };
        if status_of(&body) != 200 {
            return Err(CarwingsError::LoginRefused(format!(
                "status {}: {}",
                status_of(&body),
                body.get("message").and_then(Value::as_str).unwrap_or("")
            )));
        }
        let vehicle = body
            .pointer("/VehicleInfoList/vehicleInfo/0")
            .or_else(|| body.pointer("/vehicleInfo/0"));
        let id = vehicle
            .and_then(|v| v.get("custom_sessionid"))
            .or_else(|| body.get("sessionId"))
            .and_then(Value::as_str)
            .ok_or_else(|| ResponseError::Shape("the login answer has no session id".into()))?;
        let vin = vehicle
            .and_then(|v| v.get("vin"))
            .or_else(|| body.pointer("/CustomerInfo/VehicleInfo/VIN"))
            .and_then(Value::as_str)
            .ok_or_else(|| ResponseError::Shape("the login answer names no car".into()))?;
        let dcm_id = body
            .pointer("/CustomerInfo/VehicleInfo/DCMID")
            .or_else(|| body.pointer("/vehicle/profile/dcmId"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let tz = body
            .pointer("/CustomerInfo/Timezone")
            .and_then(Value::as_str)
            .unwrap_or("UTC")
            .to_string();
        self.logins += 1;
        self.session = Some(Session {
            id: id.into(),
            dcm_id,
            vin: vin.into(),
            tz,
        });
        Ok(self.session.as_ref().expect("just set"))
    }

    async fn session(&mut self) -> Result<Session, CarwingsError> {
        if self.session.is_none() {
            self.login().await?;
        }
        Ok(self.session.clone().expect("logged in"))
    }

    fn car_fields(s: &Session) -> [(&str, &str); 5] {
        [
            ("lg", "en-US"),
            ("DCMID", &s.dcm_id),
            ("VIN", &s.vin),
            ("tz", &s.tz),
            ("custom_sessionid", &s.id),
        ]
    }

    /// Calls `request` with the session, logging in again once if it expired.
    async fn car_call(
        &mut self,
        request: &str,
        extra: &[(&str, &str)],
    ) -> Result<Value, CarwingsError> {
        for attempt in 0..2 {
            let s = self.session().await?;
            let mut fields: Vec<(&str, &str)> = vec![("RegionCode", &self.region)];
            fields.extend(Self::car_fields(&s));
            fields.extend_from_slice(extra);
            match self.call(request, &fields).await {
                Err(CarwingsError::SessionExpired(_)) if attempt == 0 => {
                    self.session = None;
                }
                other => return other,
            }
        }
        unreachable!("the second attempt returns")
    }

    /// The last reading the service holds (`None` when it holds none).
    ///
    /// # Errors
    /// As the calls fail.
    pub async fn latest(&mut self) -> Result<Option<(String, Reading)>, CarwingsError> {
        let body = self.car_call("BatteryStatusRecordsRequest", &[]).await?;
        let vin = self
            .session
            .as_ref()
            .map(|s| s.vin.clone())
            .unwrap_or_default();
        Ok(carwings_records(&body)?.map(|r| (vin, r)))
    }

    /// Asks the car for a fresh reading and returns the key to poll with.
    ///
    /// # Errors
    /// As the calls fail.
    pub async fn request_update(&mut self) -> Result<String, CarwingsError> {
        let user = self.user.clone();
        let body = self
            .car_call("BatteryStatusCheckRequest", &[("UserId", &user)])
            .await?;
        body.get("resultKey")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                ResponseError::Shape("BatteryStatusCheckRequest gave no `resultKey`".into()).into()
            })
    }

    /// Polls the answer to [`Carwings::request_update`].
    ///
    /// # Errors
    /// As the calls fail.
    pub async fn update_result(&mut self, key: &str) -> Result<CheckResult, CarwingsError> {
        let body = self
            .car_call("BatteryStatusCheckResultRequest", &[("resultKey", key)])
            .await?;
        Ok(carwings_check_result(&body)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_encryption_is_blowfish_ecb_pkcs5_base64() {
        // Blowfish ECB of one padded block is deterministic: check the
        // length and that decrypting gives the password back.
        use ecb::cipher::BlockDecryptMut;
        let ct = encrypt_password("secret", "uyI5Dj9g8VCOFDnBRUbr3g").unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&ct)
            .unwrap();
        assert_eq!(raw.len(), 8);
        let plain = ecb::Decryptor::<Blowfish>::new_from_slice(b"uyI5Dj9g8VCOFDnBRUbr3g")
            .unwrap()
            .decrypt_padded_vec_mut::<Pkcs7>(&raw)
            .unwrap();
        assert_eq!(plain, b"secret");
        assert!(encrypt_password("x", "abc").is_err());
    }
}
