//! Partner Center (`api.partnercenter.microsoft.com`): fraudEvents, customers, relationships,
//! subscriptions, the MFA reports, profiles, application consents and the webhook registration
//! API (reference §1.8, §1.9, §3, §4.1, §5.1, §6 profiles, §7).
//!
//! Strictness: every call needs a token for the Partner Center audience issued to a partner
//! tenant; a user token whose `amr` lacks `mfa` gets `401` + `WWW-Authenticate: Bearer
//! error="invalid_token"`; App+User-only operations refuse app-only tokens. Paths are
//! case-insensitive (the docs spell `fraudEvents`, older SDKs `fraudevents`). A retried
//! mutation with the same `MS-RequestId` gets the first answer again instead of acting twice.
//!
//! Decisions where the reference is silent: an app-only token on an App+User operation gets 403;
//! customer lists page with `size` and an `MS-ContinuationToken` header, and `totalCount`
//! counts the page (as the real API does); validation-event status reports `completed` once
//! the delivery has stopped retrying.

use std::collections::HashMap;

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path, Query, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::{
    Host, Sim,
    alerts::AlertStatus,
    http::{error, has_mfa, header_text, throttled, verify},
    scenario::{Customer, Partner, ROLE_CLOUD_APP_ADMIN, ROLE_GLOBAL_ADMIN, derived_id},
    webhooks::{self, EVENT_NAMES},
    world::{Registration, Replay, ValidationEvent},
};

/// Who called: the partner, and whether a user (with MFA) stands behind the token.
#[derive(Clone)]
struct Caller {
    partner: usize,
    app_id: String,
    upn: Option<String>,
}

impl Caller {
    fn partner<'a>(&self, sim: &'a Sim) -> &'a Partner {
        &sim.scenario().partners[self.partner]
    }
    /// App+User-only operations.
    fn user(&self) -> Result<&str, Response> {
        self.upn.as_deref().ok_or_else(|| {
            pc_error(
                StatusCode::FORBIDDEN,
                "403",
                "This operation supports App+User authentication only.",
            )
        })
    }
}

type PcResult = Result<Response, Response>;

fn pc_error(status: StatusCode, code: &str, description: &str) -> Response {
    error(Host::PartnerCenter, status, code, description)
}

fn not_found(what: &str) -> Response {
    pc_error(
        StatusCode::NOT_FOUND,
        "600039",
        &format!("{what} was not found."),
    )
}

fn bad_request(description: &str) -> Response {
    pc_error(StatusCode::BAD_REQUEST, "400", description)
}

pub fn router(sim: Sim) -> Router {
    let routes = Router::new()
        .route("/v1/fraudevents", get(list_fraud_events))
        .route(
            "/v1/fraudevents/subscription/{subscription}/status",
            post(update_fraud_events),
        )
        .route("/v1/customers", get(list_customers))
        .route(
            "/v1/customers/{customer}",
            get(get_customer).patch(patch_customer),
        )
        .route("/v1/customers/{customer}/relationships", get(relationships))
        .route(
            "/v1/customers/{customer}/subscriptions",
            get(list_subscriptions),
        )
        .route(
            "/v1/customers/{customer}/subscriptions/{subscription}",
            get(get_subscription),
        )
        .route(
            "/v1/customers/{customer}/applicationconsents",
            post(add_consent),
        )
        .route(
            "/v1/customers/{customer}/applicationconsents/{application}",
            axum::routing::delete(remove_consent),
        )
        .route(
            "/v1/noncompliantmfapartnerprincipals",
            get(non_mfa_principals),
        )
        .route(
            "/v1/nonmfacompliantpartnerprincipals",
            get(non_mfa_principals),
        )
        .route("/v1/applicationmfaadoptionstatus", get(mfa_adoption))
        .route("/v1/partnerrequests", get(partner_requests))
        .route("/v1/profiles/organization", get(organization_profile))
        .route(
            "/v1/profiles/legalbusiness",
            get(legal_profile).put(put_legal_profile),
        )
        .route("/webhooks/v1/registration/events", get(event_names))
        .route(
            "/webhooks/v1/registration",
            get(get_registration)
                .post(create_registration)
                .put(update_registration)
                .delete(delete_registration),
        )
        .route(
            "/webhooks/v1/registration/validationevents",
            post(send_validation_event),
        )
        .route(
            "/webhooks/v1/registration/validationevents/{correlation}",
            get(validation_status),
        )
        .layer(axum::middleware::from_fn_with_state(
            sim.clone(),
            idempotent,
        ))
        .layer(axum::middleware::from_fn_with_state(
            sim.clone(),
            authenticate,
        ))
        .fallback(|| async { not_found("The resource") })
        .with_state(sim);
    // Partner Center's paths are case-insensitive: route on the lower-cased path.
    let lowered = routes.map_request(|mut request: Request| {
        let uri = request.uri();
        let path = uri.path().to_ascii_lowercase();
        let rebuilt = match uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        if let Ok(uri) = rebuilt.parse() {
            *request.uri_mut() = uri;
        }
        request
    });
    Router::new().fallback_service(lowered)
}

async fn authenticate(State(sim): State<Sim>, mut request: Request, next: Next) -> Response {
    let unauthorized = |description: &str| {
        let mut response = pc_error(StatusCode::UNAUTHORIZED, "401", description);
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
        response
    };
    let claims = match verify(&sim, request.headers(), &[crate::PARTNER_CENTER]) {
        Ok(claims) => claims,
        Err(reason) => return unauthorized(reason),
    };
    let tid = claims["tid"].as_str().unwrap_or_default();
    let Some(partner) = sim.scenario().partner_by_tenant(tid) else {
        return pc_error(
            StatusCode::FORBIDDEN,
            "2000",
            "The tenant is not a Partner Center partner.",
        );
    };
    let is_user = claims.get("scp").is_some();
    if is_user && !has_mfa(&claims) {
        // The documented enforcement: App+User tokens must carry the MFA claim.
        return unauthorized(
            "The access token does not carry the multi-factor authentication claim.",
        );
    }
    let caller = Caller {
        partner: partner.index,
        app_id: claims["appid"].as_str().unwrap_or_default().to_owned(),
        upn: is_user.then(|| claims["upn"].as_str().unwrap_or_default().to_owned()),
    };
    request.extensions_mut().insert(caller);
    let correlation = request.headers().get("ms-correlationid").cloned();
    let mut response = next.run(request).await;
    if let Some(id) = correlation {
        response.headers_mut().insert("ms-correlationid", id);
    }
    response
}

/// A mutation retried with the same `MS-RequestId` is answered from the first attempt.
async fn idempotent(State(sim): State<Sim>, request: Request, next: Next) -> Response {
    let mutating = matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    let key = header_text(request.headers(), "ms-requestid").filter(|_| mutating);
    let caller = request.extensions().get::<Caller>().map(|c| c.partner);
    let (Some(key), Some(partner)) = (key, caller) else {
        return next.run(request).await;
    };
    let id = (
        format!("{partner}:{}", request.uri().path()),
        key.to_ascii_lowercase(),
    );
    if let Some(replay) = sim.with_world(|w| w.idempotency.get(&id).cloned()) {
        return (
            StatusCode::from_u16(replay.status).unwrap_or(StatusCode::OK),
            [(header::CONTENT_TYPE, "application/json")],
            replay.body,
        )
            .into_response();
    }
    let response = next.run(request).await;
    if response.status().is_server_error() || response.status() == StatusCode::TOO_MANY_REQUESTS {
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    sim.with_world(|w| {
        w.idempotency.insert(
            id,
            Replay {
                status: parts.status.as_u16(),
                body: bytes.to_vec(),
            },
        )
    });
    Response::from_parts(parts, Body::from(bytes))
}

/// Query parameters, looked up without regard to case (`EventStatus` or `eventStatus`).
fn param<'a>(query: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn new_events_model(headers: &HeaderMap) -> bool {
    header_text(headers, "x-neweventsmodel").is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

async fn list_fraud_events(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> PcResult {
    caller.user()?;
    let new_model = new_events_model(&headers);
    let status = match param(&query, "EventStatus") {
        Some(s) => Some(AlertStatus::parse(s).ok_or_else(|| {
            bad_request("EventStatus must be Active, Resolved or Investigating.")
        })?),
        None => None,
    };
    let subscription = param(&query, "SubscriptionId").map(str::to_ascii_lowercase);
    // Only the new events model honours EventType and paging.
    let event_type = param(&query, "EventType").filter(|_| new_model);
    let page = if new_model {
        let positive = |name: &str| -> Result<Option<usize>, Response> {
            match param(&query, name) {
                None => Ok(None),
                Some(v) => match v.parse::<usize>() {
                    Ok(n) if n > 0 => Ok(Some(n)),
                    _ => Err(bad_request(&format!(
                        "{name} must be a non-zero positive integer."
                    ))),
                },
            }
        };
        positive("PageSize")?.map(|size| (size, positive("PageNumber").ok().flatten().unwrap_or(1)))
    } else {
        None
    };
    let partner = caller.partner(&sim);
    let alerts = sim.with_alerts(partner, |alerts| alerts.clone());
    let mut events: Vec<Value> = alerts
        .iter()
        .rev()
        .filter(|a| status.is_none_or(|s| a.status == s))
        .filter(|a| {
            subscription
                .as_deref()
                .is_none_or(|s| a.subscription_id == s)
        })
        .filter(|a| event_type.is_none_or(|t| a.alert_type.eq_ignore_ascii_case(t)))
        .map(|a| a.fraud_event_json(new_model))
        .collect();
    if let Some((size, number)) = page {
        events = events
            .into_iter()
            .skip(size * (number - 1))
            .take(size)
            .collect();
    }
    // A bare array, not a collection envelope.
    Ok(Json(Value::Array(events)).into_response())
}

/// The update body, in PascalCase (the examples) or camelCase (the tables).
fn field<'a>(body: &'a Value, name: &str) -> Option<&'a Value> {
    body.as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

async fn update_fraud_events(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
    headers: HeaderMap,
    Path(subscription): Path<String>,
    body: Bytes,
) -> PcResult {
    let upn = caller.user()?.to_owned();
    let body: Value = serde_json::from_slice(&body)
        .map_err(|_| bad_request("The request body is not valid JSON."))?;
    let reason = field(&body, "ResolvedReason")
        .and_then(Value::as_str)
        .ok_or_else(|| bad_request("ResolvedReason is required."))?
        .to_ascii_lowercase();
    if !matches!(reason.as_str(), "fraud" | "ignore" | "legitimate") {
        return Err(bad_request(
            "ResolvedReason must be Fraud, Ignore or Legitimate.",
        ));
    }
    let status = match field(&body, "EventStatus").and_then(Value::as_str) {
        Some(s) => AlertStatus::parse(s)
            .ok_or_else(|| bad_request("EventStatus must be Active, Resolved or Investigating."))?,
        None => AlertStatus::Resolved,
    };
    let ids: Vec<String> = field(&body, "EventIds")
        .and_then(Value::as_array)
        .map(|ids| {
            ids.iter()
                .filter_map(Value::as_str)
                .map(str::to_ascii_lowercase)
                .collect()
        })
        .unwrap_or_default();
    let new_model = new_events_model(&headers);
    let now = sim.now_millis();
    let partner = caller.partner(&sim);
    let updated: Vec<Value> = sim.with_alerts(partner, |alerts| {
        alerts
            .iter_mut()
            .filter(|a| a.subscription_id.eq_ignore_ascii_case(&subscription))
            // No event ids means every event of the subscription.
            .filter(|a| {
                ids.is_empty()
                    || ids.contains(
                        &format!("{}_{}", a.subscription_id, a.entity_id).to_ascii_lowercase(),
                    )
            })
            .map(|a| {
                a.transition(status, Some(&reason), &upn, now);
                a.fraud_event_json(new_model)
            })
            .collect()
    });
    if updated.is_empty() {
        return Err(not_found("No fraud event of this subscription"));
    }
    Ok(Json(Value::Array(updated)).into_response())
}

fn customer_throttle(sim: &Sim, caller: &Caller) -> Result<(), Response> {
    let partner = caller.partner(sim);
    let now = sim.now_millis();
    let wait = sim.with_world(|w| {
        w.realistic_throttles
            .then(|| w.throttle("customer", &partner.tenant_id, 500, 60_000, now))
            .flatten()
    });
    match wait {
        Some(secs) => Err(throttled(Host::PartnerCenter, secs)),
        None => Ok(()),
    }
}

fn link(uri: &str) -> Value {
    json!({"uri": uri, "method": "GET", "headers": []})
}

fn address(customer: &Customer) -> Value {
    json!({"country": "US", "region": "WA", "city": "Redmond", "addressLine1": format!("{} Contoso Way", 1 + customer.index),
           "postalCode": "98052", "phoneNumber": "4255550100", "firstName": "Ops", "lastName": "Lead"})
}

fn customer_json(sim: &Sim, customer: &Customer, by_id: bool) -> Value {
    let id = &customer.tenant_id;
    let mut value = json!({
        "id": id,
        "commerceId": derived_id(sim.scenario().seed, &format!("{id}/commerce")),
        "companyProfile": {
            "tenantId": id, "domain": customer.domain, "companyName": customer.display_name,
            "address": address(customer), "email": format!("admin@{}", customer.domain),
            "links": {"self": link(&format!("/customers/{id}/profiles/company"))},
            "attributes": {"objectType": "CustomerCompanyProfile"},
        },
        "billingProfile": {
            "id": derived_id(sim.scenario().seed, &format!("{id}/billing")),
            "firstName": "Ops", "lastName": "Lead", "email": format!("billing@{}", customer.domain),
            "culture": "en-US", "language": "en", "companyName": customer.display_name,
            "defaultAddress": address(customer),
            "links": {"self": link(&format!("/customers/{id}/profiles/billing"))},
            "attributes": {"etag": format!("\"{}\"", customer.index), "objectType": "CustomerBillingProfile"},
        },
        "relationshipToPartner": if customer.index % 9 == 8 { "advisor" } else { "reseller" },
        "customDomains": [customer.domain],
        "links": {"self": link(&format!("/customers/{id}"))},
        "attributes": {"objectType": "Customer"},
    });
    if let Some(reseller) = &customer.reseller {
        value["associatedPartnerId"] = json!(reseller.tenant_id);
    }
    if by_id {
        // Only the get-by-id answer carries the DAP flag.
        value["allowDelegatedAccess"] = json!(customer.dap);
    }
    value
}

fn customer_or_404(sim: &Sim, caller: &Caller, id: &str) -> Result<Customer, Response> {
    sim.customer_of(caller.partner(sim), id)
        .ok_or_else(|| not_found(&format!("Customer {id}")))
}

async fn list_customers(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> PcResult {
    customer_throttle(&sim, &caller)?;
    let size = param(&query, "size")
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| bad_request("size must be a number"))
        })
        .transpose()?
        .unwrap_or(200)
        .clamp(1, 500);
    let start = match header_text(&headers, "ms-continuationtoken") {
        Some(token) => decode_continuation(&token)
            .ok_or_else(|| bad_request("The continuation token is invalid."))?,
        None => 0,
    };
    let partner = caller.partner(&sim);
    let end = (start + size).min(partner.customer_count);
    let items: Vec<Value> = (start..end)
        .filter_map(|c| partner.customer(c))
        .map(|c| customer_json(&sim, &sim.customer_now(c), false))
        .collect();
    let mut body = json!({
        "totalCount": items.len(),
        "items": items,
        "attributes": {"objectType": "Collection"},
    });
    if end < partner.customer_count {
        body["links"] = json!({"next": {
            "uri": format!("/v1/customers?size={size}"), "method": "GET",
            "headers": [{"key": "MS-ContinuationToken", "value": encode_continuation(end)}],
        }});
    }
    Ok(Json(body).into_response())
}

fn encode_continuation(offset: usize) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("customers:{offset}"))
}

fn decode_continuation(token: &str) -> Option<usize> {
    use base64::Engine;
    let text = String::from_utf8(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .ok()?,
    )
    .ok()?;
    text.strip_prefix("customers:")?.parse().ok()
}

async fn get_customer(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> PcResult {
    customer_throttle(&sim, &caller)?;
    let customer = customer_or_404(&sim, &caller, &id)?;
    Ok(Json(customer_json(&sim, &customer, true)).into_response())
}

/// Removing DAP: `{"AllowDelegatedAccess": false, "attributes": {"objectType": "Customer"}}`.
async fn patch_customer(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> PcResult {
    caller.user()?;
    let customer = customer_or_404(&sim, &caller, &id)?;
    let body: Value = serde_json::from_slice(&body)
        .map_err(|_| bad_request("The request body is not valid JSON."))?;
    match field(&body, "AllowDelegatedAccess") {
        Some(Value::Bool(false)) => {
            sim.with_world(|w| w.tenant(&customer.tenant_id).dap = Some(false));
        }
        Some(_) => {
            return Err(bad_request(
                "Delegated access can only be removed (AllowDelegatedAccess: false).",
            ));
        }
        None => return Err(bad_request("Only AllowDelegatedAccess can be changed.")),
    }
    let customer = customer_or_404(&sim, &caller, &id)?;
    Ok(Json(customer_json(&sim, &customer, true)).into_response())
}

async fn relationships(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> PcResult {
    customer_throttle(&sim, &caller)?;
    let customer = customer_or_404(&sim, &caller, &id)?;
    let items: Vec<Value> = customer
        .reseller
        .iter()
        .map(|r| {
            json!({"id": r.tenant_id, "name": r.name, "relationshipType": "is_indirect_cloud_solution_provider_of",
                   "mpnId": r.mpn_id, "partnerId": r.mpn_id, "state": "active", "location": "US",
                   "attributes": {"objectType": "PartnerRelationship"}})
        })
        .collect();
    Ok(Json(json!({"totalCount": items.len(), "items": items, "attributes": {"objectType": "Collection"}})).into_response())
}

fn subscriptions(sim: &Sim, customer: &Customer) -> Vec<Value> {
    let seed = sim.scenario().seed;
    let cid = &customer.tenant_id;
    let subscription = |key: &str,
                        offer_id: &str,
                        offer_name: &str,
                        quantity: u32,
                        unit: &str,
                        billing: &str| {
        let id = derived_id(seed, &format!("{cid}/pc-subscription/{key}"));
        json!({
            "id": id, "offerId": offer_id, "offerName": offer_name, "friendlyName": offer_name,
            "quantity": quantity, "unitType": unit, "creationDate": "2024-06-01T10:00:00Z",
            "effectiveStartDate": "2024-06-01T00:00:00Z", "commitmentEndDate": "9999-12-31T00:00:00Z",
            "status": "active", "autoRenewEnabled": billing == "license", "billingType": billing,
            "contractType": "subscription", "termDuration": if billing == "license" { "P1Y" } else { "" },
            "isTrial": false, "isMicrosoftProduct": true, "publisherName": "Microsoft Corporation",
            "partnerId": customer.reseller.as_ref().map(|r| r.mpn_id.clone()).unwrap_or_default(),
            "orderId": derived_id(seed, &format!("{cid}/order/{key}")).replace('-', "")[..12].to_owned(),
            "suspensionReasons": [], "refundOptions": [],
            "links": {"self": link(&format!("/customers/{cid}/subscriptions/{id}"))},
            "attributes": {"etag": "\"1\"", "objectType": "Subscription"},
        })
    };
    let mut azure = subscription(
        "azure",
        "DZH318Z0BCZC:0001",
        "Azure plan",
        1,
        "Usage-based",
        "usage",
    );
    // The Azure subscription that alerts name is the plan's entitlement.
    azure["entitlementId"] = json!(sim.scenario().azure_subscription_id(customer));
    let mut items = vec![azure];
    if customer.index.is_multiple_of(2) {
        items.push(subscription(
            "m365",
            "CFQ7TTC0LFLZ:0002",
            "Microsoft 365 E3",
            25,
            "Licenses",
            "license",
        ));
    }
    if customer.entra_premium == 2 {
        items.push(subscription(
            "p2",
            "CFQ7TTC0LH2H:0001",
            "Microsoft Entra ID P2",
            5,
            "Licenses",
            "license",
        ));
    }
    items
}

async fn list_subscriptions(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> PcResult {
    customer_throttle(&sim, &caller)?;
    let customer = customer_or_404(&sim, &caller, &id)?;
    let items = subscriptions(&sim, &customer);
    Ok(Json(json!({"totalCount": items.len(), "items": items, "links": {}, "attributes": {"objectType": "Collection"}})).into_response())
}

async fn get_subscription(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path((id, subscription)): Path<(String, String)>,
) -> PcResult {
    customer_throttle(&sim, &caller)?;
    let customer = customer_or_404(&sim, &caller, &id)?;
    subscriptions(&sim, &customer)
        .into_iter()
        .find(|s| {
            s["id"]
                .as_str()
                .is_some_and(|sid| sid.eq_ignore_ascii_case(&subscription))
        })
        .map(|s| Json(s).into_response())
        .ok_or_else(|| not_found(&format!("Subscription {subscription}")))
}

/// Consent for the partner's app in a customer: the caller's GDAP must carry a role that may
/// consent, and the token's app must be the app being consented (reference §1.9).
async fn add_consent(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> PcResult {
    caller.user()?;
    let now = sim.now_millis();
    let customer = customer_or_404(&sim, &caller, &id)?;
    let body: Value = serde_json::from_slice(&body)
        .map_err(|_| bad_request("The request body is not valid JSON."))?;
    let application = field(&body, "applicationId")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let grants = field(&body, "applicationGrants")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if application.is_empty()
        || grants.is_empty()
        || grants.iter().any(|g| {
            field(g, "enterpriseApplicationId")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
                || field(g, "scope")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
        })
    {
        return Err(bad_request(
            "applicationId and applicationGrants (enterpriseApplicationId, scope) are required.",
        ));
    }
    if sim
        .with_world(|w| w.throttle("consent", &application, 50, 1000, now))
        .is_some()
    {
        return Err(throttled(Host::PartnerCenter, 1));
    }
    if !application.eq_ignore_ascii_case(&caller.app_id) {
        return Err(pc_error(
            StatusCode::FORBIDDEN,
            "600058",
            "The token's application must be the application being consented.",
        ));
    }
    let may_consent = customer.gdap_usable()
        && customer
            .gdap_roles
            .iter()
            .any(|r| r == ROLE_GLOBAL_ADMIN || r == ROLE_CLOUD_APP_ADMIN);
    if !may_consent {
        return Err(pc_error(
            StatusCode::FORBIDDEN,
            "600059",
            "The caller has no GDAP relationship with a role that may consent to applications in this customer.",
        ));
    }
    if customer.app_consent {
        return Err(pc_error(
            StatusCode::CONFLICT,
            "600060",
            "The application is already consented in this customer.",
        ));
    }
    sim.with_world(|w| w.tenant(&customer.tenant_id).app_consent = Some(true));
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "applicationId": application,
            "applicationGrants": grants,
            "displayName": field(&body, "displayName").cloned().unwrap_or(Value::Null),
        })),
    )
        .into_response())
}

async fn remove_consent(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path((id, application)): Path<(String, String)>,
) -> PcResult {
    caller.user()?;
    let customer = customer_or_404(&sim, &caller, &id)?;
    if !application.eq_ignore_ascii_case(&caller.partner(&sim).app.client_id)
        || !customer.app_consent
    {
        return Err(not_found("The application consent"));
    }
    sim.with_world(|w| w.tenant(&customer.tenant_id).app_consent = Some(false));
    Ok(StatusCode::NO_CONTENT.into_response())
}

const SEVEN_DAYS_MS: i64 = 7 * 24 * 3_600_000;

fn iso(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// The Partner Center calls this partner made in the last 7 days, from the simulator's own
/// request log: the MFA reports describe what really happened on the wire.
fn recent_calls(sim: &Sim, partner: &Partner) -> Vec<crate::RequestRecord> {
    let since = sim.now_millis() - SEVEN_DAYS_MS;
    let log = sim.0.log.lock().unwrap_or_else(|e| e.into_inner());
    log.iter()
        .filter(|r| r.host == Host::PartnerCenter.name() && r.at_ms >= since)
        .filter(|r| r.tenant.eq_ignore_ascii_case(&partner.tenant_id) && r.upn.is_some())
        .cloned()
        .collect()
}

async fn non_mfa_principals(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> PcResult {
    caller.user()?;
    let partner = caller.partner(&sim);
    let mut last: HashMap<String, i64> = HashMap::new();
    for r in recent_calls(&sim, partner)
        .into_iter()
        .filter(|r| r.mfa == Some(false))
    {
        last.insert(r.upn.clone().unwrap_or_default(), r.at_ms);
    }
    let users = sim.tenant_users(&partner.tenant_id).unwrap_or_default();
    let items: Vec<Value> = last
        .iter()
        .map(|(upn, at)| {
            let oid = users.iter().find(|u| u.upn.eq_ignore_ascii_case(upn)).map(|u| u.object_id.clone());
            json!({"objectId": oid, "tenantId": partner.tenant_id, "upn": upn, "lastNonMfaCompliantRequestDateTime": iso(*at)})
        })
        .collect();
    Ok(Json(json!({"totalCount": items.len(), "items": items, "attributes": {"objectType": "Collection"}})).into_response())
}

async fn mfa_adoption(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> PcResult {
    caller.user()?;
    let partner = caller.partner(&sim);
    let mut per_day: std::collections::BTreeMap<(String, String), (u64, u64)> = Default::default();
    for r in recent_calls(&sim, partner) {
        let day = iso(r.at_ms)[..10].to_owned();
        let entry = per_day
            .entry((day, r.app_id.clone().unwrap_or_default()))
            .or_default();
        entry.1 += 1;
        if r.mfa == Some(true) {
            entry.0 += 1;
        }
    }
    let items: Vec<Value> = per_day
        .into_iter()
        .map(|((day, app), (mfa, total))| json!({
            "loginDate": format!("{day}T00:00:00Z"), "mfaCompliantRequestCount": mfa, "totalRequestCount": total,
            "applicationId": app, "applicationName": if app == partner.app.client_id { "Partner SAM app" } else { "Unknown application" },
        }))
        .collect();
    // A bare array, as documented.
    Ok(Json(Value::Array(items)).into_response())
}

async fn partner_requests(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> PcResult {
    caller.user()?;
    let partner = caller.partner(&sim);
    let users = sim.tenant_users(&partner.tenant_id).unwrap_or_default();
    let items: Vec<Value> = recent_calls(&sim, partner)
        .into_iter()
        .rev()
        .take(10_000)
        .map(|r| {
            let upn = r.upn.clone().unwrap_or_default();
            json!({
                "requestId": r.ms_request_id.clone().unwrap_or_else(|| derived_id(r.at_ms as u64, &r.path)),
                "correlationId": derived_id(r.at_ms as u64, &upn),
                "operationName": format!("{} {}", r.method, r.path),
                "requestDateTime": iso(r.at_ms), "ipAddress": "127.0.0.1",
                "objectId": users.iter().find(|u| u.upn.eq_ignore_ascii_case(&upn)).map(|u| u.object_id.clone()),
                "tenantId": partner.tenant_id, "upn": upn, "applicationId": r.app_id, "mfaCompliant": r.mfa == Some(true),
            })
        })
        .collect();
    Ok(Json(json!({"totalCount": items.len(), "items": items, "attributes": {"objectType": "Collection"}})).into_response())
}

async fn organization_profile(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> PcResult {
    let partner = caller.partner(&sim);
    Ok(Json(json!({
        "id": derived_id(sim.scenario().seed, &format!("{}/org-profile", partner.tenant_id)),
        "companyName": partner.company_name,
        "defaultAddress": {"country": "US", "city": "Seattle", "state": "WA", "addressLine1": "1 Partner Plaza", "addressLine2": "",
                           "postalCode": "98101", "firstName": "Alex", "lastName": "Admin", "phoneNumber": "2065550100"},
        "tenantId": partner.tenant_id, "domain": partner.domain, "email": format!("admin@{}", partner.domain),
        "language": "en", "culture": "en-US", "profileType": "OrganizationProfile",
        "links": {"self": link("/profiles/organization")},
        "attributes": {"etag": "\"1\"", "objectType": "OrganizationProfile"},
    })).into_response())
}

fn default_legal_profile(partner: &Partner) -> Value {
    json!({
        "companyName": partner.company_name,
        "address": {"country": "US", "city": "Seattle", "state": "WA", "addressLine1": "1 Partner Plaza", "postalCode": "98101"},
        "primaryContact": {"firstName": "Alex", "lastName": "Admin", "email": format!("admin@{}", partner.domain), "phoneNumber": "2065550100"},
        "companyApproverAddress": {"country": "US", "city": "Seattle", "state": "WA", "addressLine1": "1 Partner Plaza", "postalCode": "98101"},
        "companyApproverEmail": format!("approver@{}", partner.domain),
        "vettingStatus": "authorized", "vettingSubStatus": "none",
        "profileType": "LegalBusinessProfile",
        "links": {"self": link("/profiles/legalbusiness")},
        "attributes": {"etag": "\"1\"", "objectType": "LegalBusinessProfile"},
    })
}

async fn legal_profile(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> PcResult {
    let partner = caller.partner(&sim);
    let profile = sim
        .with_world(|w| w.legal_profiles.get(&partner.tenant_id).cloned())
        .unwrap_or_else(|| default_legal_profile(partner));
    Ok(Json(profile).into_response())
}

async fn put_legal_profile(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: Bytes,
) -> PcResult {
    caller.user()?;
    let mut profile: Value = serde_json::from_slice(&body)
        .map_err(|_| bad_request("The request body is not valid JSON."))?;
    if !profile.is_object() || field(&profile, "companyName").is_none() {
        return Err(bad_request(
            "The legal business profile needs a companyName.",
        ));
    }
    let partner = caller.partner(&sim);
    profile["profileType"] = json!("LegalBusinessProfile");
    sim.with_world(|w| {
        w.legal_profiles
            .insert(partner.tenant_id.clone(), profile.clone())
    });
    Ok(Json(profile).into_response())
}

async fn event_names() -> Response {
    Json(EVENT_NAMES).into_response()
}

fn registration_json(r: &Registration) -> Value {
    json!({"SubscriberId": r.subscriber_id, "WebhookUrl": r.url, "WebhookEvents": r.events})
}

/// `{"WebhookUrl": ..., "WebhookEvents": [...]}` (either casing); events must be known names.
fn parse_registration(body: &[u8]) -> Result<(String, Vec<String>), Response> {
    let body: Value = serde_json::from_slice(body)
        .map_err(|_| bad_request("The request body is not valid JSON."))?;
    let url = field(&body, "WebhookUrl")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let parsed =
        url::Url::parse(&url).map_err(|_| bad_request("WebhookUrl must be an absolute URL."))?;
    // Real Partner Center requires HTTPS; plain HTTP is allowed only to loopback, for tests.
    let loopback = matches!(parsed.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    if parsed.scheme() != "https" && !loopback {
        return Err(bad_request("WebhookUrl must use HTTPS."));
    }
    let events: Vec<String> = field(&body, "WebhookEvents")
        .and_then(Value::as_array)
        .map(|e| {
            e.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if events.is_empty() {
        return Err(bad_request("WebhookEvents must name at least one event."));
    }
    if let Some(unknown) = events.iter().find(|e| !EVENT_NAMES.contains(&e.as_str())) {
        return Err(bad_request(&format!(
            "{unknown} is not a supported webhook event."
        )));
    }
    Ok((url, events))
}

async fn get_registration(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> PcResult {
    let tenant = caller.partner(&sim).tenant_id.clone();
    sim.with_world(|w| w.registrations.get(&tenant).map(registration_json))
        .map(|r| Json(r).into_response())
        .ok_or_else(|| not_found("The webhook registration"))
}

async fn create_registration(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: Bytes,
) -> PcResult {
    let (url, events) = parse_registration(&body)?;
    let partner = caller.partner(&sim);
    let registration = Registration {
        subscriber_id: partner.tenant_id.clone(),
        url,
        events,
    };
    let created = sim.with_world(|w| {
        if w.registrations.contains_key(&partner.tenant_id) {
            return None;
        }
        w.registrations
            .insert(partner.tenant_id.clone(), registration.clone());
        Some(registration_json(&registration))
    });
    match created {
        Some(body) => Ok((StatusCode::CREATED, Json(body)).into_response()),
        None => Err(pc_error(
            StatusCode::CONFLICT,
            "409",
            "A webhook registration already exists; update it with PUT.",
        )),
    }
}

async fn update_registration(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: Bytes,
) -> PcResult {
    let (url, events) = parse_registration(&body)?;
    let tenant = caller.partner(&sim).tenant_id.clone();
    sim.with_world(|w| {
        let r = w.registrations.get_mut(&tenant)?;
        r.url = url;
        r.events = events;
        Some(registration_json(r))
    })
    .map(|r| Json(r).into_response())
    .ok_or_else(|| not_found("The webhook registration"))
}

async fn delete_registration(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> PcResult {
    let tenant = caller.partner(&sim).tenant_id.clone();
    sim.with_world(|w| w.registrations.remove(&tenant))
        .map(|_| StatusCode::NO_CONTENT.into_response())
        .ok_or_else(|| not_found("The webhook registration"))
}

/// Sends a `test-created` event; limited to 2 per minute, as documented.
async fn send_validation_event(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> PcResult {
    let partner = caller.partner(&sim);
    let now = sim.now_millis();
    let registration = sim.with_world(|w| w.registrations.get(&partner.tenant_id).cloned());
    let Some(registration) = registration.filter(|r| r.events.iter().any(|e| e == "test-created"))
    else {
        return Err(bad_request(
            "Register for the test-created event before sending validation events.",
        ));
    };
    if let Some(wait) =
        sim.with_world(|w| w.throttle("validation", &partner.tenant_id, 2, 60_000, now))
    {
        return Err(throttled(Host::PartnerCenter, wait));
    }
    let correlation = uuid::Uuid::new_v4().to_string();
    let resource = format!(
        "https://api.partnercenter.microsoft.com/webhooks/v1/registration/validationEvents/{correlation}"
    );
    let delivery_id = webhooks::enqueue(
        &sim,
        partner,
        &registration.url,
        "test-created",
        Some(&resource),
        Some("test"),
    );
    sim.with_world(|w| {
        w.validation_events.insert(
            correlation.clone(),
            ValidationEvent {
                partner_tenant: partner.tenant_id.clone(),
                delivery_id,
            },
        )
    });
    Ok(Json(json!({"correlationId": correlation})).into_response())
}

async fn validation_status(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(correlation): Path<String>,
) -> PcResult {
    let partner = caller.partner(&sim);
    let event = sim
        .with_world(|w| w.validation_events.get(&correlation).cloned())
        .filter(|e| e.partner_tenant == partner.tenant_id)
        .ok_or_else(|| not_found("The validation event"))?;
    let delivery = webhooks::delivery(&sim, event.delivery_id)
        .ok_or_else(|| not_found("The validation event"))?;
    let results: Vec<Value> = delivery
        .attempts
        .iter()
        .map(|a| json!({
            "responseCode": a.status.map(|s| StatusCode::from_u16(s).ok().and_then(|s| s.canonical_reason()).unwrap_or("Unknown").replace(' ', "")).unwrap_or_default(),
            "responseMessage": a.error.clone().unwrap_or_default(),
            "systemError": a.status.is_none(),
            "dateTimeUtc": iso(a.at_ms),
        }))
        .collect();
    Ok(Json(json!({
        "correlationId": correlation, "partnerId": partner.tenant_id,
        "status": if delivery.finished { "completed" } else { "pending" },
        "callbackUrl": delivery.url, "results": results,
    }))
    .into_response())
}
