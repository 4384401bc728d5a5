//! NissanConnect (Kamereon / Alliance platform): OAuth 2 bearer tokens and
//! `GET <base_url>/v1/cars/<vin>/battery-status`.
//!
//! ulog holds a refresh token (obtained once with Nissan's interactive login,
//! see docs/plugins/nissan.md) in a file. It exchanges it at `token_url` for
//! an access token (`grant_type=refresh_token`), caches that until a minute
//! before `expires_in`, and writes a rotated refresh token back to the file
//! (atomically) so a restart keeps working.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::battery::{kamereon_battery, Reading, ResponseError};
use crate::carwings::CarwingsError;
use crate::client::{Answer, Http, HttpError};

/// How long before expiry an access token is renewed.
const RENEW_BEFORE: Duration = Duration::from_secs(60);

/// The Kamereon client of one account.
pub struct Kamereon {
    http: Http,
    base: String,
    token_url: String,
    client_id: String,
    client_secret: String,
    refresh_file: PathBuf,
    token: Option<(String, Instant)>,
    /// Access tokens obtained, for logs and tests.
    pub tokens_minted: u64,
}

impl Kamereon {
    /// A client; nothing is read or sent until the first reading.
    pub fn new(
        http: Http,
        base: &str,
        token_url: &str,
        client_id: &str,
        client_secret: &str,
        refresh_file: PathBuf,
    ) -> Self {
        Self {
            http,
            base: base.trim_end_matches('/').to_string(),
            token_url: token_url.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            refresh_file,
            token: None,
            tokens_minted: 0,
        }
    }

    async fn access_token(&mut self) -> Result<String, CarwingsError> {
        if let Some((t, until)) = &self.token {
            if Instant::now() + RENEW_BEFORE < *until {
                return Ok(t.clone());
            }
        }
        let refresh = std::fs::read_to_string(&self.refresh_file).map_err(|e| {
            CarwingsError::LoginRefused(format!(
                "reading the refresh token {}: {e}",
                self.refresh_file.display()
            ))
        })?;
        let refresh = refresh.trim().to_string();
        let Answer {
            status,
            body,
            retry_after,
        } = self
            .http
            .post_form(
                &self.token_url,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &refresh),
                    ("client_id", &self.client_id),
                    ("client_secret", &self.client_secret),
                ],
                &[],
            )
            .await?;
        if status == 429 || status == 503 {
            return Err(CarwingsError::RateLimited {
                status,
                retry_after,
            });
        }
        if status >= 500 {
            return Err(HttpError::Transport {
                url: self.token_url.clone(),
                message: format!("HTTP {status}"),
            }
            .into());
        }
        if status != 200 {
            return Err(CarwingsError::LoginRefused(format!(
                "token endpoint answered {status}: {}",
                body.get("error_description")
                    .or_else(|| body.get("error"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
            )));
        }
        let token = body
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| ResponseError::Shape("the token answer has no access_token".into()))?
            .to_string();
        let lifetime = body
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(3600);
        if let Some(rotated) = body.get("refresh_token").and_then(Value::as_str) {
            if rotated != refresh {
                let tmp = self.refresh_file.with_extension("new");
                std::fs::write(&tmp, rotated)
                    .and_then(|()| std::fs::rename(&tmp, &self.refresh_file))
                    .map_err(|e| {
                        CarwingsError::LoginRefused(format!(
                            "saving the rotated refresh token: {e}"
                        ))
                    })?;
            }
        }
        self.tokens_minted += 1;
        self.token = Some((
            token.clone(),
            Instant::now() + Duration::from_secs(lifetime),
        ));
        Ok(token)
    }

    /// The car's battery status.
    ///
    /// # Errors
    /// As the calls fail; a 401 renews the token once.
    pub async fn battery(&mut self, vin: &str) -> Result<Reading, CarwingsError> {
        let url = format!("{}/v1/cars/{vin}/battery-status", self.base);
        for attempt in 0..2 {
            let token = self.access_token().await?;
            let Answer {
                status,
                body,
                retry_after,
            } = self.http.get_json(&url, &token).await?;
            match status {
                200 => return Ok(kamereon_battery(&body)?),
                401 if attempt == 0 => self.token = None,
                429 | 503 => {
                    return Err(CarwingsError::RateLimited {
                        status,
                        retry_after,
                    })
                }
                s if s >= 500 => {
                    return Err(HttpError::Transport {
                        url,
                        message: format!("HTTP {s}"),
                    }
                    .into())
                }
                s => {
                    return Err(ResponseError::Status {
                        status: i64::from(s),
                        message: body.to_string(),
                    }
                    .into())
                }
            }
        }
        Err(CarwingsError::SessionExpired(401))
    }
}
