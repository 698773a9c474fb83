//! One Azure Key Vault (`{vault}.vault.azure.net`): RSA keys with versions (get, create, rotate,
//! wrapkey, unwrapkey) and secrets with versions (set, get), so the token broker's Key Vault
//! key provider and secret references are tested for real.
//!
//! As Key Vault does: every call needs `api-version`; an unauthenticated call gets 401 with the
//! `WWW-Authenticate` challenge naming the authority and resource; a wrapped key names the key
//! version that wrapped it, and every old version still unwraps. Keys are RSA-2048 derived from
//! the seed; wrapping supports `RSA-OAEP-256` and `RSA1_5`.

use std::collections::HashMap;

use axum::{
    Json, Router,
    extract::{Path, Query, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rsa::{Oaep, Pkcs1v15Encrypt, RsaPrivateKey, traits::PublicKeyParts};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::{Host, Sim, http::error};

/// The key the simulator's vault starts with.
pub const DEFAULT_KEY: &str = "palisade-kek";

pub struct KeyVersion {
    pub version: String,
    private: RsaPrivateKey,
    created_ms: i64,
}

pub struct SecretVersion {
    version: String,
    value: String,
    created_ms: i64,
}

#[derive(Default)]
pub struct Vault {
    keys: HashMap<String, Vec<KeyVersion>>,
    secrets: HashMap<String, Vec<SecretVersion>>,
    generated: u64,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Vault {
    fn new_version(&mut self, seed: u64, name: &str, now: i64) -> anyhow::Result<()> {
        self.generated += 1;
        let private = crate::pki::rsa_from_seed(seed ^ 0x4b56_0000 ^ self.generated)?;
        let version = crate::scenario::derived_id(seed, &format!("kv/{name}/{}", self.generated))
            .replace('-', "");
        self.keys
            .entry(name.to_owned())
            .or_default()
            .push(KeyVersion {
                version,
                private,
                created_ms: now,
            });
        Ok(())
    }
}

type KvResult = Result<Response, Response>;

fn kv_error(status: StatusCode, code: &str, message: &str) -> Response {
    error(Host::KeyVault, status, code, message)
}

pub fn router(sim: Sim) -> Router {
    Router::new()
        .route("/keys/{name}", get(get_key))
        .route(
            "/keys/{name}/{segment}",
            get(get_key_version).post(key_operation),
        )
        .route(
            "/keys/{name}/{version}/{operation}",
            post(versioned_operation),
        )
        .route("/secrets/{name}", get(get_secret).put(set_secret))
        .route("/secrets/{name}/{version}", get(get_secret_version))
        .layer(axum::middleware::from_fn_with_state(
            sim.clone(),
            authenticate,
        ))
        .with_state(sim)
}

async fn authenticate(State(sim): State<Sim>, request: Request, next: Next) -> Response {
    let has_version = request.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|p| p.starts_with("api-version=") && p.len() > 12)
    });
    if !has_version {
        return kv_error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            "The 'api-version' query parameter is missing.",
        );
    }
    if let Err(reason) = crate::http::verify(&sim, request.headers(), &[crate::KEY_VAULT]) {
        let mut response = kv_error(StatusCode::UNAUTHORIZED, "Unauthorized", reason);
        let challenge = format!(
            "Bearer authorization=\"{}{}\", resource=\"{}\"",
            sim.urls().login,
            sim.scenario().operator.tenant_id,
            crate::KEY_VAULT
        );
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        return response;
    }
    next.run(request).await
}

fn kid(sim: &Sim, name: &str, version: &str) -> String {
    format!("{}keys/{name}/{version}", sim.urls().key_vault)
}

fn key_bundle(sim: &Sim, name: &str, key: &KeyVersion) -> Value {
    let public = key.private.to_public_key();
    json!({
        "key": {
            "kid": kid(sim, name, &key.version), "kty": "RSA",
            "key_ops": ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"],
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        },
        "attributes": {"enabled": true, "created": key.created_ms / 1000, "updated": key.created_ms / 1000,
                       "recoveryLevel": "Recoverable+Purgeable", "recoverableDays": 90},
    })
}

/// Runs `f` on the named key's version (the latest when `version` is None), creating the
/// default key on first use.
fn with_key<R>(
    sim: &Sim,
    name: &str,
    version: Option<&str>,
    f: impl FnOnce(&KeyVersion) -> R,
) -> Result<R, Response> {
    let seed = sim.scenario().seed;
    let now = sim.now_millis();
    sim.with_vault(|vault| {
        if name == DEFAULT_KEY && !vault.keys.contains_key(name) {
            vault.new_version(seed, name, now).map_err(|e| {
                kv_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    &e.to_string(),
                )
            })?;
        }
        let versions = vault.keys.get(name).ok_or_else(|| {
            kv_error(
                StatusCode::NOT_FOUND,
                "KeyNotFound",
                &format!("A key with (name/id) {name} was not found in this key vault."),
            )
        })?;
        let key = match version.filter(|v| !v.is_empty()) {
            None => versions.last(),
            Some(v) => versions.iter().find(|k| k.version.eq_ignore_ascii_case(v)),
        }
        .ok_or_else(|| {
            kv_error(
                StatusCode::NOT_FOUND,
                "KeyNotFound",
                &format!("The key version of {name} was not found."),
            )
        })?;
        Ok(f(key))
    })
}

async fn get_key(State(sim): State<Sim>, Path(name): Path<String>) -> KvResult {
    let bundle = with_key(&sim, &name, None, |k| key_bundle(&sim, &name, k))?;
    Ok(Json(bundle).into_response())
}

async fn get_key_version(
    State(sim): State<Sim>,
    Path((name, version)): Path<(String, String)>,
) -> KvResult {
    let bundle = with_key(&sim, &name, Some(&version), |k| key_bundle(&sim, &name, k))?;
    Ok(Json(bundle).into_response())
}

/// `create`, `rotate`, or an operation on the latest version (`wrapkey`, `unwrapkey`).
async fn key_operation(
    State(sim): State<Sim>,
    Path((name, segment)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> KvResult {
    match segment.to_ascii_lowercase().as_str() {
        "create" | "rotate" => {
            let seed = sim.scenario().seed;
            let now = sim.now_millis();
            let exists = sim.with_vault(|v| v.keys.contains_key(&name)) || name == DEFAULT_KEY;
            if segment.eq_ignore_ascii_case("rotate") && !exists {
                return Err(kv_error(
                    StatusCode::NOT_FOUND,
                    "KeyNotFound",
                    &format!("A key with (name/id) {name} was not found in this key vault."),
                ));
            }
            if name == DEFAULT_KEY {
                with_key(&sim, &name, None, |_| ())?;
            }
            sim.with_vault(|v| v.new_version(seed, &name, now))
                .map_err(|e| {
                    kv_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "InternalError",
                        &e.to_string(),
                    )
                })?;
            get_key(State(sim), Path(name)).await
        }
        "wrapkey" | "unwrapkey" => crypt(&sim, &name, None, &segment, &body),
        _ => Err(kv_error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            &format!("Unknown operation {segment}."),
        )),
    }
}

async fn versioned_operation(
    State(sim): State<Sim>,
    Path((name, version, operation)): Path<(String, String, String)>,
    body: axum::body::Bytes,
) -> KvResult {
    crypt(&sim, &name, Some(&version), &operation, &body)
}

/// `{"alg": "RSA-OAEP-256", "value": base64url}` → `{"kid": ..., "value": base64url}`.
fn crypt(sim: &Sim, name: &str, version: Option<&str>, operation: &str, body: &[u8]) -> KvResult {
    let wrap = match operation.to_ascii_lowercase().as_str() {
        "wrapkey" => true,
        "unwrapkey" => false,
        other => {
            return Err(kv_error(
                StatusCode::BAD_REQUEST,
                "BadParameter",
                &format!("Unknown operation {other}."),
            ));
        }
    };
    let request: Value = serde_json::from_slice(body).map_err(|_| {
        kv_error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            "The request body is not valid JSON.",
        )
    })?;
    let alg = request["alg"].as_str().unwrap_or_default().to_owned();
    let value = request["value"]
        .as_str()
        .and_then(|v| URL_SAFE_NO_PAD.decode(v.trim_end_matches('=')).ok())
        .ok_or_else(|| {
            kv_error(
                StatusCode::BAD_REQUEST,
                "BadParameter",
                "value must be base64url.",
            )
        })?;
    if alg != "RSA-OAEP-256" && alg != "RSA1_5" {
        return Err(kv_error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            &format!("Unsupported algorithm '{alg}'; use RSA-OAEP-256."),
        ));
    }
    let result = with_key(sim, name, version, |key| {
        let mut rng = rand::rngs::OsRng;
        let output = match (wrap, alg.as_str()) {
            (true, "RSA-OAEP-256") => {
                key.private
                    .to_public_key()
                    .encrypt(&mut rng, Oaep::new::<Sha256>(), &value)
            }
            (true, _) => key
                .private
                .to_public_key()
                .encrypt(&mut rng, Pkcs1v15Encrypt, &value),
            (false, "RSA-OAEP-256") => key.private.decrypt(Oaep::new::<Sha256>(), &value),
            (false, _) => key.private.decrypt(Pkcs1v15Encrypt, &value),
        };
        output.map(|bytes| (kid(sim, name, &key.version), bytes))
    })?;
    match result {
        Ok((kid, bytes)) => {
            Ok(Json(json!({"kid": kid, "value": URL_SAFE_NO_PAD.encode(bytes)})).into_response())
        }
        Err(_) => Err(kv_error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            "The ciphertext could not be processed with this key version.",
        )),
    }
}

fn secret_bundle(sim: &Sim, name: &str, secret: &SecretVersion) -> Value {
    json!({
        "value": secret.value,
        "id": format!("{}secrets/{name}/{}", sim.urls().key_vault, secret.version),
        "attributes": {"enabled": true, "created": secret.created_ms / 1000, "updated": secret.created_ms / 1000, "recoveryLevel": "Recoverable+Purgeable"},
    })
}

fn valid_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 127
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// `PUT /secrets/{name}` with `{"value": ...}`: each set creates a new version.
async fn set_secret(
    State(sim): State<Sim>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> KvResult {
    if !valid_secret_name(&name) {
        return Err(kv_error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            "The secret name must match ^[0-9a-zA-Z-]+$.",
        ));
    }
    let request: Value = serde_json::from_slice(&body).map_err(|_| {
        kv_error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            "The request body is not valid JSON.",
        )
    })?;
    let value = request["value"]
        .as_str()
        .ok_or_else(|| {
            kv_error(
                StatusCode::BAD_REQUEST,
                "BadParameter",
                "value is required.",
            )
        })?
        .to_owned();
    let now = sim.now_millis();
    let bundle = sim.with_vault(|v| {
        let version = uuid::Uuid::new_v4().simple().to_string();
        let versions = v.secrets.entry(name.clone()).or_default();
        versions.push(SecretVersion {
            version,
            value,
            created_ms: now,
        });
        secret_bundle(&sim, &name, versions.last().expect("just pushed"))
    });
    Ok(Json(bundle).into_response())
}

async fn get_secret(
    State(sim): State<Sim>,
    Path(name): Path<String>,
    Query(_q): Query<HashMap<String, String>>,
) -> KvResult {
    sim.with_vault(|v| {
        v.secrets
            .get(&name)
            .and_then(|s| s.last())
            .map(|s| secret_bundle(&sim, &name, s))
    })
    .map(|b| Json(b).into_response())
    .ok_or_else(|| {
        kv_error(
            StatusCode::NOT_FOUND,
            "SecretNotFound",
            &format!("A secret with (name/id) {name} was not found in this key vault."),
        )
    })
}

async fn get_secret_version(
    State(sim): State<Sim>,
    Path((name, version)): Path<(String, String)>,
) -> KvResult {
    sim.with_vault(|v| {
        v.secrets
            .get(&name)
            .and_then(|s| s.iter().find(|s| s.version.eq_ignore_ascii_case(&version)))
            .map(|s| secret_bundle(&sim, &name, s))
    })
    .map(|b| Json(b).into_response())
    .ok_or_else(|| {
        kv_error(
            StatusCode::NOT_FOUND,
            "SecretNotFound",
            &format!("A secret with (name/id) {name} was not found in this key vault."),
        )
    })
}
