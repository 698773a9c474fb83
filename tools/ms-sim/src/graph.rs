//! Microsoft Graph (`graph.microsoft.com`): partner security alerts and score (beta), and the
//! reads the compliance checker makes in any tenant (reference §2, §6).
//!
//! Strictness: the token's audience must be Graph, its `tid` is the tenant being read, and
//! each route checks the documented permission in `scp` (delegated) or `roles` (app-only);
//! `$filter` accepts only what the real endpoint accepts, and an unsupported clause is a 400.
//! Segments are case-insensitive, as Graph's are.
//!
//! Decisions where the reference is silent: alerts page at 100 (`$top` up to 999 narrows it)
//! through `@odata.nextLink`; `userRegistrationDetails` refuses tenants without an Entra ID
//! premium licence (as Graph's reports do); Conditional Access lists are empty in such tenants;
//! the score's `complianceStatus` says `nonCompliant` for even-numbered partners and the
//! documented misspelling `noncomplaint` for odd ones, so clients must accept both.

use std::collections::HashMap;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::{
    Host, Sim,
    alerts::AlertStatus,
    http::{error, grants, verify},
    scenario::{Customer, GdapStatus, Partner, User, derived_id},
};

#[derive(Clone)]
struct Caller {
    tenant: String,
    partner: Option<usize>,
    claims: Value,
}

impl Caller {
    fn require(&self, permissions: &[&str]) -> Result<(), Response> {
        if grants(&self.claims, permissions) {
            Ok(())
        } else {
            Err(graph_error(
                StatusCode::FORBIDDEN,
                "Authorization_RequestDenied",
                &format!(
                    "Insufficient privileges to complete the operation. Requires one of: {}.",
                    permissions.join(", ")
                ),
            ))
        }
    }
    fn partner<'a>(&self, sim: &'a Sim) -> Result<&'a Partner, Response> {
        self.partner
            .map(|p| &sim.scenario().partners[p])
            .ok_or_else(|| {
                graph_error(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    "This API is available to partner tenants only.",
                )
            })
    }
    fn who(&self) -> String {
        self.claims["upn"]
            .as_str()
            .or(self.claims["appid"].as_str())
            .unwrap_or_default()
            .to_owned()
    }
}

type GraphResult = Result<Response, Response>;

fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    error(Host::Graph, status, code, message)
}

fn bad_request(message: &str) -> Response {
    graph_error(StatusCode::BAD_REQUEST, "BadRequest", message)
}

const ALERTS_READ: &[&str] = &["PartnerSecurity.Read.All", "PartnerSecurity.ReadWrite.All"];
const ALERTS_WRITE: &[&str] = &["PartnerSecurity.ReadWrite.All"];
const POLICY_READ: &[&str] = &["Policy.Read.All", "Policy.ReadWrite.ConditionalAccess"];
const REPORTS_READ: &[&str] = &["AuditLog.Read.All"];
const SKUS_READ: &[&str] = &[
    "LicenseAssignment.Read.All",
    "Organization.Read.All",
    "Directory.Read.All",
];
const GDAP_READ: &[&str] = &[
    "DelegatedAdminRelationship.Read.All",
    "DelegatedAdminRelationship.ReadWrite.All",
];

pub fn router(sim: Sim) -> Router {
    let mut routes = Router::new()
        .route("/beta/security/partner/securityalerts", get(list_alerts))
        .route(
            "/beta/security/partner/securityalerts/{id}",
            get(get_alert).patch(patch_alert),
        )
        .route("/beta/security/partner/securityscore", get(security_score))
        .route(
            "/beta/security/partner/securityscore/requirements",
            get(requirements),
        )
        .route(
            "/beta/security/partner/securityscore/requirements/{id}",
            get(requirement),
        )
        .route("/beta/security/partner/securityscore/history", get(history))
        .route(
            "/beta/security/partner/securityscore/customerinsights",
            get(customer_insights),
        );
    for version in ["v1.0", "beta"] {
        routes = routes
            .route(&format!("/{version}/policies/identitysecuritydefaultsenforcementpolicy"), get(security_defaults))
            .route(&format!("/{version}/identity/conditionalaccess/policies"), get(conditional_access))
            .route(&format!("/{version}/reports/authenticationmethods/userregistrationdetails"), get(registration_details))
            .route(&format!("/{version}/subscribedskus"), get(subscribed_skus))
            .route(&format!("/{version}/tenantrelationships/delegatedadminrelationships"), get(list_relationships))
            .route(&format!("/{version}/tenantrelationships/delegatedadminrelationships/{{id}}"), get(get_relationship))
            .route(&format!("/{version}/tenantrelationships/delegatedadminrelationships/{{id}}/accessassignments"), get(access_assignments));
    }
    let routes = routes
        .layer(axum::middleware::from_fn_with_state(
            sim.clone(),
            authenticate,
        ))
        .fallback(|| async {
            graph_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "Resource not found for the segment.",
            )
        })
        .with_state(sim);
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
    let claims = match verify(
        &sim,
        request.headers(),
        &[crate::GRAPH, "00000003-0000-0000-c000-000000000000"],
    ) {
        Ok(claims) => claims,
        Err(reason) => {
            return graph_error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                reason,
            );
        }
    };
    let tenant = claims["tid"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let scenario = sim.scenario();
    let partner = scenario.partner_by_tenant(&tenant).map(|p| p.index);
    if partner.is_none() && scenario.customer_by_tenant(&tenant).is_none() {
        return graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "The tenant does not exist.",
        );
    }
    request.extensions_mut().insert(Caller {
        tenant,
        partner,
        claims,
    });
    next.run(request).await
}

// ---- $filter, $select, paging -------------------------------------------------------------

#[derive(Debug)]
struct Clause {
    path: Vec<String>,
    op: String,
    value: Value,
}

/// `field op value [and ...]`, with the fields and operators an endpoint allows.
fn parse_filter(filter: &str, fields: &[&str], ops: &[&str]) -> Result<Vec<Clause>, Response> {
    let invalid = |clause: &str| bad_request(&format!("Invalid filter clause: '{clause}'."));
    let lowered = filter.to_ascii_lowercase();
    let mut clauses = Vec::new();
    let mut offset = 0;
    loop {
        let index = lowered[offset..].find(" and ").map(|i| i + offset);
        let (clause, next) = match index {
            Some(i) => (&filter[offset..i], Some(i + 5)),
            None => (&filter[offset..], None),
        };
        let clause = clause.trim();
        let mut parts = clause.splitn(3, ' ');
        let (Some(field), Some(op), Some(value)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid(clause));
        };
        let known = fields
            .iter()
            .find(|f| f.eq_ignore_ascii_case(field))
            .ok_or_else(|| invalid(clause))?;
        let op = op.to_ascii_lowercase();
        if !ops.contains(&op.as_str()) {
            return Err(invalid(clause));
        }
        let value = value.trim();
        let value = if let Some(text) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\''))
        {
            Value::String(text.to_owned())
        } else if value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("false") {
            Value::Bool(value.eq_ignore_ascii_case("true"))
        } else if DateTime::parse_from_rfc3339(value).is_ok() {
            Value::String(value.to_owned())
        } else {
            return Err(invalid(clause));
        };
        clauses.push(Clause {
            path: known.split('/').map(str::to_owned).collect(),
            op,
            value,
        });
        match next {
            Some(n) => offset = n,
            None => break,
        }
    }
    Ok(clauses)
}

fn compare(left: &Value, right: &Value) -> Option<std::cmp::Ordering> {
    match (left, right) {
        (Value::String(l), Value::String(r)) => {
            match (
                DateTime::parse_from_rfc3339(l),
                DateTime::parse_from_rfc3339(r),
            ) {
                (Ok(l), Ok(r)) => Some(l.cmp(&r)),
                _ => Some(l.to_ascii_lowercase().cmp(&r.to_ascii_lowercase())),
            }
        }
        (Value::Bool(l), Value::Bool(r)) => Some(l.cmp(r)),
        // Quirk-tolerant: "false" == false.
        (Value::String(l), Value::Bool(r)) => Some(if l.eq_ignore_ascii_case(&r.to_string()) {
            std::cmp::Ordering::Equal
        } else {
            std::cmp::Ordering::Less
        }),
        _ => None,
    }
}

fn matches(item: &Value, clauses: &[Clause]) -> bool {
    clauses.iter().all(|c| {
        let mut value = item;
        for segment in &c.path {
            value = &value[segment.as_str()];
        }
        let Some(ordering) = compare(value, &c.value) else {
            return false;
        };
        match c.op.as_str() {
            "eq" => ordering.is_eq(),
            "ne" => !ordering.is_eq(),
            "gt" => ordering.is_gt(),
            "ge" => ordering.is_ge(),
            "lt" => ordering.is_lt(),
            _ => ordering.is_le(),
        }
    })
}

fn param<'a>(query: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn select(item: Value, query: &HashMap<String, String>) -> Value {
    let Some(fields) = param(query, "$select") else {
        return item;
    };
    let wanted: Vec<&str> = fields.split(',').map(str::trim).collect();
    match item {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(k, _)| k == "id" || wanted.iter().any(|w| w.eq_ignore_ascii_case(k)))
                .collect(),
        ),
        other => other,
    }
}

/// One page of `items`, with `@odata.nextLink` carrying the rest of the query.
fn page(
    sim: &Sim,
    path: &str,
    query: &HashMap<String, String>,
    items: Vec<Value>,
    size: usize,
    context: &str,
) -> Result<Value, Response> {
    let start = match param(query, "$skiptoken") {
        Some(token) => {
            decode_skip(token).ok_or_else(|| bad_request("The $skiptoken is invalid."))?
        }
        None => 0,
    };
    let total = items.len();
    let value: Vec<Value> = items
        .into_iter()
        .skip(start)
        .take(size)
        .map(|item| select(item, query))
        .collect();
    let mut body =
        json!({"@odata.context": format!("https://graph.microsoft.com/{context}"), "value": value});
    if param(query, "$count").is_some_and(|c| c.eq_ignore_ascii_case("true")) {
        body["@odata.count"] = json!(total);
    }
    if start + size < total {
        let mut next = sim.urls().graph.join(path).expect("a path joins");
        {
            let mut pairs = next.query_pairs_mut();
            for (k, v) in query
                .iter()
                .filter(|(k, _)| !k.eq_ignore_ascii_case("$skiptoken"))
            {
                pairs.append_pair(k, v);
            }
            pairs.append_pair("$skiptoken", &encode_skip(start + size));
        }
        body["@odata.nextLink"] = json!(next.to_string());
    }
    Ok(body)
}

fn encode_skip(offset: usize) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{{\"p\":{offset}}}"))
}

fn decode_skip(token: &str) -> Option<usize> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    serde_json::from_slice::<Value>(&bytes).ok()?["p"]
        .as_u64()
        .map(|p| p as usize)
}

fn top(query: &HashMap<String, String>, default: usize, max: usize) -> Result<usize, Response> {
    match param(query, "$top") {
        None => Ok(default),
        Some(t) => match t.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(bad_request(&format!("$top must be between 1 and {max}."))),
        },
    }
}

// ---- security alerts ----------------------------------------------------------------------

const ALERT_FILTER_FIELDS: &[&str] = &[
    "status",
    "severity",
    "alertType",
    "customerTenantId",
    "subscriptionId",
    "lastObservedDateTime",
    "firstObservedDateTime",
    "detectedDateTime",
    "resolvedOnDateTime",
];

async fn list_alerts(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> GraphResult {
    caller.require(ALERTS_READ)?;
    let partner = caller.partner(&sim)?;
    let clauses = match param(&query, "$filter") {
        Some(f) => parse_filter(
            f,
            ALERT_FILTER_FIELDS,
            &["eq", "ne", "gt", "ge", "lt", "le"],
        )?,
        None => Vec::new(),
    };
    let size = top(&query, 100, 999)?;
    // Render outside the world's lock: other tenants' calls need it too.
    let alerts = sim.with_alerts(partner, |alerts| alerts.clone());
    let items: Vec<Value> = alerts
        .iter()
        .map(|a| a.graph_json())
        .filter(|a| matches(a, &clauses))
        .collect();
    let body = page(
        &sim,
        "/beta/security/partner/securityAlerts",
        &query,
        items,
        size,
        "beta/$metadata#security/partner/securityAlerts",
    )?;
    Ok(Json(body).into_response())
}

async fn get_alert(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> GraphResult {
    caller.require(ALERTS_READ)?;
    let partner = caller.partner(&sim)?;
    sim.with_alerts(partner, |alerts| {
        alerts
            .iter()
            .find(|a| a.id.eq_ignore_ascii_case(&id))
            .map(|a| a.graph_json())
    })
    .map(|a| Json(select(a, &query)).into_response())
    .ok_or_else(|| {
        graph_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("The alert {id} does not exist."),
        )
    })
}

/// `{"status": ..., "resolvedReason": ...}` → 200 with the whole updated alert.
async fn patch_alert(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> GraphResult {
    caller.require(ALERTS_WRITE)?;
    let partner = caller.partner(&sim)?;
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_body {
        return Err(graph_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "Content-Type must be application/json.",
        ));
    }
    let body: Value = serde_json::from_slice(&body)
        .map_err(|_| bad_request("The request body is not valid JSON."))?;
    let Some(fields) = body.as_object() else {
        return Err(bad_request("The request body must be an object."));
    };
    if let Some(unknown) = fields
        .keys()
        .find(|k| *k != "status" && *k != "resolvedReason")
    {
        return Err(bad_request(&format!(
            "Invalid property '{unknown}' for a partnerSecurityAlert update."
        )));
    }
    let status = body["status"]
        .as_str()
        .and_then(AlertStatus::parse)
        .filter(|_| {
            body["status"]
                .as_str()
                .is_some_and(|s| s.chars().all(|c| c.is_ascii_lowercase()))
        })
        .ok_or_else(|| bad_request("status is required: active, investigating or resolved."))?;
    let reason = match &body["resolvedReason"] {
        Value::Null => None,
        Value::String(r) if matches!(r.as_str(), "legitimate" | "ignore" | "fraud") => {
            Some(r.clone())
        }
        _ => {
            return Err(bad_request(
                "resolvedReason must be legitimate, ignore or fraud.",
            ));
        }
    };
    let now = sim.now_millis();
    let who = caller.who();
    sim.with_alerts(partner, |alerts| {
        let alert = alerts.iter_mut().find(|a| a.id.eq_ignore_ascii_case(&id))?;
        alert.transition(status, reason.as_deref(), &who, now);
        Some(alert.graph_json())
    })
    .map(|a| Json(a).into_response())
    .ok_or_else(|| {
        graph_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("The alert {id} does not exist."),
        )
    })
}

// ---- security score -----------------------------------------------------------------------

fn iso(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn admins_compliant(users: &[User]) -> bool {
    users.iter().filter(|u| u.is_admin).all(|u| u.has_mfa)
}

fn requirement_list(sim: &Sim, partner: &Partner) -> Vec<Value> {
    let now = sim.now_millis();
    let noncompliant = if partner.index.is_multiple_of(2) {
        "nonCompliant"
    } else {
        "noncomplaint"
    };
    let status = |ok: bool| if ok { "compliant" } else { noncompliant };
    let base = |kind: &str, odata: &str, ok: bool, score: i64, max: i64, state: &str| {
        json!({
            "@odata.type": format!("#microsoft.graph.partner.security.{odata}"),
            "id": derived_id(sim.scenario().seed, &format!("{}/requirement/{kind}", partner.tenant_id)),
            "requirementType": kind, "complianceStatus": status(ok), "score": score, "maxScore": max, "state": state,
            "actionUrl": "https://partner.microsoft.com/dashboard/securityrequirements",
            "helpUrl": "https://learn.microsoft.com/partner-center/security/partner-security-requirements",
            "updatedDateTime": iso(now),
        })
    };
    let users = sim.tenant_users(&partner.tenant_id).unwrap_or_default();
    let admins: Vec<&User> = users.iter().filter(|u| u.is_admin).collect();
    let mfa_admins = admins.iter().filter(|u| u.has_mfa).count();
    let (defaults, ca) = sim
        .tenant_policies(&partner.tenant_id)
        .unwrap_or((false, false));
    let on = |b: bool| if b { "enabled" } else { "disabled" };
    let mut admins_req = base(
        "mfaEnforcedForAdmins",
        "adminsMfaEnforcedSecurityRequirement",
        mfa_admins == admins.len(),
        if mfa_admins == admins.len() { 20 } else { 0 },
        20,
        "active",
    );
    let object = admins_req.as_object_mut().expect("an object");
    object.insert("totalAdminsCount".into(), json!(admins.len()));
    object.insert("mfaEnabledAdminsCount".into(), json!(mfa_admins));
    object.insert(
        "adminsRequiredNotUsingMfaCount".into(),
        json!(admins.len() - mfa_admins),
    );
    object.insert("totalUsersCount".into(), json!(users.len()));
    object.insert(
        "mfaEnabledUsersCount".into(),
        json!(users.iter().filter(|u| u.has_mfa).count()),
    );
    object.insert(
        "usersRequiredNotUsingMfaCount".into(),
        json!(users.iter().filter(|u| !u.has_mfa).count()),
    );
    object.insert("securityDefaultsStatus".into(), json!(on(defaults)));
    object.insert("mfaConditionalAccessPolicyStatus".into(), json!(on(ca)));
    object.insert("legacyPerUserMfaStatus".into(), json!("disabled"));

    let scenario = sim.scenario();
    let total = partner.customer_count;
    let compliant = partner
        .customers()
        .filter(|c| admins_compliant(&sim.tenant_users(&c.tenant_id).unwrap_or_default()))
        .count();
    let customer_score = (20 * compliant).checked_div(total).unwrap_or(20) as i64;
    let mut customers_req = base(
        "mfaEnforcedForAdminsOfCustomers",
        "customersMfaEnforcedSecurityRequirement",
        compliant == total,
        customer_score,
        20,
        "active",
    );
    customers_req["totalTenantCount"] = json!(total);
    customers_req["compliantTenantCount"] = json!(compliant);

    let since = now - 30 * 24 * 3_600_000;
    let response_hours: Vec<f64> = sim.with_alerts(partner, |alerts| {
        alerts
            .iter()
            .filter_map(|a| {
                a.resolved_on_ms
                    .filter(|r| *r >= since)
                    .map(|r| (r - a.detected_ms) as f64 / 3_600_000.0)
            })
            .collect()
    });
    let average = if response_hours.is_empty() {
        0.0
    } else {
        response_hours.iter().sum::<f64>() / response_hours.len() as f64
    };
    let prompt = average <= 24.0;
    let mut response_req = base(
        "securityAlertsPromptlyResolved",
        "responseTimeSecurityRequirement",
        prompt,
        if prompt { 10 } else { 0 },
        10,
        "active",
    );
    response_req["averageResponseTimeInHours"] = json!((average * 100.0).round() / 100.0);

    let contact = sim.security_contact(partner);
    let contact_req = base(
        "securityContactProvided",
        "securityRequirement",
        contact,
        if contact { 20 } else { 0 },
        20,
        "active",
    );
    let budget_req = base(
        "spendingBudgetSetForCustomerAzureSubscriptions",
        "securityRequirement",
        false,
        0,
        10,
        "preview",
    );
    let _ = scenario;
    vec![
        admins_req,
        customers_req,
        response_req,
        contact_req,
        budget_req,
    ]
}

fn score_json(sim: &Sim, partner: &Partner, requirements: &[Value]) -> Value {
    let current: i64 = requirements
        .iter()
        .filter(|r| r["state"] == "active")
        .map(|r| r["score"].as_i64().unwrap_or(0))
        .sum();
    json!({
        "@odata.context": "https://graph.microsoft.com/beta/$metadata#security/partner/securityScore/$entity",
        "id": derived_id(sim.scenario().seed, &format!("{}/score", partner.tenant_id)),
        "currentScore": current as f64, "maxScore": 100.0,
        "lastRefreshDateTime": iso(sim.now_millis()), "updatedDateTime": iso(sim.now_millis()),
    })
}

fn history_list(sim: &Sim, partner: &Partner, requirements: &[Value]) -> Vec<Value> {
    let current = score_json(sim, partner, requirements)["currentScore"]
        .as_f64()
        .unwrap_or(0.0);
    let compliant = requirements
        .iter()
        .filter(|r| r["complianceStatus"] == "compliant")
        .count();
    (0..7)
        .map(|day| {
            let at = sim.now_millis() - day * 24 * 3_600_000;
            json!({
                "id": derived_id(sim.scenario().seed, &format!("{}/history/{day}", partner.tenant_id)),
                "createdDateTime": iso(at),
                "score": (current - day as f64 * 2.0).max(0.0),
                "compliantRequirementsCount": compliant, "totalRequirementsCount": requirements.len(),
            })
        })
        .collect()
}

async fn security_score(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> GraphResult {
    caller.require(ALERTS_READ)?;
    let partner = caller.partner(&sim)?;
    let requirements = requirement_list(&sim, partner);
    let mut body = score_json(&sim, partner, &requirements);
    let expand = param(&query, "$expand")
        .unwrap_or_default()
        .to_ascii_lowercase();
    if expand.contains("requirements") {
        body["requirements"] = json!(requirements);
    }
    if expand.contains("history") {
        body["history"] = json!(history_list(&sim, partner, &requirements));
    }
    Ok(Json(body).into_response())
}

async fn requirements(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> GraphResult {
    caller.require(ALERTS_READ)?;
    let partner = caller.partner(&sim)?;
    Ok(Json(json!({"value": requirement_list(&sim, partner)})).into_response())
}

async fn requirement(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> GraphResult {
    caller.require(ALERTS_READ)?;
    let partner = caller.partner(&sim)?;
    requirement_list(&sim, partner)
        .into_iter()
        .find(|r| {
            r["id"]
                .as_str()
                .is_some_and(|i| i.eq_ignore_ascii_case(&id))
        })
        .map(|r| Json(r).into_response())
        .ok_or_else(|| {
            graph_error(
                StatusCode::NOT_FOUND,
                "NotFound",
                "The requirement does not exist.",
            )
        })
}

async fn history(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> GraphResult {
    caller.require(ALERTS_READ)?;
    let partner = caller.partner(&sim)?;
    let requirements = requirement_list(&sim, partner);
    Ok(Json(json!({"value": history_list(&sim, partner, &requirements)})).into_response())
}

async fn customer_insights(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> GraphResult {
    caller.require(ALERTS_READ)?;
    let partner = caller.partner(&sim)?;
    if param(&query, "$top").is_some() || param(&query, "$skip").is_some() {
        return Err(bad_request(
            "$top and $skip are not supported; follow @odata.nextLink.",
        ));
    }
    let start = param(&query, "$skiptoken")
        .map(|t| decode_skip(t).ok_or_else(|| bad_request("The $skiptoken is invalid.")))
        .transpose()?
        .unwrap_or(0);
    let size = 100;
    let on = |b: bool| if b { "enabled" } else { "disabled" };
    // Page over the lazily generated customers without materialising all of them.
    let items: Vec<Value> = (start..(start + size).min(partner.customer_count))
        .filter_map(|c| partner.customer(c))
        .map(|c| {
            let c = sim.customer_now(c);
            let users = sim.tenant_users(&c.tenant_id).unwrap_or_default();
            json!({"tenantId": c.tenant_id, "mfa": {
                "compliantAdminsCount": users.iter().filter(|u| u.is_admin && u.has_mfa).count(),
                "compliantNonAdminsCount": users.iter().filter(|u| !u.is_admin && u.has_mfa).count(),
                "totalUsersCount": users.len(),
                "securityDefaultsStatus": on(c.security_defaults),
                "mfaConditionalAccessPolicyStatus": on(c.mfa_ca_policy),
                "legacyPerUserMfaStatus": "disabled",
            }})
        })
        .collect();
    let mut body = json!({"value": items});
    if start + size < partner.customer_count {
        let mut next = sim
            .urls()
            .graph
            .join("/beta/security/partner/securityScore/customerInsights")
            .expect("a path joins");
        next.query_pairs_mut()
            .append_pair("$skiptoken", &encode_skip(start + size));
        body["@odata.nextLink"] = json!(next.to_string());
    }
    Ok(Json(body).into_response())
}

// ---- compliance reads, in any tenant ------------------------------------------------------

async fn security_defaults(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> GraphResult {
    caller.require(POLICY_READ)?;
    let (enabled, _) = sim.tenant_policies(&caller.tenant).unwrap_or_default();
    Ok(Json(json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#policies/identitySecurityDefaultsEnforcementPolicy/$entity",
        "id": "00000000-0000-0000-0000-000000000005",
        "displayName": "Security Defaults",
        "description": "Security defaults is a set of basic identity security mechanisms recommended by Microsoft. When enabled, these recommendations will be automatically enforced in your organization.",
        "isEnabled": enabled,
    })).into_response())
}

fn premium(sim: &Sim, tenant: &str) -> u8 {
    sim.tenant_premium(tenant)
}

async fn conditional_access(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> GraphResult {
    caller.require(POLICY_READ)?;
    let (_, mfa_policy) = sim.tenant_policies(&caller.tenant).unwrap_or_default();
    let users = sim.tenant_users(&caller.tenant).unwrap_or_default();
    let breakglass: Vec<String> = users
        .iter()
        .filter(|u| u.upn.starts_with("breakglass@"))
        .map(|u| u.object_id.clone())
        .collect();
    let seed = sim.scenario().seed;
    let policy = |name: &str, state: &str, controls: &[&str], exclude: &[String]| {
        json!({
            "id": derived_id(seed, &format!("{}/ca/{name}", caller.tenant)),
            "displayName": name, "state": state,
            "createdDateTime": "2024-01-10T08:00:00Z", "modifiedDateTime": "2024-06-01T08:00:00Z",
            "conditions": {
                "clientAppTypes": ["all"],
                "applications": {"includeApplications": ["All"], "excludeApplications": []},
                "users": {"includeUsers": ["All"], "excludeUsers": exclude, "includeGroups": [], "excludeGroups": [], "includeRoles": [], "excludeRoles": []},
            },
            "grantControls": {"operator": "OR", "builtInControls": controls, "customAuthenticationFactors": [], "termsOfUse": []},
            "sessionControls": null,
        })
    };
    let items = if premium(&sim, &caller.tenant) == 0 {
        Vec::new()
    } else {
        vec![
            policy(
                "Require MFA for all users",
                if mfa_policy { "enabled" } else { "disabled" },
                &["mfa"],
                &breakglass,
            ),
            policy(
                "Block legacy authentication",
                "enabledForReportingButNotEnforced",
                &["block"],
                &[],
            ),
        ]
    };
    let body = page(
        &sim,
        "/v1.0/identity/conditionalAccess/policies",
        &query,
        items,
        100,
        "v1.0/$metadata#identity/conditionalAccess/policies",
    )?;
    Ok(Json(body).into_response())
}

async fn registration_details(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> GraphResult {
    caller.require(REPORTS_READ)?;
    if premium(&sim, &caller.tenant) == 0 {
        return Err(graph_error(
            StatusCode::FORBIDDEN,
            "Authentication_RequestFromNonPremiumTenantOrB2CTenant",
            "Neither tenant is B2C or tenant doesn't have premium license",
        ));
    }
    let clauses = match param(&query, "$filter") {
        Some(f) => parse_filter(
            f,
            &[
                "isAdmin",
                "isMfaRegistered",
                "isMfaCapable",
                "userType",
                "userPrincipalName",
                "isSsprRegistered",
            ],
            &["eq"],
        )?,
        None => Vec::new(),
    };
    let items: Vec<Value> = sim
        .tenant_users(&caller.tenant)
        .unwrap_or_default()
        .iter()
        .map(|u| {
            let methods: Vec<&str> = if u.has_mfa { vec!["microsoftAuthenticatorPush", "softwareOneTimePasscode"] } else { vec![] };
            json!({
                "id": u.object_id, "userPrincipalName": u.upn, "userDisplayName": u.display_name,
                "userType": "member", "isAdmin": u.is_admin, "isMfaRegistered": u.has_mfa, "isMfaCapable": u.has_mfa,
                "isSsprRegistered": u.has_mfa, "isSsprEnabled": true, "isSsprCapable": u.has_mfa, "isPasswordlessCapable": false,
                "methodsRegistered": methods, "isSystemPreferredAuthenticationMethodEnabled": true,
                "systemPreferredAuthenticationMethods": if u.has_mfa { vec!["push"] } else { vec![] },
                "userPreferredMethodForSecondaryAuthentication": if u.has_mfa { "push" } else { "none" },
                "lastUpdatedDateTime": iso(sim.0.epoch_ms),
            })
        })
        .filter(|u| matches(u, &clauses))
        .collect();
    let body = page(
        &sim,
        "/v1.0/reports/authenticationMethods/userRegistrationDetails",
        &query,
        items,
        100,
        "v1.0/$metadata#reports/authenticationMethods/userRegistrationDetails",
    )?;
    Ok(Json(body).into_response())
}

const SKU_P2: &str = "84a661c4-e949-4bd2-a560-ed7766fcaf2b";
const PLAN_P2: &str = "eec0eb4f-6444-4f95-aba0-50c24d67f998";
const PLAN_P1: &str = "41781fb2-bc02-4b7c-bd55-b576c07bb09d";

async fn subscribed_skus(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> GraphResult {
    caller.require(SKUS_READ)?;
    if param(&query, "$filter").is_some() {
        return Err(bad_request(
            "Query option 'Filter' is not allowed. To allow it, set the 'AllowedQueryOptions' property on EnableQueryAttribute or QueryValidationSettings.",
        ));
    }
    let users = sim.tenant_users(&caller.tenant).unwrap_or_default();
    let tenant_key = caller.tenant.replace('-', "");
    let sku = |sku_id: &str, part: &str, enabled: u32, consumed: usize, plans: &[(&str, &str)]| {
        json!({
            "id": format!("{tenant_key}_{sku_id}"), "accountId": caller.tenant, "accountName": caller.tenant,
            "appliesTo": "User", "capabilityStatus": "Enabled", "consumedUnits": consumed,
            "skuId": sku_id, "skuPartNumber": part, "subscriptionIds": [derived_id(sim.scenario().seed, &format!("{}/{part}", caller.tenant))],
            "prepaidUnits": {"enabled": enabled, "suspended": 0, "warning": 0, "lockedOut": 0},
            "servicePlans": plans.iter().map(|(id, name)| json!({"servicePlanId": id, "servicePlanName": name, "provisioningStatus": "Success", "appliesTo": "User"})).collect::<Vec<_>>(),
        })
    };
    let p2_users = users.iter().filter(|u| u.has_p2).count();
    let items = match premium(&sim, &caller.tenant) {
        2 => vec![
            sku(
                SKU_P2,
                "AAD_PREMIUM_P2",
                5,
                p2_users,
                &[(PLAN_P2, "AAD_PREMIUM_P2"), (PLAN_P1, "AAD_PREMIUM")],
            ),
            sku(
                "05e9a617-0261-4cee-bb44-138d3ef5d965",
                "SPE_E3",
                25,
                users.len(),
                &[(PLAN_P1, "AAD_PREMIUM")],
            ),
        ],
        1 => vec![sku(
            "cbdc14ab-d96c-4c30-b9f4-6ada7cdc1d46",
            "SPB",
            25,
            users.len(),
            &[(PLAN_P1, "AAD_PREMIUM")],
        )],
        _ => vec![sku(
            "3b555118-da6a-4418-894f-7df1e2096870",
            "O365_BUSINESS_ESSENTIALS",
            25,
            users.len(),
            &[],
        )],
    };
    Ok(Json(json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscribedSkus", "value": items})).into_response())
}

fn relationship_id(sim: &Sim, customer: &Customer) -> String {
    format!(
        "{}-{}",
        derived_id(sim.scenario().seed, &format!("{}/gdap", customer.tenant_id)),
        customer.tenant_id
    )
}

const DAY_MS: i64 = 24 * 3_600_000;

fn relationship_json(sim: &Sim, customer: &Customer) -> Option<Value> {
    let status = customer.gdap.as_ref()?;
    let epoch = sim.0.epoch_ms;
    let c = customer.index as i64;
    // Expiring relationships end within 30 days; expired ones ended a while ago.
    let (activated, end) = match status {
        GdapStatus::Expiring => (
            epoch - (730 - 1 - c % 29) * DAY_MS,
            epoch + (1 + c % 29) * DAY_MS,
        ),
        GdapStatus::Expired => (epoch - 800 * DAY_MS, epoch - 70 * DAY_MS),
        GdapStatus::Active => (
            epoch - (30 + c % 300) * DAY_MS,
            epoch - (30 + c % 300) * DAY_MS + 730 * DAY_MS,
        ),
    };
    let status_name = match status {
        GdapStatus::Active => "active",
        // Graph has no "expiring" until the last days: the relationship is active and ends soon.
        GdapStatus::Expiring => "active",
        GdapStatus::Expired => "expired",
    };
    Some(json!({
        "@odata.etag": format!("W/\"{}\"", c + 1),
        "id": relationship_id(sim, customer),
        "displayName": format!("GDAP {}", customer.display_name),
        "duration": "P730D",
        "autoExtendDuration": if matches!(status, GdapStatus::Active) && c % 2 == 0 { "P180D" } else { "PT0S" },
        "status": status_name,
        "customer": {"tenantId": customer.tenant_id, "displayName": customer.display_name},
        "accessDetails": {"unifiedRoles": customer.gdap_roles.iter().map(|r| json!({"roleDefinitionId": r})).collect::<Vec<_>>()},
        "createdDateTime": iso(activated - DAY_MS), "activatedDateTime": iso(activated),
        "lastModifiedDateTime": iso(activated), "endDateTime": iso(end),
    }))
}

async fn list_relationships(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> GraphResult {
    caller.require(GDAP_READ)?;
    let partner = caller.partner(&sim)?;
    let size = top(&query, 100, 300)?;
    let clauses = match param(&query, "$filter") {
        Some(f) => parse_filter(
            f,
            &["status", "customer/tenantId", "displayName"],
            &["eq", "ne"],
        )?,
        None => Vec::new(),
    };
    let items: Vec<Value> = partner
        .customers()
        .map(|c| sim.customer_now(c))
        .filter_map(|c| relationship_json(&sim, &c))
        .filter(|r| matches(r, &clauses))
        .collect();
    let body = page(
        &sim,
        "/v1.0/tenantRelationships/delegatedAdminRelationships",
        &query,
        items,
        size,
        "v1.0/$metadata#tenantRelationships/delegatedAdminRelationships",
    )?;
    Ok(Json(body).into_response())
}

fn relationship_customer(sim: &Sim, partner: &Partner, id: &str) -> Option<Customer> {
    // The id ends with the customer's tenant id (36 characters).
    let tenant = id.get(id.len().checked_sub(36)?..)?;
    let customer = sim.customer_of(partner, tenant)?;
    relationship_id(sim, &customer)
        .eq_ignore_ascii_case(id)
        .then_some(customer)
}

async fn get_relationship(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> GraphResult {
    caller.require(GDAP_READ)?;
    let partner = caller.partner(&sim)?;
    relationship_customer(&sim, partner, &id)
        .and_then(|c| relationship_json(&sim, &c))
        .map(|r| Json(r).into_response())
        .ok_or_else(|| {
            graph_error(
                StatusCode::NOT_FOUND,
                "NotFound",
                "The delegated admin relationship does not exist.",
            )
        })
}

async fn access_assignments(
    State(sim): State<Sim>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> GraphResult {
    caller.require(GDAP_READ)?;
    let partner = caller.partner(&sim)?;
    let customer = relationship_customer(&sim, partner, &id)
        .filter(|c| c.gdap.is_some())
        .ok_or_else(|| {
            graph_error(
                StatusCode::NOT_FOUND,
                "NotFound",
                "The delegated admin relationship does not exist.",
            )
        })?;
    let assignment = json!({
        "@odata.etag": "W/\"1\"",
        "id": derived_id(sim.scenario().seed, &format!("{}/assignment", customer.tenant_id)),
        "status": if customer.gdap_usable() { "active" } else { "deleted" },
        "accessContainer": {"accessContainerId": derived_id(sim.scenario().seed, &format!("{}/adminagents", partner.tenant_id)), "accessContainerType": "securityGroup"},
        "accessDetails": {"unifiedRoles": customer.gdap_roles.iter().map(|r| json!({"roleDefinitionId": r})).collect::<Vec<_>>()},
        "createdDateTime": iso(sim.0.epoch_ms - 30 * DAY_MS), "lastModifiedDateTime": iso(sim.0.epoch_ms - 30 * DAY_MS),
    });
    Ok(Json(json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#accessAssignments", "value": [assignment]})).into_response())
}
