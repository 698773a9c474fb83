//! The control API: move the clock, revoke tokens, change policies, read back every request.
//! Documented in tools/ms-sim/README.md; [`Control`] is the same for in-process tests.

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    routing::{delete, get, post},
};

use crate::{RequestRecord, Sim};

/// In-process control of a running simulator.
#[derive(Clone)]
pub struct Control {
    pub(crate) sim: Sim,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Control")
    }
}

/// Filters for the request log.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct RequestFilter {
    pub host: Option<String>,
    pub grant_type: Option<String>,
    pub tenant: Option<String>,
    pub path_contains: Option<String>,
}

impl Control {
    /// Moves the simulator's clock forward (90-day inactivity, token expiry).
    pub fn advance_clock(&self, by: std::time::Duration) {
        self.sim.0.clock.advance(by);
    }

    pub fn now_millis(&self) -> i64 {
        self.sim.now_millis()
    }

    /// Revokes every refresh token of a user ("admin revokes all refresh tokens").
    pub fn revoke_user_tokens(&self, upn: &str) -> usize {
        self.sim.with_entra(|e| {
            let mut n = 0;
            for rt in e
                .refresh_tokens
                .values_mut()
                .filter(|rt| rt.upn.eq_ignore_ascii_case(upn))
            {
                rt.revoked = true;
                n += 1;
            }
            n
        })
    }

    /// Conditional Access now demands MFA for this user: tokens minted without MFA stop working.
    pub fn require_mfa(&self, upn: &str, required: bool) {
        self.sim.with_entra(|e| {
            if required {
                e.mfa_required.insert(upn.to_owned());
            } else {
                e.mfa_required.remove(upn);
            }
        });
    }

    /// Removes (or restores) the app's consent in its home tenant.
    pub fn set_consent(&self, client_id: &str, granted: bool) {
        self.sim.with_entra(|e| {
            if granted {
                e.consent_removed.remove(client_id);
            } else {
                e.consent_removed.insert(client_id.to_owned());
            }
        });
    }

    /// The next `n` refresh grants answer without a new refresh token, as the doc sample does.
    pub fn omit_refresh_tokens(&self, n: usize) {
        self.sim.with_entra(|e| e.omit_refresh_token_next = n);
    }

    /// Whether a refresh token would still be accepted (for asserting chains are intact).
    pub fn refresh_token_is_live(&self, token: &str) -> bool {
        let now = self.sim.now_millis();
        self.sim.with_entra(|e| {
            e.refresh_tokens
                .get(token)
                .is_some_and(|rt| !rt.revoked && now - rt.last_used_ms <= 90 * 24 * 3600 * 1000)
        })
    }

    /// Every refresh token value issued so far (tests scan databases and logs for them).
    pub fn issued_refresh_tokens(&self) -> Vec<String> {
        self.sim
            .with_entra(|e| e.refresh_tokens.keys().cloned().collect())
    }

    pub fn requests(&self, filter: &RequestFilter) -> Vec<RequestRecord> {
        let log = self.sim.0.log.lock().unwrap_or_else(|e| e.into_inner());
        log.iter()
            .filter(|r| filter.host.as_ref().is_none_or(|h| &r.host == h))
            .filter(|r| {
                filter
                    .grant_type
                    .as_ref()
                    .is_none_or(|g| r.grant_type.as_ref() == Some(g))
            })
            .filter(|r| filter.tenant.as_ref().is_none_or(|t| &r.tenant == t))
            .filter(|r| {
                filter
                    .path_contains
                    .as_ref()
                    .is_none_or(|p| r.path.contains(p.as_str()))
            })
            .cloned()
            .collect()
    }

    pub fn clear_requests(&self) {
        self.sim
            .0
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

#[derive(serde::Deserialize)]
struct Advance {
    seconds: u64,
}

#[derive(serde::Deserialize)]
struct Flag {
    value: bool,
}

pub fn router(sim: Sim) -> Router {
    let control = Control { sim };
    Router::new()
        .route(
            "/_sim/requests",
            get(|State(c): State<Control>, Query(f): Query<RequestFilter>| async move { Json(c.requests(&f)) }),
        )
        .route("/_sim/requests", delete(|State(c): State<Control>| async move {
            c.clear_requests();
            StatusCode::NO_CONTENT
        }))
        .route(
            "/_sim/clock/advance",
            post(|State(c): State<Control>, Json(a): Json<Advance>| async move {
                c.advance_clock(std::time::Duration::from_secs(a.seconds));
                Json(serde_json::json!({"now_ms": c.now_millis()}))
            }),
        )
        .route(
            "/_sim/users/{upn}/revoke-tokens",
            post(|State(c): State<Control>, Path(upn): Path<String>| async move { Json(serde_json::json!({"revoked": c.revoke_user_tokens(&upn)})) }),
        )
        .route(
            "/_sim/users/{upn}/require-mfa",
            post(|State(c): State<Control>, Path(upn): Path<String>, Json(f): Json<Flag>| async move {
                c.require_mfa(&upn, f.value);
                StatusCode::NO_CONTENT
            }),
        )
        .route(
            "/_sim/apps/{client_id}/consent",
            post(|State(c): State<Control>, Path(id): Path<String>, Json(f): Json<Flag>| async move {
                c.set_consent(&id, f.value);
                StatusCode::NO_CONTENT
            }),
        )
        .route(
            "/_sim/scenario",
            get(|State(c): State<Control>| async move {
                let partners: Vec<_> = c
                    .sim
                    .scenario()
                    .partners
                    .iter()
                    .map(|p| serde_json::json!({
                        "tenant_id": p.tenant_id, "domain": p.domain, "client_id": p.app.client_id,
                        "users": p.users.iter().map(|u| serde_json::json!({"upn": u.upn, "has_mfa": u.has_mfa})).collect::<Vec<_>>(),
                        "customers": p.customers.iter().map(|cu| serde_json::json!({"tenant_id": cu.tenant_id, "gdap": cu.gdap, "app_consent": cu.app_consent})).collect::<Vec<_>>(),
                    }))
                    .collect();
                Json(serde_json::json!({"seed": c.sim.scenario().seed, "partners": partners}))
            }),
        )
        .with_state(control)
}
