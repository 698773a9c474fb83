//! A HashiCorp Vault transit secrets engine, as a stand-in. This is **not** a Microsoft
//! endpoint: no Vault binary can run where Palisade is built and tested, and the token broker's
//! `vault_transit` key provider needs something real to talk to over HTTP. It lives here
//! because ms-sim already has the listeners, the request log and the fault injection.
//!
//! It follows Vault's HTTP API for the calls Palisade makes, exactly as documented:
//! `POST /v1/{mount}/encrypt/{name}` `{"plaintext": base64}` → `{"data": {"ciphertext":
//! "vault:v1:…", "key_version": 1}}`, `POST /v1/{mount}/decrypt/{name}` `{"ciphertext"}` →
//! `{"data": {"plaintext": base64}}`, `GET /v1/{mount}/keys/{name}` (the key's versions),
//! `POST /v1/{mount}/keys/{name}` (create) and `POST /v1/{mount}/keys/{name}/rotate`. Every
//! answer is Vault's envelope (`request_id`, `lease_id`, `data`, `warnings`…), every error is
//! `{"errors": ["…"]}` with Vault's status and wording. The token travels in `X-Vault-Token`;
//! an absent or unknown token is a 403 `permission denied`. `X-Vault-Namespace` scopes keys.
//!
//! Keys are `aes256-gcm96`: the ciphertext is `vault:v{N}:` and the standard base64 of a
//! 12-byte nonce, then the sealed data with its tag, under version N's key, which derives from
//! the seed. Encrypting with a missing key creates it (Vault's upsert); `palisade-kek` exists
//! in the mount `transit` of the root namespace from the start. Not simulated: convergent and derived keys,
//! `associated_data`, batches, `min_decryption_version`, other key types.

use std::collections::{BTreeSet, HashMap};

use axum::{
    Json, Router,
    extract::{Path, Request, State},
    http::{HeaderMap, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::any,
};
use base64::{Engine, engine::general_purpose::STANDARD};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{Host, Sim, http::error};

/// The mount the simulator's Vault has, and the key it starts with.
pub const DEFAULT_MOUNT: &str = "transit";
pub const DEFAULT_KEY: &str = "palisade-kek";

const PREFIX: &str = "vault:v";

struct TransitKey {
    /// Version N is `versions[N - 1]`: (key, created at, unix seconds).
    versions: Vec<([u8; 32], i64)>,
}

/// Keys by (namespace, mount, name), and the tokens the server accepts.
pub struct Transit {
    keys: HashMap<(String, String, String), TransitKey>,
    mounts: BTreeSet<String>,
    tokens: BTreeSet<String>,
}

impl std::fmt::Debug for Transit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transit")
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .field("mounts", &self.mounts)
            .finish_non_exhaustive()
    }
}

/// The token the simulator's Vault accepts for every transit path (a root-like token).
pub fn root_token(seed: u64) -> String {
    let digest = Sha256::digest(format!("{seed}/vault-transit/root-token").as_bytes());
    format!("hvs.{}", &hex(&digest)[..24])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Transit {
    pub fn new(seed: u64) -> Self {
        Self {
            keys: HashMap::new(),
            mounts: BTreeSet::from([DEFAULT_MOUNT.to_owned()]),
            tokens: BTreeSet::from([root_token(seed)]),
        }
    }

    fn key_material(seed: u64, id: &(String, String, String), version: usize) -> [u8; 32] {
        let (namespace, mount, name) = id;
        let digest = Sha256::digest(
            format!("{seed}/vault-transit/{namespace}/{mount}/{name}/{version}").as_bytes(),
        );
        let mut key = [0_u8; 32];
        key.copy_from_slice(&digest);
        key
    }

    fn add_version(&mut self, seed: u64, id: &(String, String, String), now_secs: i64) -> usize {
        let next = self.keys.get(id).map_or(0, |k| k.versions.len()) + 1;
        let material = Self::key_material(seed, id, next);
        self.keys
            .entry(id.clone())
            .or_insert_with(|| TransitKey {
                versions: Vec::new(),
            })
            .versions
            .push((material, now_secs));
        next
    }
}

type VaultResult = Result<Response, Response>;

fn vault_error(status: StatusCode, message: &str) -> Response {
    error(Host::VaultTransit, status, "", message)
}

/// Vault's answer envelope around `data`.
fn envelope(data: Value) -> Response {
    Json(json!({
        "request_id": uuid::Uuid::new_v4().to_string(),
        "lease_id": "", "renewable": false, "lease_duration": 0,
        "data": data, "wrap_info": null, "warnings": null, "auth": null,
        "mount_type": "transit",
    }))
    .into_response()
}

pub fn router(sim: Sim) -> Router {
    Router::new()
        .route("/v1/{*path}", any(dispatch))
        .layer(axum::middleware::from_fn_with_state(
            sim.clone(),
            authenticate,
        ))
        .with_state(sim)
}

async fn authenticate(State(sim): State<Sim>, request: Request, next: Next) -> Response {
    let token = request
        .headers()
        .get("x-vault-token")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or_default();
    let known = !token.is_empty() && sim.with_transit(|t| t.tokens.contains(token));
    if !known {
        return vault_error(StatusCode::FORBIDDEN, "permission denied");
    }
    next.run(request).await
}

fn namespace(headers: &HeaderMap) -> String {
    headers
        .get("x-vault-namespace")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .trim_matches('/')
        .to_owned()
}

enum Operation {
    Encrypt,
    Decrypt,
    Key,
    Rotate,
}

/// Splits `{mount...}/{operation}/{name}[/rotate]`; a mount may itself contain slashes.
fn parse(path: &str) -> Option<(String, Operation, String)> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let n = segments.len();
    let (mount_end, op, name) = match segments.as_slice() {
        [.., "keys", name, "rotate"] if n >= 4 => (n - 3, Operation::Rotate, *name),
        [.., "encrypt", name] if n >= 3 => (n - 2, Operation::Encrypt, *name),
        [.., "decrypt", name] if n >= 3 => (n - 2, Operation::Decrypt, *name),
        [.., "keys", name] if n >= 3 => (n - 2, Operation::Key, *name),
        _ => return None,
    };
    Some((segments[..mount_end].join("/"), op, (*name).to_owned()))
}

async fn dispatch(
    State(sim): State<Sim>,
    Path(path): Path<String>,
    method: axum::http::Method,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> VaultResult {
    let no_route = || {
        vault_error(
            StatusCode::NOT_FOUND,
            &format!("no handler for route \"{path}\". route entry not found."),
        )
    };
    let (mount, operation, name) = parse(&path).ok_or_else(no_route)?;
    if !sim.with_transit(|t| t.mounts.contains(&mount)) {
        return Err(no_route());
    }
    let id = (namespace(&headers), mount, name);
    let write = method == axum::http::Method::POST || method == axum::http::Method::PUT;
    let request: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&body)
            .map_err(|_| vault_error(StatusCode::BAD_REQUEST, "failed to parse JSON input"))?
    };
    let unsupported = || vault_error(StatusCode::METHOD_NOT_ALLOWED, "unsupported operation");
    match operation {
        Operation::Encrypt if write => encrypt(&sim, &id, &request),
        Operation::Decrypt if write => decrypt(&sim, &id, &request),
        Operation::Rotate if write => rotate(&sim, &id),
        Operation::Key if method == axum::http::Method::GET => read_key(&sim, &id),
        Operation::Key if write => {
            let (seed, now) = (sim.scenario().seed, sim.now_millis() / 1000);
            sim.with_transit(|t| {
                if !t.keys.contains_key(&id) {
                    t.add_version(seed, &id, now);
                }
            });
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        _ => Err(unsupported()),
    }
}

/// The default key exists from the start in the root namespace (created lazily, at first use).
fn ensure_default(sim: &Sim, id: &(String, String, String)) {
    if id.0.is_empty() && id.1 == DEFAULT_MOUNT && id.2 == DEFAULT_KEY {
        let (seed, now) = (sim.scenario().seed, sim.now_millis() / 1000);
        sim.with_transit(|t| {
            if !t.keys.contains_key(id) {
                t.add_version(seed, id, now);
            }
        });
    }
}

fn cipher(material: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, material).expect("32 bytes is an AES-256 key"))
}

fn encrypt(sim: &Sim, id: &(String, String, String), request: &Value) -> VaultResult {
    ensure_default(sim, id);
    let Some(encoded) = request["plaintext"].as_str() else {
        return Err(vault_error(
            StatusCode::BAD_REQUEST,
            "missing plaintext to encrypt",
        ));
    };
    let mut in_out = STANDARD
        .decode(encoded)
        .map_err(|_| vault_error(StatusCode::BAD_REQUEST, "failed to base64-decode plaintext"))?;
    let requested = request["key_version"].as_u64().unwrap_or(0) as usize;
    let (seed, now) = (sim.scenario().seed, sim.now_millis() / 1000);
    let (version, material) = sim.with_transit(|t| {
        // Encrypting with a key that does not exist creates it (upsert), as Vault does.
        if !t.keys.contains_key(id) {
            t.add_version(seed, id, now);
        }
        let key = &t.keys[id];
        let latest = key.versions.len();
        if requested > latest {
            return Err(vault_error(
                StatusCode::BAD_REQUEST,
                "requested version for encryption is higher than the latest key version",
            ));
        }
        let version = if requested == 0 { latest } else { requested };
        Ok((version, key.versions[version - 1].0))
    })?;
    let mut nonce = [0_u8; NONCE_LEN];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
    cipher(&material)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::empty(),
            &mut in_out,
        )
        .map_err(|_| vault_error(StatusCode::INTERNAL_SERVER_ERROR, "encryption failed"))?;
    let mut blob = nonce.to_vec();
    blob.extend_from_slice(&in_out);
    Ok(envelope(json!({
        "ciphertext": format!("{PREFIX}{version}:{}", STANDARD.encode(blob)),
        "key_version": version,
    })))
}

fn decrypt(sim: &Sim, id: &(String, String, String), request: &Value) -> VaultResult {
    ensure_default(sim, id);
    let bad = |message: &str| vault_error(StatusCode::BAD_REQUEST, message);
    let Some(ciphertext) = request["ciphertext"].as_str().filter(|c| !c.is_empty()) else {
        return Err(bad("missing ciphertext to decrypt"));
    };
    let versions = sim
        .with_transit(|t| t.keys.get(id).map(|k| k.versions.clone()))
        .ok_or_else(|| bad("encryption key not found"))?;
    // Vault's checks, in Vault's order and words.
    let rest = ciphertext
        .strip_prefix(PREFIX)
        .ok_or_else(|| bad("invalid ciphertext: no prefix"))?;
    let (version, encoded) = rest
        .split_once(':')
        .ok_or_else(|| bad("invalid ciphertext: wrong number of fields"))?;
    let version: usize = version
        .parse()
        .map_err(|_| bad("invalid ciphertext: version number could not be decoded"))?;
    // Version 0 is the first implementation's numbering of version 1.
    let version = version.max(1);
    if version > versions.len() {
        return Err(bad("invalid ciphertext: version is too new"));
    }
    let mut blob = STANDARD
        .decode(encoded)
        .map_err(|_| bad("invalid ciphertext: could not decode base64"))?;
    if blob.len() < NONCE_LEN {
        return Err(bad("invalid ciphertext: nonce length"));
    }
    let mut sealed = blob.split_off(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = blob.try_into().expect("split at the nonce length");
    let plain = cipher(&versions[version - 1].0)
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::empty(),
            &mut sealed,
        )
        .map_err(|_| bad("cipher: message authentication failed"))?;
    Ok(envelope(json!({"plaintext": STANDARD.encode(plain)})))
}

fn key_data(id: &(String, String, String), key: &TransitKey) -> Value {
    let keys: serde_json::Map<String, Value> = key
        .versions
        .iter()
        .enumerate()
        .map(|(i, (_, created))| ((i + 1).to_string(), json!(created)))
        .collect();
    json!({
        "name": id.2, "type": "aes256-gcm96", "keys": keys,
        "latest_version": key.versions.len(),
        "min_available_version": 0, "min_decryption_version": 1, "min_encryption_version": 0,
        "deletion_allowed": false, "derived": false, "exportable": false,
        "allow_plaintext_backup": false, "auto_rotate_period": 0, "imported_key": false,
        "supports_encryption": true, "supports_decryption": true, "supports_derivation": true,
        "supports_signing": false,
    })
}

fn read_key(sim: &Sim, id: &(String, String, String)) -> VaultResult {
    ensure_default(sim, id);
    sim.with_transit(|t| t.keys.get(id).map(|k| key_data(id, k)))
        .map(envelope)
        // Vault answers a read of a missing key with 404 and no message.
        .ok_or_else(|| {
            (
                StatusCode::NOT_FOUND,
                Json(json!({"errors": Value::Array(Vec::new())})),
            )
                .into_response()
        })
}

/// Rotation answers with the key, as Vault 1.13 and later do (older versions: 204).
fn rotate(sim: &Sim, id: &(String, String, String)) -> VaultResult {
    ensure_default(sim, id);
    let (seed, now) = (sim.scenario().seed, sim.now_millis() / 1000);
    sim.with_transit(|t| {
        if !t.keys.contains_key(id) {
            return None;
        }
        t.add_version(seed, id, now);
        t.keys.get(id).map(|k| key_data(id, k))
    })
    .map(envelope)
    .ok_or_else(|| vault_error(StatusCode::BAD_REQUEST, "key not found"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_mount_operation_and_key() {
        let (mount, op, name) = parse("transit/encrypt/palisade-kek").unwrap();
        assert_eq!((mount.as_str(), name.as_str()), ("transit", "palisade-kek"));
        assert!(matches!(op, Operation::Encrypt));
        let (mount, op, name) = parse("team/transit/keys/k/rotate").unwrap();
        assert_eq!((mount.as_str(), name.as_str()), ("team/transit", "k"));
        assert!(matches!(op, Operation::Rotate));
        assert!(matches!(parse("transit/keys/k").unwrap().1, Operation::Key));
        assert!(parse("encrypt/k").is_none());
        assert!(parse("transit/sign/k").is_none());
    }
}
