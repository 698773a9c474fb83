//! The Entra ID token endpoints, exact to the wire (shared reference §1).
//!
//! - v1 (`/{tenant}/oauth2/token`, `resource=`) and v2 (`/{tenant}/oauth2/v2.0/token`,
//!   `scope=`), for the authorization-code, refresh-token and client-credentials grants;
//! - the app proves itself with a client secret or a certificate (`client_assertion`: an RS256
//!   JWT whose header carries the certificate's SHA-1 thumbprint as `x5t`);
//! - numbers arrive as strings (v1) or numbers (v2), and both are accepted;
//! - a refresh that returns no `refresh_token` keeps the old one ([`TokenResponse::rotated_or`]);
//! - errors are parsed from the documented body and classified from `error` and `error_codes`
//!   (never from the description text); 429 and 5xx carry `Retry-After`;
//! - the public cloud and China (21Vianet) have their own sign-in hosts, both configurable, so
//!   tests point them at ms-sim.
//!
//! Nothing here may log, print or `Debug` a token, a code, a secret or a private key.

use std::{sync::Arc, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

/// The Microsoft cloud an app lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Cloud {
    #[default]
    Public,
    /// Operated by 21Vianet, with its own sign-in host.
    China,
}

/// Sign-in hosts per cloud. Real Microsoft by default; tests point both at the simulator.
#[derive(Debug, Clone)]
pub struct EntraHosts {
    pub public: Url,
    pub china: Url,
}

impl Default for EntraHosts {
    fn default() -> Self {
        Self {
            public: Url::parse("https://login.microsoftonline.com/").expect("static url"),
            china: Url::parse("https://login.chinacloudapi.cn/").expect("static url"),
        }
    }
}

impl EntraHosts {
    /// Both clouds on one host (the simulator).
    pub fn single(host: Url) -> Self {
        Self {
            public: host.clone(),
            china: host,
        }
    }

    pub fn host(&self, cloud: Cloud) -> &Url {
        match cloud {
            Cloud::Public => &self.public,
            Cloud::China => &self.china,
        }
    }
}

/// Which token endpoint: v1 names a resource, v2 names scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TokenVersion {
    #[default]
    V1,
    V2,
}

/// What a token is for, in both spellings; the endpoint version picks one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenTarget {
    /// v1 `resource=`, e.g. `https://api.partnercenter.microsoft.com`.
    pub resource: String,
    /// v2 `scope=`, e.g. `https://api.partnercenter.microsoft.com/user_impersonation`.
    pub scope: String,
}

pub const PARTNER_CENTER_RESOURCE: &str = "https://api.partnercenter.microsoft.com";
pub const GRAPH_RESOURCE: &str = "https://graph.microsoft.com";
pub const ARM_RESOURCE: &str = "https://management.azure.com/";
pub const KEY_VAULT_RESOURCE: &str = "https://vault.azure.net";

impl TokenTarget {
    pub fn partner_center() -> Self {
        Self {
            resource: PARTNER_CENTER_RESOURCE.into(),
            scope: format!("{PARTNER_CENTER_RESOURCE}/user_impersonation"),
        }
    }

    pub fn graph() -> Self {
        Self {
            resource: GRAPH_RESOURCE.into(),
            scope: format!("{GRAPH_RESOURCE}/.default"),
        }
    }

    pub fn arm() -> Self {
        Self {
            resource: ARM_RESOURCE.into(),
            scope: "https://management.azure.com/user_impersonation".into(),
        }
    }

    pub fn key_vault() -> Self {
        Self {
            resource: KEY_VAULT_RESOURCE.into(),
            scope: format!("{KEY_VAULT_RESOURCE}/.default"),
        }
    }

    /// A custom v2 scope such as `https://vault.azure.net/.default`; the v1 resource is the
    /// scope without its last path segment.
    pub fn custom(scope: &str) -> Option<Self> {
        let scope = scope.trim();
        let (resource, permission) = scope.rsplit_once('/')?;
        if permission.is_empty() || !resource.starts_with("https://") || resource.len() <= 8 {
            return None;
        }
        Some(Self {
            resource: resource.to_owned(),
            scope: scope.to_owned(),
        })
    }
}

/// A certificate credential: the private key signs `client_assertion` JWTs, the certificate's
/// SHA-1 thumbprint names it (`x5t`).
pub struct CertificateCredential {
    key_pair: ring::signature::RsaKeyPair,
    x5t: String,
}

impl std::fmt::Debug for CertificateCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateCredential")
            .field("x5t", &self.x5t)
            .finish_non_exhaustive()
    }
}

impl CertificateCredential {
    /// From the certificate PEM and its RSA private key (PKCS#8 `PRIVATE KEY` or PKCS#1
    /// `RSA PRIVATE KEY`).
    pub fn from_pem(certificate_pem: &str, private_key_pem: &str) -> Result<Self, EntraError> {
        use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        let certificate =
            CertificateDer::from_pem_slice(certificate_pem.as_bytes()).map_err(|_| {
                EntraError::Credential("the certificate is not a PEM certificate".into())
            })?;
        let key = PrivateKeyDer::from_pem_slice(private_key_pem.as_bytes()).map_err(|_| {
            EntraError::Credential("the private key is not a PEM private key".into())
        })?;
        let key_pair = match &key {
            PrivateKeyDer::Pkcs8(der) => {
                ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
            }
            PrivateKeyDer::Pkcs1(der) => {
                ring::signature::RsaKeyPair::from_der(der.secret_pkcs1_der())
            }
            _ => {
                return Err(EntraError::Credential(
                    "the private key must be an RSA key (Entra signs client assertions with RS256)"
                        .into(),
                ));
            }
        }
        .map_err(|_| EntraError::Credential("the private key is not a usable RSA key".into()))?;
        let thumbprint = ring::digest::digest(
            &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            certificate.as_ref(),
        );
        Ok(Self {
            key_pair,
            x5t: URL_SAFE_NO_PAD.encode(thumbprint.as_ref()),
        })
    }

    /// The certificate's thumbprint as Entra shows it: base64url SHA-1 (`x5t`).
    pub fn x5t(&self) -> &str {
        &self.x5t
    }

    /// A signed `client_assertion` for `audience` (the token endpoint URL), valid 10 minutes.
    pub fn assertion(&self, client_id: &str, audience: &str) -> Result<String, EntraError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "x5t": self.x5t});
        let claims = serde_json::json!({
            "aud": audience,
            "iss": client_id,
            "sub": client_id,
            "jti": uuid::Uuid::new_v4().to_string(),
            "nbf": now,
            "iat": now,
            "exp": now + 600,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0_u8; self.key_pair.public().modulus_len()];
        self.key_pair
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| EntraError::Credential("signing the client assertion failed".into()))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }
}

/// How the app authenticates to the token endpoint.
#[derive(Clone)]
pub enum ClientCredential {
    Secret(SecretString),
    Certificate(Arc<CertificateCredential>),
}

impl std::fmt::Debug for ClientCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Secret(_) => f.write_str("ClientCredential::Secret([redacted])"),
            Self::Certificate(c) => write!(f, "ClientCredential::Certificate(x5t={})", c.x5t()),
        }
    }
}

/// A confidential client: the partner's multi-tenant app.
#[derive(Debug, Clone)]
pub struct AppIdentity {
    pub client_id: String,
    pub credential: ClientCredential,
    pub cloud: Cloud,
}

/// The grant being redeemed.
#[derive(Clone, Copy)]
pub enum Grant<'a> {
    AuthorizationCode {
        code: &'a SecretString,
        redirect_uri: &'a str,
    },
    RefreshToken(&'a SecretString),
    ClientCredentials,
}

impl std::fmt::Debug for Grant<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.grant_type())
    }
}

impl Grant<'_> {
    pub fn grant_type(&self) -> &'static str {
        match self {
            Self::AuthorizationCode { .. } => "authorization_code",
            Self::RefreshToken(_) => "refresh_token",
            Self::ClientCredentials => "client_credentials",
        }
    }
}

/// A successful token response. Numbers are normalised; secrets stay wrapped.
#[derive(Clone)]
pub struct TokenResponse {
    pub access_token: SecretString,
    /// Absent when Microsoft did not rotate (the doc sample of the refresh grant shows none).
    pub refresh_token: Option<SecretString>,
    pub id_token: Option<SecretString>,
    pub token_type: String,
    pub expires_in: u64,
    /// v1 only: the expiry as Unix seconds.
    pub expires_on: Option<i64>,
    pub scope: Option<String>,
    pub resource: Option<String>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .field("scope", &self.scope)
            .field("resource", &self.resource)
            .finish_non_exhaustive()
    }
}

impl TokenResponse {
    /// The refresh token to keep: the rotated one, or the one presented when none came back.
    pub fn rotated_or(&self, presented: &SecretString) -> (SecretString, bool) {
        match &self.refresh_token {
            Some(new) => (new.clone(), true),
            None => (presented.clone(), false),
        }
    }
}

/// A number Microsoft sends as a string (v1) or a number (v2).
#[derive(Deserialize)]
#[serde(untagged)]
enum Num {
    Int(i64),
    Float(f64),
    Text(String),
}

impl Num {
    fn as_i64(&self) -> Option<i64> {
        match self {
            Self::Int(i) => Some(*i),
            Self::Float(f) => Some(*f as i64),
            Self::Text(s) => s.trim().parse().ok(),
        }
    }
}

#[derive(Deserialize)]
struct RawSuccess {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<Num>,
    #[serde(default)]
    expires_on: Option<Num>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    resource: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
    #[serde(default)]
    error_codes: Vec<Num>,
    #[serde(default)]
    trace_id: Option<String>,
    #[serde(default)]
    correlation_id: Option<String>,
}

/// What an AADSTS answer means for the token, from the documented codes (§1.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AadstsKind {
    /// 700082: expired after 90 days of inactivity.
    RefreshTokenExpired,
    /// 70008: expired or revoked grant.
    GrantExpired,
    /// 50173: revoked (password reset by an admin, "revoke sessions").
    Revoked,
    /// 70043: invalid because of a Conditional Access sign-in frequency.
    SignInFrequency,
    /// 50076 / 50079 / 50078: MFA now required, not registered, or expired.
    MfaRequired,
    /// 65001 / 650052 / 650056 / 650057: consent missing.
    ConsentMissing,
    /// 500011: the resource's service principal is not in the tenant.
    ResourceNotInTenant,
    /// 53003 / 530035 / 530034: blocked by Conditional Access, security defaults or risk.
    BlockedByPolicy,
    /// 7000215 / 7000222 / 700027 / 700016 / `invalid_client`: the app's own credential.
    ClientCredentialInvalid,
    /// 50020 / 50177 / 90002 at a customer: the partner user cannot reach that tenant.
    TenantAccessDenied,
    /// 54005 / 70000: the code was already used, or is not valid.
    CodeInvalid,
    /// 429, 5xx, `temporarily_unavailable`, 50196 (loop detected): try again later.
    Transient,
    Unknown,
}

/// An error answer from the token endpoint, as documented: branch on `error` and
/// `error_codes`, show `description` to people.
#[derive(Debug, Clone)]
pub struct AadstsError {
    pub status: u16,
    pub error: String,
    pub codes: Vec<u32>,
    pub description: String,
    pub trace_id: Option<String>,
    pub correlation_id: Option<String>,
    pub retry_after: Option<Duration>,
}

impl AadstsError {
    /// The first AADSTS code.
    pub fn code(&self) -> Option<u32> {
        self.codes.first().copied()
    }

    pub fn kind(&self) -> AadstsKind {
        for code in &self.codes {
            let kind = match code {
                700082 => AadstsKind::RefreshTokenExpired,
                70008 => AadstsKind::GrantExpired,
                50173 => AadstsKind::Revoked,
                70043 => AadstsKind::SignInFrequency,
                50076 | 50079 | 50078 | 50074 => AadstsKind::MfaRequired,
                65001 | 650052 | 650056 | 650057 => AadstsKind::ConsentMissing,
                500011 => AadstsKind::ResourceNotInTenant,
                53003 | 530035 | 530034 | 53000 | 53001 | 53002 => AadstsKind::BlockedByPolicy,
                7000215 | 7000222 | 700027 | 700016 | 7000112 | 700024 => {
                    AadstsKind::ClientCredentialInvalid
                }
                50020 | 50177 | 90002 | 50034 => AadstsKind::TenantAccessDenied,
                54005 | 70000 | 50011 => AadstsKind::CodeInvalid,
                50196 => AadstsKind::Transient,
                _ => continue,
            };
            return kind;
        }
        if self.status == 429 || self.status >= 500 || self.error == "temporarily_unavailable" {
            return AadstsKind::Transient;
        }
        match self.error.as_str() {
            "invalid_client" | "unauthorized_client" => AadstsKind::ClientCredentialInvalid,
            "interaction_required" => AadstsKind::MfaRequired,
            "consent_required" => AadstsKind::ConsentMissing,
            _ => AadstsKind::Unknown,
        }
    }
}

impl std::fmt::Display for AadstsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code() {
            Some(code) => write!(f, "{} (AADSTS{code}, http {})", self.error, self.status),
            None => write!(f, "{} (http {})", self.error, self.status),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum EntraError {
    #[error("token endpoint refused: {0}")]
    Aadsts(AadstsError),
    #[error("token endpoint unavailable: http {status}")]
    Unavailable {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("token endpoint unreachable: {0}")]
    Network(String),
    #[error("malformed token endpoint response: {0}")]
    Malformed(String),
    #[error("invalid app credential: {0}")]
    Credential(String),
}

impl EntraError {
    /// Worth retrying later: throttling, server errors, network failures. These must never
    /// mark a token broken.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Aadsts(e) => e.kind() == AadstsKind::Transient,
            Self::Unavailable { .. } | Self::Network(_) => true,
            Self::Malformed(_) | Self::Credential(_) => false,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Aadsts(e) => e.retry_after,
            Self::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub fn aadsts(&self) -> Option<&AadstsError> {
        match self {
            Self::Aadsts(e) => Some(e),
            _ => None,
        }
    }
}

/// `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let delta = when.timestamp() - chrono::Utc::now().timestamp();
    Some(Duration::from_secs(delta.max(0) as u64))
}

/// Backoff for transient failures: exponential with full jitter, or the server's
/// `Retry-After` (clamped), whichever it asked for.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// A `Retry-After` longer than this is clamped, so one answer cannot stall a caller.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 4,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    pub fn none() -> Self {
        Self {
            attempts: 1,
            ..Self::default()
        }
    }

    /// The wait before attempt `attempt + 1` (attempt counts from 1).
    pub fn delay(&self, attempt: u32, error: &EntraError) -> Duration {
        if let Some(after) = error.retry_after() {
            return after.min(self.max_retry_after);
        }
        let exp = self
            .base_delay
            .saturating_mul(1_u32 << attempt.saturating_sub(1).min(16))
            .min(self.max_delay);
        let millis = exp.as_millis() as u64;
        Duration::from_millis(rand::Rng::gen_range(
            &mut rand::thread_rng(),
            millis / 2..=millis.max(1),
        ))
    }
}

/// Claims read from an access token. Not verified: the token came straight from the token
/// endpoint over TLS, which is what vouches for it, and tokens for Microsoft's own APIs are not
/// meant to be validated by their clients (Graph tokens are not even verifiable).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AccessTokenClaims {
    #[serde(default)]
    pub amr: Vec<String>,
    #[serde(default)]
    pub tid: Option<String>,
    #[serde(default)]
    pub upn: Option<String>,
    #[serde(default)]
    pub unique_name: Option<String>,
    #[serde(default)]
    pub preferred_username: Option<String>,
    #[serde(default)]
    pub oid: Option<String>,
    #[serde(default)]
    pub aud: Option<serde_json::Value>,
    #[serde(default)]
    pub exp: Option<i64>,
    #[serde(default)]
    pub appid: Option<String>,
}

impl AccessTokenClaims {
    /// Decodes the payload of a JWT without checking its signature (see the type's doc).
    pub fn decode_unverified(jwt: &SecretString) -> Result<Self, EntraError> {
        let payload = jwt
            .expose_secret()
            .split('.')
            .nth(1)
            .ok_or_else(|| EntraError::Malformed("the access token is not a JWT".into()))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .map_err(|_| {
                EntraError::Malformed("the access token payload is not base64url".into())
            })?;
        serde_json::from_slice(&bytes)
            .map_err(|_| EntraError::Malformed("the access token payload is not JSON".into()))
    }

    /// `amr` shows multi-factor authentication: `mfa`, or `multipleauthn` from federated MFA.
    pub fn has_mfa(&self) -> bool {
        self.amr.iter().any(|m| {
            let m = m.to_ascii_lowercase();
            m == "mfa" || m.ends_with("multipleauthn")
        })
    }

    pub fn user(&self) -> Option<&str> {
        self.upn
            .as_deref()
            .or(self.unique_name.as_deref())
            .or(self.preferred_username.as_deref())
    }
}

/// What to put in an authorize URL.
#[derive(Debug, Clone)]
pub struct AuthorizeRequest<'a> {
    pub cloud: Cloud,
    /// `common` for a multi-tenant app, or the partner tenant.
    pub tenant: &'a str,
    pub client_id: &'a str,
    pub redirect_uri: &'a str,
    pub state: &'a str,
    pub nonce: &'a str,
    pub version: TokenVersion,
    /// v1: the resource; v2: the space-separated scopes (offline_access is added).
    pub target: &'a TokenTarget,
    pub extra_scopes: &'a [String],
}

/// The Entra token client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EntraClient {
    http: reqwest::Client,
    hosts: EntraHosts,
}

impl EntraClient {
    pub fn new(hosts: EntraHosts) -> Result<Self, EntraError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| EntraError::Network(e.to_string()))?;
        Ok(Self { http, hosts })
    }

    pub fn hosts(&self) -> &EntraHosts {
        &self.hosts
    }

    pub fn token_url(&self, cloud: Cloud, tenant: &str, version: TokenVersion) -> Url {
        let path = match version {
            TokenVersion::V1 => format!("{tenant}/oauth2/token"),
            TokenVersion::V2 => format!("{tenant}/oauth2/v2.0/token"),
        };
        self.hosts
            .host(cloud)
            .join(&path)
            .unwrap_or_else(|_| self.hosts.host(cloud).clone())
    }

    /// The consent URL an admin agent opens. Asks for MFA (`amr_values=mfa`), as Microsoft's
    /// PartnerConsent sample does; the broker still checks the token's `amr` afterwards.
    pub fn authorize_url(&self, request: &AuthorizeRequest<'_>) -> Url {
        let path = match request.version {
            TokenVersion::V1 => format!("{}/oauth2/authorize", request.tenant),
            TokenVersion::V2 => format!("{}/oauth2/v2.0/authorize", request.tenant),
        };
        let mut url = self
            .hosts
            .host(request.cloud)
            .join(&path)
            .unwrap_or_else(|_| self.hosts.host(request.cloud).clone());
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("client_id", request.client_id)
                .append_pair("response_type", "code")
                .append_pair("redirect_uri", request.redirect_uri)
                .append_pair("response_mode", "query");
            match request.version {
                TokenVersion::V1 => {
                    query.append_pair("resource", &request.target.resource);
                }
                TokenVersion::V2 => {
                    let mut scopes = vec![request.target.scope.clone()];
                    scopes.extend(request.extra_scopes.iter().cloned());
                    for s in ["offline_access", "openid", "profile"] {
                        if !scopes.iter().any(|x| x == s) {
                            scopes.push(s.to_owned());
                        }
                    }
                    query.append_pair("scope", &scopes.join(" "));
                }
            }
            query
                .append_pair("state", request.state)
                .append_pair("nonce", request.nonce)
                .append_pair("amr_values", "mfa");
        }
        url
    }

    /// One redemption at `{tenant}`'s token endpoint. No retries: see [`Self::redeem_with_retry`].
    pub async fn redeem(
        &self,
        app: &AppIdentity,
        tenant: &str,
        version: TokenVersion,
        target: &TokenTarget,
        grant: Grant<'_>,
    ) -> Result<TokenResponse, EntraError> {
        let url = self.token_url(app.cloud, tenant, version);
        let mut form: Vec<(&str, String)> = vec![
            ("client_id", app.client_id.clone()),
            ("grant_type", grant.grant_type().to_owned()),
        ];
        match grant {
            Grant::AuthorizationCode { code, redirect_uri } => {
                form.push(("code", code.expose_secret().to_owned()));
                form.push(("redirect_uri", redirect_uri.to_owned()));
            }
            Grant::RefreshToken(rt) => form.push(("refresh_token", rt.expose_secret().to_owned())),
            Grant::ClientCredentials => {}
        }
        match version {
            TokenVersion::V1 => form.push(("resource", target.resource.clone())),
            TokenVersion::V2 => {
                let scope = match grant {
                    // The app's permissions: client credentials take `.default` only.
                    Grant::ClientCredentials => target.scope.clone(),
                    _ => format!("{} offline_access", target.scope),
                };
                form.push(("scope", scope));
            }
        }
        match &app.credential {
            ClientCredential::Secret(secret) => {
                form.push(("client_secret", secret.expose_secret().to_owned()))
            }
            ClientCredential::Certificate(certificate) => {
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned(),
                ));
                form.push((
                    "client_assertion",
                    certificate.assertion(&app.client_id, url.as_str())?,
                ));
            }
        }
        let response = self
            .http
            .post(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            // Without the URL: it is harmless, but the error's Display is all that is kept.
            .map_err(|e| EntraError::Network(e.without_url().to_string()))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = response
            .bytes()
            .await
            .map_err(|e| EntraError::Network(e.without_url().to_string()))?;
        parse_token_response(status, retry_after, &body)
    }

    /// [`Self::redeem`], retrying transient failures per `policy`.
    pub async fn redeem_with_retry(
        &self,
        app: &AppIdentity,
        tenant: &str,
        version: TokenVersion,
        target: &TokenTarget,
        grant: Grant<'_>,
        policy: RetryPolicy,
    ) -> Result<TokenResponse, EntraError> {
        let mut attempt = 1;
        loop {
            match self.redeem(app, tenant, version, target, grant).await {
                Err(e) if e.is_transient() && attempt < policy.attempts => {
                    let delay = policy.delay(attempt, &e);
                    tracing::warn!(error = %e, attempt, delay_ms = delay.as_millis() as u64, "transient token endpoint failure; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// What the token endpoint answered, from its status, `Retry-After` and body: a token, an
/// AADSTS error (branch on `error` and `error_codes`), or unavailable/malformed. Public so
/// that it can be fuzzed: the body is whatever the network delivered.
pub fn parse_token_response(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Result<TokenResponse, EntraError> {
    if (200..300).contains(&status) {
        return parse_success(body);
    }
    match serde_json::from_slice::<RawError>(body) {
        Ok(raw) if !raw.error.is_empty() => Err(EntraError::Aadsts(AadstsError {
            status,
            error: raw.error,
            codes: raw
                .error_codes
                .iter()
                .filter_map(Num::as_i64)
                .filter_map(|c| u32::try_from(c).ok())
                .collect(),
            description: raw.error_description,
            trace_id: raw.trace_id,
            correlation_id: raw.correlation_id,
            retry_after,
        })),
        _ if status == 429 || status >= 500 => Err(EntraError::Unavailable {
            status,
            retry_after,
        }),
        _ => Err(EntraError::Malformed(format!(
            "http {status} without an OAuth error body"
        ))),
    }
}

fn parse_success(body: &[u8]) -> Result<TokenResponse, EntraError> {
    let raw: RawSuccess = serde_json::from_slice(body)
        .map_err(|_| EntraError::Malformed("the success body is not a token response".into()))?;
    let expires_in = raw
        .expires_in
        .as_ref()
        .and_then(Num::as_i64)
        .ok_or_else(|| EntraError::Malformed("expires_in is missing".into()))?;
    Ok(TokenResponse {
        access_token: SecretString::from(raw.access_token),
        refresh_token: raw
            .refresh_token
            .filter(|t| !t.is_empty())
            .map(SecretString::from),
        id_token: raw.id_token.map(SecretString::from),
        token_type: raw.token_type.unwrap_or_else(|| "Bearer".into()),
        expires_in: expires_in.max(0) as u64,
        expires_on: raw.expires_on.as_ref().and_then(Num::as_i64),
        scope: raw.scope,
        resource: raw.resource,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_arrive_as_strings_or_numbers() {
        let v1 = br#"{"token_type":"Bearer","expires_in":"3599","expires_on":"1700003600","access_token":"a.b.c","refresh_token":"0.AAAA"}"#;
        let parsed = parse_success(v1).unwrap();
        assert_eq!(parsed.expires_in, 3599);
        assert_eq!(parsed.expires_on, Some(1_700_003_600));
        let v2 = br#"{"token_type":"Bearer","expires_in":3599,"access_token":"a.b.c"}"#;
        let parsed = parse_success(v2).unwrap();
        assert_eq!(parsed.expires_in, 3599);
        assert!(parsed.refresh_token.is_none());
        let old = SecretString::from("old-rt");
        let (kept, rotated) = parsed.rotated_or(&old);
        assert_eq!(kept.expose_secret(), "old-rt");
        assert!(!rotated);
    }

    #[test]
    fn classification_uses_codes_then_error() {
        let e = |status, error: &str, codes: Vec<u32>| AadstsError {
            status,
            error: error.into(),
            codes,
            description: String::new(),
            trace_id: None,
            correlation_id: None,
            retry_after: None,
        };
        assert_eq!(
            e(400, "invalid_grant", vec![700082]).kind(),
            AadstsKind::RefreshTokenExpired
        );
        assert_eq!(
            e(400, "invalid_grant", vec![50173]).kind(),
            AadstsKind::Revoked
        );
        assert_eq!(
            e(400, "interaction_required", vec![50079]).kind(),
            AadstsKind::MfaRequired
        );
        assert_eq!(
            e(400, "invalid_grant", vec![53003]).kind(),
            AadstsKind::BlockedByPolicy
        );
        assert_eq!(
            e(401, "invalid_client", vec![7000222]).kind(),
            AadstsKind::ClientCredentialInvalid
        );
        assert_eq!(
            e(401, "invalid_client", vec![]).kind(),
            AadstsKind::ClientCredentialInvalid
        );
        assert_eq!(
            e(503, "temporarily_unavailable", vec![]).kind(),
            AadstsKind::Transient
        );
        assert_eq!(
            e(400, "invalid_grant", vec![50196]).kind(),
            AadstsKind::Transient
        );
        assert_eq!(e(400, "something_new", vec![]).kind(), AadstsKind::Unknown);
    }

    #[test]
    fn retry_after_accepts_seconds_and_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
        let policy = RetryPolicy::default();
        let throttled = EntraError::Unavailable {
            status: 429,
            retry_after: Some(Duration::from_secs(600)),
        };
        assert_eq!(policy.delay(1, &throttled), policy.max_retry_after);
    }

    #[test]
    fn custom_scopes_derive_their_v1_resource() {
        let t = TokenTarget::custom("https://vault.azure.net/.default").unwrap();
        assert_eq!(t.resource, "https://vault.azure.net");
        assert!(TokenTarget::custom("not a scope").is_none());
        assert!(TokenTarget::custom("https:///x").is_none());
    }

    #[test]
    fn debug_never_shows_secrets() {
        let response = TokenResponse {
            access_token: SecretString::from("eyJ-access"),
            refresh_token: Some(SecretString::from("0.AAAA-refresh")),
            id_token: None,
            token_type: "Bearer".into(),
            expires_in: 1,
            expires_on: None,
            scope: None,
            resource: None,
        };
        let shown = format!("{response:?}");
        assert!(
            !shown.contains("eyJ-access") && !shown.contains("0.AAAA"),
            "{shown}"
        );
        let credential = ClientCredential::Secret(SecretString::from("sim~secret"));
        assert!(!format!("{credential:?}").contains("sim~secret"));
    }
}
