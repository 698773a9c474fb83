//! What has changed since the seed: tenant policies and relationships, alerts, webhook
//! registrations, profiles, idempotency records and throttle windows. The scenario is the
//! default; everything here overrides it, so untouched customers cost nothing.

use std::collections::HashMap;

use crate::{
    Sim,
    alerts::Alert,
    scenario::{Customer, GdapStatus, Partner, User},
};

/// Changes to one tenant (partner or customer), keyed by lower-case tenant id.
#[derive(Debug, Default, Clone)]
pub struct TenantOverride {
    pub security_defaults: Option<bool>,
    pub mfa_ca_policy: Option<bool>,
    /// Per user principal name (lower case): registered for MFA or not.
    pub user_mfa: HashMap<String, bool>,
    /// Per user principal name (lower case): holds an Entra ID P2 licence or not.
    pub user_p2: HashMap<String, bool>,
    /// The tenant's Entra ID licence level: 2 = P2, 1 = P1, 0 = none.
    pub entra_premium: Option<u8>,
    pub gdap: Option<Option<GdapStatus>>,
    pub gdap_roles: Option<Vec<String>>,
    pub app_consent: Option<bool>,
    pub dap: Option<bool>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Registration {
    pub subscriber_id: String,
    pub url: String,
    pub events: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ValidationEvent {
    pub partner_tenant: String,
    pub delivery_id: u64,
}

#[derive(Debug, Clone)]
pub struct Replay {
    pub status: u16,
    pub body: Vec<u8>,
}

#[derive(Debug)]
pub struct World {
    pub tenants: HashMap<String, TenantOverride>,
    /// Per partner tenant, seeded on first access.
    pub alerts: HashMap<String, Vec<Alert>>,
    pub registrations: HashMap<String, Registration>,
    pub validation_events: HashMap<String, ValidationEvent>,
    /// Partner Center `MS-RequestId` → the first answer, replayed on a retry.
    pub idempotency: HashMap<(String, String), Replay>,
    /// (limit class, key) → (window start, calls in the window).
    throttles: HashMap<(String, String), (i64, u32)>,
    pub realistic_throttles: bool,
    /// Partner tenant → legal business profile, once changed by PUT.
    pub legal_profiles: HashMap<String, serde_json::Value>,
    /// Partner tenant → whether a security contact is set (a UI-only setting).
    pub security_contact: HashMap<String, bool>,
    /// App client id → its consented Graph delegated permissions, when changed.
    pub app_permissions: HashMap<String, Vec<String>>,
    /// Partner tenant → alerts raised through the control API so far (numbers new alerts).
    pub alert_counter: HashMap<String, u64>,
}

impl World {
    pub fn new(realistic_throttles: bool) -> Self {
        Self {
            tenants: HashMap::new(),
            alerts: HashMap::new(),
            registrations: HashMap::new(),
            validation_events: HashMap::new(),
            idempotency: HashMap::new(),
            throttles: HashMap::new(),
            realistic_throttles,
            legal_profiles: HashMap::new(),
            security_contact: HashMap::new(),
            app_permissions: HashMap::new(),
            alert_counter: HashMap::new(),
        }
    }

    pub fn tenant(&mut self, tenant_id: &str) -> &mut TenantOverride {
        self.tenants
            .entry(tenant_id.to_ascii_lowercase())
            .or_default()
    }

    /// A fixed-window limiter: None when the call may proceed, else seconds to wait.
    pub fn throttle(
        &mut self,
        class: &str,
        key: &str,
        limit: u32,
        window_ms: i64,
        now: i64,
    ) -> Option<u64> {
        let entry = self
            .throttles
            .entry((class.to_owned(), key.to_ascii_lowercase()))
            .or_insert((now, 0));
        if now - entry.0 >= window_ms {
            *entry = (now, 0);
        }
        if entry.1 >= limit {
            let wait_ms = window_ms - (now - entry.0);
            return Some(((wait_ms + 999) / 1000).max(1) as u64);
        }
        entry.1 += 1;
        None
    }
}

/// The graph delegated permissions a SAM app is consented for by default.
pub const DEFAULT_GRAPH_PERMISSIONS: &[&str] = &[
    "DelegatedAdminRelationship.ReadWrite.All",
    "User.Read.All",
    "Directory.Read.All",
    "PartnerSecurity.ReadWrite.All",
    "Policy.Read.All",
    "AuditLog.Read.All",
    "Organization.Read.All",
];

impl Sim {
    /// The customer as it is now: the seed, plus what the control API changed.
    pub(crate) fn customer_now(&self, customer: Customer) -> Customer {
        let key = customer.tenant_id.to_ascii_lowercase();
        self.with_world(|w| {
            let Some(o) = w.tenants.get(&key) else {
                return customer;
            };
            let mut c = customer;
            if let Some(v) = o.security_defaults {
                c.security_defaults = v;
            }
            if let Some(v) = o.mfa_ca_policy {
                c.mfa_ca_policy = v;
            }
            if let Some(v) = &o.gdap {
                c.gdap = v.clone();
            }
            if let Some(v) = &o.gdap_roles {
                c.gdap_roles = v.clone();
            }
            if let Some(v) = o.app_consent {
                c.app_consent = v;
            }
            if let Some(v) = o.dap {
                c.dap = v;
            }
            c
        })
    }

    /// A customer of this partner by tenant id, as it is now.
    pub(crate) fn customer_of(&self, partner: &Partner, tenant_id: &str) -> Option<Customer> {
        self.scenario()
            .customer(partner, tenant_id)
            .map(|c| self.customer_now(c))
    }

    /// The users of any tenant, with MFA registrations as they are now.
    pub(crate) fn tenant_users(&self, tenant_id: &str) -> Option<Vec<User>> {
        let scenario = self.scenario();
        let mut users = if let Some(partner) = scenario.partner_by_tenant(tenant_id) {
            partner.users.clone()
        } else {
            // Registrations are facts about users: turning a policy off later does not undo them.
            let (_, customer) = scenario.customer_by_tenant(tenant_id)?;
            scenario.customer_users(&customer)
        };
        self.with_world(|w| {
            if let Some(o) = w.tenants.get(&tenant_id.to_ascii_lowercase()) {
                for user in &mut users {
                    let upn = user.upn.to_ascii_lowercase();
                    if let Some(mfa) = o.user_mfa.get(&upn) {
                        user.has_mfa = *mfa;
                    }
                    if let Some(p2) = o.user_p2.get(&upn) {
                        user.has_p2 = *p2;
                    }
                }
            }
        });
        Some(users)
    }

    /// (security defaults, an enabled CA policy requiring MFA) for any tenant.
    pub(crate) fn tenant_policies(&self, tenant_id: &str) -> Option<(bool, bool)> {
        let scenario = self.scenario();
        let seeded = if scenario.partner_by_tenant(tenant_id).is_some() {
            // Partners rely on a Conditional Access policy that excludes the break-glass account.
            (false, true)
        } else {
            let (_, customer) = scenario.customer_by_tenant(tenant_id)?;
            let c = self.customer_now(customer);
            return Some((c.security_defaults, c.mfa_ca_policy));
        };
        Some(self.with_world(|w| {
            let o = w.tenants.get(&tenant_id.to_ascii_lowercase());
            (
                o.and_then(|o| o.security_defaults).unwrap_or(seeded.0),
                o.and_then(|o| o.mfa_ca_policy).unwrap_or(seeded.1),
            )
        }))
    }

    /// The partner's alerts, seeding them on first access.
    pub(crate) fn with_alerts<R>(
        &self,
        partner: &Partner,
        f: impl FnOnce(&mut Vec<Alert>) -> R,
    ) -> R {
        let epoch = self.0.epoch_ms;
        let scenario = self.scenario();
        self.with_world(|w| {
            let alerts = w
                .alerts
                .entry(partner.tenant_id.clone())
                .or_insert_with(|| Alert::seeded(scenario, partner, epoch));
            f(alerts)
        })
    }

    /// The Entra ID licence level of any tenant: partners hold P2 unless changed.
    pub(crate) fn tenant_premium(&self, tenant_id: &str) -> u8 {
        let seeded = match self.scenario().customer_by_tenant(tenant_id) {
            Some((_, c)) => c.entra_premium,
            None => 2,
        };
        self.with_world(|w| {
            w.tenants
                .get(&tenant_id.to_ascii_lowercase())
                .and_then(|o| o.entra_premium)
        })
        .unwrap_or(seeded)
    }

    pub(crate) fn graph_permissions(&self, client_id: &str) -> Vec<String> {
        self.with_world(|w| w.app_permissions.get(client_id).cloned())
            .unwrap_or_else(|| {
                DEFAULT_GRAPH_PERMISSIONS
                    .iter()
                    .map(|p| (*p).to_owned())
                    .collect()
            })
    }

    pub(crate) fn security_contact(&self, partner: &Partner) -> bool {
        // Seeded: the first partner has set one, the others have not.
        self.with_world(|w| w.security_contact.get(&partner.tenant_id).copied())
            .unwrap_or(partner.index == 0)
    }
}
