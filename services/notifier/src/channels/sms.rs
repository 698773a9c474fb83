//! SMS behind a small trait, with Twilio's Programmable Messaging REST API as the provider:
//! `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`, form-encoded `To`, `From` and
//! `Body`, HTTP basic auth with the account SID and auth token, `201 Created` on success.

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::{SendOutcome, parse_retry_after};

#[async_trait::async_trait]
pub trait SmsProvider: Send + Sync {
    async fn send(&self, to_e164: &str, text: &str) -> SendOutcome;
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmsSettings {
    /// `https://api.twilio.com` in production.
    pub twilio_base_url: String,
    pub twilio_account_sid: String,
    #[serde(skip_serializing)]
    pub twilio_auth_token: Option<SecretString>,
    /// An E.164 sender number, or empty with a messaging service.
    pub from: String,
    pub messaging_service_sid: String,
}

impl Default for SmsSettings {
    fn default() -> Self {
        Self {
            twilio_base_url: "https://api.twilio.com".into(),
            twilio_account_sid: String::new(),
            twilio_auth_token: None,
            from: String::new(),
            messaging_service_sid: String::new(),
        }
    }
}

impl std::fmt::Debug for SmsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmsSettings")
            .field("twilio_base_url", &self.twilio_base_url)
            .field("twilio_account_sid", &self.twilio_account_sid)
            .field(
                "twilio_auth_token",
                &self.twilio_auth_token.as_ref().map(|_| "[redacted]"),
            )
            .field("from", &self.from)
            .finish()
    }
}

pub struct Twilio {
    client: reqwest::Client,
    settings: SmsSettings,
}

/// Stands in when no provider is configured, so an escalation's SMS step fails visibly in
/// the delivery log instead of vanishing.
struct Unconfigured;

#[async_trait::async_trait]
impl SmsProvider for Unconfigured {
    async fn send(&self, _to: &str, _text: &str) -> SendOutcome {
        SendOutcome::failed(0, "no sms provider is configured (channels.sms)")
    }
}

pub fn provider(
    settings: &SmsSettings,
    client: reqwest::Client,
) -> anyhow::Result<std::sync::Arc<dyn SmsProvider>> {
    if settings.twilio_account_sid.is_empty() {
        return Ok(std::sync::Arc::new(Unconfigured));
    }
    if settings.twilio_auth_token.is_none() {
        anyhow::bail!("channels.sms.twilio_auth_token: required with an account sid");
    }
    if settings.from.is_empty() && settings.messaging_service_sid.is_empty() {
        anyhow::bail!("channels.sms.from: set a sender number or a messaging_service_sid");
    }
    Ok(std::sync::Arc::new(Twilio {
        client,
        settings: settings.clone(),
    }))
}

#[async_trait::async_trait]
impl SmsProvider for Twilio {
    async fn send(&self, to: &str, text: &str) -> SendOutcome {
        let s = &self.settings;
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            s.twilio_base_url.trim_end_matches('/'),
            s.twilio_account_sid
        );
        let mut form = vec![("To", to), ("Body", text)];
        if s.messaging_service_sid.is_empty() {
            form.push(("From", s.from.as_str()));
        } else {
            form.push(("MessagingServiceSid", s.messaging_service_sid.as_str()));
        }
        let token = s
            .twilio_auth_token
            .as_ref()
            .map(|t| t.expose_secret())
            .unwrap_or_default();
        let result = self
            .client
            .post(url)
            .basic_auth(&s.twilio_account_sid, Some(token))
            .form(&form)
            .send()
            .await;
        match result {
            Ok(r) if r.status().is_success() => SendOutcome::ok(u32::from(r.status().as_u16())),
            Ok(r) => {
                let status = u32::from(r.status().as_u16());
                let retry_after = r
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after);
                let body = r.text().await.unwrap_or_default();
                // 400 means Twilio refused this number or text: retrying will not help.
                let permanent = status == 400;
                SendOutcome {
                    success: false,
                    status,
                    detail: format!(
                        "twilio {status}: {}",
                        body.chars().take(200).collect::<String>()
                    ),
                    retry_after,
                    permanent,
                }
            }
            Err(e) => SendOutcome::failed(0, format!("twilio: {e}")),
        }
    }
}
