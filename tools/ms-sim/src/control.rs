//! The control API: move the clock, revoke tokens, change policies, read back every request.
//! Documented in tools/ms-sim/README.md; [`Control`] is the same for in-process tests.

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    response::IntoResponse,
    routing::{delete, get, post},
};

use crate::{
    Fault, RequestRecord, Sim,
    alerts::{Alert, AlertSpec},
    scenario::GdapStatus,
    webhooks::{self, WebhookDelivery},
};

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

    /// The next `count` token requests of `subject` (a UPN or a client id) fail with this
    /// AADSTS code (70043, 53003, 50076, 50079, 50173, 700082, 65001, 530034, 500011, 7000215,
    /// 7000222); `None` means until [`Control::clear_token_failures`].
    pub fn fail_token_requests(&self, subject: &str, code: u32, count: Option<usize>) {
        self.sim
            .with_entra(|e| e.forced.insert(subject.to_ascii_lowercase(), (code, count)));
    }

    pub fn clear_token_failures(&self) {
        self.sim.with_entra(|e| e.forced.clear());
    }

    pub fn inject_fault(&self, fault: Fault) {
        self.sim
            .0
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(fault);
    }

    pub fn clear_faults(&self) {
        self.sim
            .0
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    pub fn faults(&self) -> Vec<Fault> {
        self.sim
            .0
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .list()
    }

    /// Partner Center's per-tenant limits on or off (validation events stay limited).
    pub fn set_realistic_throttles(&self, on: bool) {
        self.sim.with_world(|w| w.realistic_throttles = on);
    }

    /// Raises an alert now, in both alert APIs, and fires `azure-fraud-event-detected` to the
    /// partner's registered webhook. Returns the Graph alert id.
    pub fn raise_alert(&self, partner_tenant: &str, spec: &AlertSpec) -> Option<String> {
        let sim = &self.sim;
        let partner = sim.scenario().partner_by_tenant(partner_tenant)?;
        let customer = match &spec.customer_tenant_id {
            Some(id) => sim.customer_of(partner, id)?,
            None => sim.customer_now(partner.customer(0)?),
        };
        let now = sim.now_millis();
        let n = sim.with_world(|w| {
            let counter = w
                .alert_counter
                .entry(partner.tenant_id.clone())
                .or_insert(0);
            *counter += 1;
            *counter
        }) + 10_000;
        let alert = Alert::generate(sim.scenario(), partner, &customer, n, now, spec);
        let (id, subscription) = (alert.id.clone(), alert.subscription_id.clone());
        sim.with_alerts(partner, |alerts| alerts.push(alert));
        let resource = format!(
            "https://api.partnercenter.microsoft.com/v1/fraudEvents?SubscriptionId={subscription}&EventStatus=Active"
        );
        webhooks::emit(
            sim,
            partner,
            "azure-fraud-event-detected",
            Some(&resource),
            None,
        );
        Some(id)
    }

    /// A partner's alerts as Graph shows them.
    pub fn alerts(&self, partner_tenant: &str) -> Vec<serde_json::Value> {
        let Some(partner) = self.sim.scenario().partner_by_tenant(partner_tenant) else {
            return Vec::new();
        };
        self.sim.with_alerts(partner, |alerts| {
            alerts.iter().map(Alert::graph_json).collect()
        })
    }

    pub fn set_security_defaults(&self, tenant: &str, enabled: bool) {
        self.sim
            .with_world(|w| w.tenant(tenant).security_defaults = Some(enabled));
    }

    /// The tenant's "Require MFA for all users" Conditional Access policy on or off.
    pub fn set_mfa_policy(&self, tenant: &str, enabled: bool) {
        self.sim
            .with_world(|w| w.tenant(tenant).mfa_ca_policy = Some(enabled));
    }

    /// A user's MFA registration (in any tenant); without it, new sign-ins carry no `mfa`.
    pub fn set_user_mfa(&self, tenant: &str, upn: &str, registered: bool) {
        self.sim.with_world(|w| {
            w.tenant(tenant)
                .user_mfa
                .insert(upn.to_ascii_lowercase(), registered)
        });
    }

    /// A user's Entra ID P2 licence (in any tenant).
    pub fn set_user_p2(&self, tenant: &str, upn: &str, licensed: bool) {
        self.sim.with_world(|w| {
            w.tenant(tenant)
                .user_p2
                .insert(upn.to_ascii_lowercase(), licensed)
        });
    }

    /// A tenant's Entra ID licence level: 2 = P2, 1 = P1, 0 = none.
    pub fn set_tenant_premium(&self, tenant: &str, level: u8) {
        self.sim
            .with_world(|w| w.tenant(tenant).entra_premium = Some(level.min(2)));
    }

    pub fn set_gdap_roles(&self, customer_tenant: &str, roles: Vec<String>) {
        self.sim
            .with_world(|w| w.tenant(customer_tenant).gdap_roles = Some(roles));
    }

    /// The customer's GDAP relationship expires: customer tokens stop, and
    /// `granular-admin-relationship-expired` fires.
    pub fn expire_gdap(&self, customer_tenant: &str) -> bool {
        let sim = &self.sim;
        let Some((partner, customer)) = sim.scenario().customer_by_tenant(customer_tenant) else {
            return false;
        };
        sim.with_world(|w| w.tenant(customer_tenant).gdap = Some(Some(GdapStatus::Expired)));
        let relationship = format!(
            "https://partner.microsoft.com/granularAdminRelationships/{}",
            customer.tenant_id
        );
        webhooks::emit(
            sim,
            partner,
            "granular-admin-relationship-expired",
            Some(&relationship),
            Some("GranularAdminRelationship"),
        );
        true
    }

    /// Microsoft removes a leftover DAP and fires `dap-admin-relationship-terminated-by-microsoft`.
    pub fn terminate_dap(&self, customer_tenant: &str) -> bool {
        let sim = &self.sim;
        let Some((partner, _)) = sim.scenario().customer_by_tenant(customer_tenant) else {
            return false;
        };
        sim.with_world(|w| w.tenant(customer_tenant).dap = Some(false));
        webhooks::emit(
            sim,
            partner,
            "dap-admin-relationship-terminated-by-microsoft",
            None,
            Some("PartnerCustomerDap"),
        );
        true
    }

    /// The partner app's consent in a customer tenant.
    pub fn set_customer_consent(&self, customer_tenant: &str, granted: bool) {
        self.sim
            .with_world(|w| w.tenant(customer_tenant).app_consent = Some(granted));
    }

    /// Whether the partner has a security contact (settable only in the Partner Center UI).
    pub fn set_security_contact(&self, partner_tenant: &str, provided: bool) {
        self.sim.with_world(|w| {
            w.security_contact
                .insert(partner_tenant.to_ascii_lowercase(), provided)
        });
    }

    /// The Graph delegated permissions an app is consented for (tokens minted afterwards).
    pub fn set_graph_permissions(&self, client_id: &str, permissions: Vec<String>) {
        self.sim
            .with_world(|w| w.app_permissions.insert(client_id.to_owned(), permissions));
    }

    /// Sends any event to the partner's registered webhook (if registered for it).
    pub fn fire_webhook(
        &self,
        partner_tenant: &str,
        event_name: &str,
        resource_uri: Option<&str>,
        resource_name: Option<&str>,
    ) -> Option<u64> {
        let partner = self.sim.scenario().partner_by_tenant(partner_tenant)?;
        webhooks::emit(&self.sim, partner, event_name, resource_uri, resource_name)
    }

    /// Every webhook delivery so far, with each attempt.
    pub fn webhook_deliveries(&self) -> Vec<WebhookDelivery> {
        webhooks::all_deliveries(&self.sim)
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

#[derive(serde::Deserialize)]
struct TokenFailure {
    subject: String,
    code: u32,
    count: Option<usize>,
}

#[derive(serde::Deserialize)]
struct UserFlag {
    upn: String,
    value: bool,
}

#[derive(serde::Deserialize)]
struct Level {
    level: u8,
}

#[derive(serde::Deserialize)]
struct Roles {
    roles: Vec<String>,
}

#[derive(serde::Deserialize)]
struct Permissions {
    permissions: Vec<String>,
}

#[derive(serde::Deserialize)]
struct WebhookEvent {
    event_name: String,
    resource_uri: Option<String>,
    resource_name: Option<String>,
}

type C = State<Control>;

fn done() -> StatusCode {
    StatusCode::NO_CONTENT
}

fn found(ok: bool) -> StatusCode {
    if ok {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
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
        .route("/_sim/token-failures", post(|State(c): C, Json(f): Json<TokenFailure>| async move {
            c.fail_token_requests(&f.subject, f.code, f.count);
            done()
        }).delete(|State(c): C| async move { c.clear_token_failures(); done() }))
        .route("/_sim/faults", post(|State(c): C, Json(f): Json<Fault>| async move { c.inject_fault(f); done() })
            .get(|State(c): C| async move { Json(c.faults()) })
            .delete(|State(c): C| async move { c.clear_faults(); done() }))
        .route("/_sim/throttles", post(|State(c): C, Json(f): Json<Flag>| async move { c.set_realistic_throttles(f.value); done() }))
        .route("/_sim/partners/{tenant}/alerts", post(|State(c): C, Path(t): Path<String>, Json(spec): Json<AlertSpec>| async move {
            match c.raise_alert(&t, &spec) {
                Some(id) => (StatusCode::CREATED, Json(serde_json::json!({"id": id}))).into_response(),
                None => StatusCode::NOT_FOUND.into_response(),
            }
        }).get(|State(c): C, Path(t): Path<String>| async move { Json(c.alerts(&t)) }))
        .route("/_sim/partners/{tenant}/security-contact", post(|State(c): C, Path(t): Path<String>, Json(f): Json<Flag>| async move { c.set_security_contact(&t, f.value); done() }))
        .route("/_sim/partners/{tenant}/webhooks", post(|State(c): C, Path(t): Path<String>, Json(e): Json<WebhookEvent>| async move {
            match c.fire_webhook(&t, &e.event_name, e.resource_uri.as_deref(), e.resource_name.as_deref()) {
                Some(id) => (StatusCode::ACCEPTED, Json(serde_json::json!({"delivery": id}))).into_response(),
                None => StatusCode::NOT_FOUND.into_response(),
            }
        }))
        .route("/_sim/webhooks/deliveries", get(|State(c): C| async move { Json(c.webhook_deliveries()) }))
        .route("/_sim/tenants/{tenant}/security-defaults", post(|State(c): C, Path(t): Path<String>, Json(f): Json<Flag>| async move { c.set_security_defaults(&t, f.value); done() }))
        .route("/_sim/tenants/{tenant}/mfa-policy", post(|State(c): C, Path(t): Path<String>, Json(f): Json<Flag>| async move { c.set_mfa_policy(&t, f.value); done() }))
        .route("/_sim/tenants/{tenant}/user-mfa", post(|State(c): C, Path(t): Path<String>, Json(f): Json<UserFlag>| async move { c.set_user_mfa(&t, &f.upn, f.value); done() }))
        .route("/_sim/tenants/{tenant}/user-p2", post(|State(c): C, Path(t): Path<String>, Json(f): Json<UserFlag>| async move { c.set_user_p2(&t, &f.upn, f.value); done() }))
        .route("/_sim/tenants/{tenant}/premium", post(|State(c): C, Path(t): Path<String>, Json(l): Json<Level>| async move { c.set_tenant_premium(&t, l.level); done() }))
        .route("/_sim/customers/{tenant}/gdap-roles", post(|State(c): C, Path(t): Path<String>, Json(r): Json<Roles>| async move { c.set_gdap_roles(&t, r.roles); done() }))
        .route("/_sim/customers/{tenant}/gdap/expire", post(|State(c): C, Path(t): Path<String>| async move { found(c.expire_gdap(&t)) }))
        .route("/_sim/customers/{tenant}/dap/terminate", post(|State(c): C, Path(t): Path<String>| async move { found(c.terminate_dap(&t)) }))
        .route("/_sim/customers/{tenant}/consent", post(|State(c): C, Path(t): Path<String>, Json(f): Json<Flag>| async move { c.set_customer_consent(&t, f.value); done() }))
        .route("/_sim/apps/{client_id}/graph-permissions", post(|State(c): C, Path(id): Path<String>, Json(p): Json<Permissions>| async move { c.set_graph_permissions(&id, p.permissions); done() }))
        .route("/_sim/webhooks/root-ca.pem", get(|State(c): C| async move { c.sim.webhook_pki().root_pem.clone() }))
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
                        "customer_count": p.customer_count,
                        // The first 50; the rest follow the same pattern (GET /_sim/scenario is for humans).
                        "customers": p.customers().take(50).map(|cu| serde_json::json!({
                            "tenant_id": cu.tenant_id, "gdap_usable": cu.gdap_usable(), "app_consent": cu.app_consent,
                            "dap": cu.dap, "gdap_global_admin": cu.gdap_roles.iter().any(|r| r == crate::scenario::ROLE_GLOBAL_ADMIN),
                        })).collect::<Vec<_>>(),
                    }))
                    .collect();
                let operator = &c.sim.scenario().operator;
                Json(serde_json::json!({"seed": c.sim.scenario().seed, "partners": partners,
                    "operator": {"tenant_id": operator.tenant_id, "client_id": operator.client_id},
                    "urls": {"login": c.sim.urls().login.as_str(), "partner_center": c.sim.urls().partner_center.as_str(),
                             "graph": c.sim.urls().graph.as_str(), "key_vault": c.sim.urls().key_vault.as_str(),
                             "certificates": c.sim.urls().certificates.as_str(),
                             "vault_transit": c.sim.urls().vault_transit.as_str()}}))
            }),
        )
        .with_state(control)
}
