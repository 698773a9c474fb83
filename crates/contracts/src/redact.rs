//! `Debug` for the messages that carry secrets. Generated `Debug` would print every field, and
//! a request logged at debug level would then leak a refresh token or a client secret. These
//! impls print the shape of the message and never the secret.

use std::fmt;

use crate::{auth::v1 as auth, notify::v1 as notify, tokens::v1 as tokens};

const REDACTED: &str = "[redacted]";

fn redacted_if_set(value: &str) -> &'static str {
    if value.is_empty() { "" } else { REDACTED }
}

impl fmt::Debug for auth::CreateCredentialResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateCredentialResponse")
            .field("credential", &self.credential)
            .field("secret", &redacted_if_set(&self.secret))
            .finish()
    }
}

impl fmt::Debug for tokens::AppCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use tokens::app_credential::Credential;
        let kind = match &self.credential {
            None => "none",
            Some(Credential::ClientSecret(_)) => "client_secret",
            Some(Credential::Certificate(_)) => "certificate",
            Some(Credential::SecretReference(_)) => "secret_reference",
        };
        f.debug_struct("AppCredential")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for tokens::Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("certificate_pem_len", &self.certificate_pem.len())
            .field("private_key_pem", &redacted_if_set(&self.private_key_pem))
            .finish()
    }
}

impl fmt::Debug for tokens::CompleteConsentRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompleteConsentRequest")
            .field("partner_tenant_id", &self.partner_tenant_id)
            .field("state", &self.state)
            .field("code", &redacted_if_set(&self.code))
            .finish()
    }
}

impl fmt::Debug for tokens::ImportRefreshTokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImportRefreshTokenRequest")
            .field("partner_tenant_id", &self.partner_tenant_id)
            .field("app_id", &self.app_id)
            .field("refresh_token", &redacted_if_set(&self.refresh_token))
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Debug for tokens::GetAccessTokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetAccessTokenResponse")
            .field("access_token", &redacted_if_set(&self.access_token))
            .field("expires_at", &self.expires_at)
            .field("mfa", &self.mfa)
            .field("from_cache", &self.from_cache)
            .field("token_type", &self.token_type)
            .finish()
    }
}

impl fmt::Debug for notify::CreateChannelRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateChannelRequest")
            .field("partner_tenant_id", &self.partner_tenant_id)
            .field("display_name", &self.display_name)
            .field("kind", &self.kind)
            .field("target", &self.target)
            .field("secret", &redacted_if_set(&self.secret))
            .field("language", &self.language)
            .finish()
    }
}

impl fmt::Debug for notify::CreateChannelResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateChannelResponse")
            .field("channel", &self.channel)
            .field("generated_secret", &redacted_if_set(&self.generated_secret))
            .finish()
    }
}

impl fmt::Debug for notify::RotateChannelSecretRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotateChannelSecretRequest")
            .field("partner_tenant_id", &self.partner_tenant_id)
            .field("channel_id", &self.channel_id)
            .field("new_secret", &redacted_if_set(&self.new_secret))
            .field("previous_valid_hours", &self.previous_valid_hours)
            .finish()
    }
}

impl fmt::Debug for notify::RotateChannelSecretResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotateChannelSecretResponse")
            .field("channel", &self.channel)
            .field("generated_secret", &redacted_if_set(&self.generated_secret))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0.AAAA-super-secret-value";

    #[test]
    fn debug_of_every_secret_bearing_message_hides_the_secret() {
        let shown = [
            format!(
                "{:?}",
                auth::CreateCredentialResponse {
                    secret: SECRET.into(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                tokens::RegisterAppRequest {
                    credential: Some(tokens::AppCredential {
                        credential: Some(tokens::app_credential::Credential::ClientSecret(
                            SECRET.into()
                        )),
                    }),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                tokens::Certificate {
                    certificate_pem: "cert".into(),
                    private_key_pem: SECRET.into(),
                }
            ),
            format!(
                "{:?}",
                tokens::CompleteConsentRequest {
                    code: SECRET.into(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                tokens::ImportRefreshTokenRequest {
                    refresh_token: SECRET.into(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                tokens::GetAccessTokenResponse {
                    access_token: SECRET.into(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                notify::CreateChannelRequest {
                    secret: SECRET.into(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                notify::CreateChannelResponse {
                    generated_secret: SECRET.into(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                notify::RotateChannelSecretRequest {
                    new_secret: SECRET.into(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                notify::RotateChannelSecretResponse {
                    generated_secret: SECRET.into(),
                    ..Default::default()
                }
            ),
        ];
        for text in shown {
            assert!(!text.contains("super-secret"), "secret in {text}");
            assert!(
                text.contains(REDACTED) || text.contains("client_secret"),
                "{text}"
            );
        }
    }
}
