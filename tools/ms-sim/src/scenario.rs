//! The deterministic world a seed describes: partners, their SAM app, their users, and their
//! customers with or without GDAP and app consent. The same seed always gives the same ids and
//! secrets, so tests and demos can name them.

use sha2::{Digest, Sha256};

#[derive(Debug, Clone)]
pub struct ScenarioConfig {
    pub partners: usize,
    pub customers_per_partner: usize,
}

impl Default for ScenarioConfig {
    fn default() -> Self {
        Self {
            partners: 2,
            customers_per_partner: 10,
        }
    }
}

#[derive(Debug, Clone)]
pub struct User {
    pub upn: String,
    pub object_id: String,
    /// Registered for MFA: signing in satisfies `amr_values=mfa`.
    pub has_mfa: bool,
}

#[derive(Debug, Clone)]
pub struct App {
    pub client_id: String,
    pub client_secret: String,
}

#[derive(Debug, Clone)]
pub struct Customer {
    pub tenant_id: String,
    pub display_name: String,
    /// A GDAP relationship with the partner exists.
    pub gdap: bool,
    /// The partner's app is consented in the customer tenant.
    pub app_consent: bool,
}

#[derive(Debug, Clone)]
pub struct Partner {
    pub tenant_id: String,
    pub domain: String,
    pub app: App,
    /// An admin agent with MFA, a service account without, a break-glass account with MFA.
    pub users: Vec<User>,
    pub customers: Vec<Customer>,
}

impl Partner {
    pub fn admin(&self) -> &User {
        &self.users[0]
    }
    pub fn service_account(&self) -> &User {
        &self.users[1]
    }
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub seed: u64,
    pub partners: Vec<Partner>,
}

/// A UUID-shaped id derived from the seed and a label: stable, and distinct per label.
pub fn derived_id(seed: u64, label: &str) -> String {
    let digest = Sha256::digest(format!("{seed}/{label}").as_bytes());
    let mut bytes = [0_u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

impl Scenario {
    pub fn generate(seed: u64, config: &ScenarioConfig) -> Self {
        let partners = (0..config.partners)
            .map(|p| {
                let domain = format!("partner{p}.onmicrosoft.com");
                let user = |name: &str, has_mfa: bool| User {
                    upn: format!("{name}@{domain}"),
                    object_id: derived_id(seed, &format!("partner{p}/user/{name}")),
                    has_mfa,
                };
                Partner {
                    tenant_id: derived_id(seed, &format!("partner{p}")),
                    app: App {
                        client_id: derived_id(seed, &format!("partner{p}/app")),
                        client_secret: format!(
                            "sim~{}",
                            &derived_id(seed, &format!("partner{p}/secret")).replace('-', "")
                        ),
                    },
                    users: vec![
                        user("admin", true),
                        user("svc-automation", false),
                        user("breakglass", true),
                    ],
                    customers: (0..config.customers_per_partner)
                        .map(|c| Customer {
                            tenant_id: derived_id(seed, &format!("partner{p}/customer{c}")),
                            display_name: format!("Customer {c} of partner {p}"),
                            // Every fifth customer has no GDAP; every seventh no app consent.
                            gdap: c % 5 != 4,
                            app_consent: c % 7 != 6,
                        })
                        .collect(),
                    domain,
                }
            })
            .collect();
        Self { seed, partners }
    }

    pub fn partner_by_tenant(&self, tenant_id: &str) -> Option<&Partner> {
        self.partners.iter().find(|p| p.tenant_id == tenant_id)
    }

    pub fn partner_by_client(&self, client_id: &str) -> Option<&Partner> {
        self.partners.iter().find(|p| p.app.client_id == client_id)
    }

    pub fn customer(&self, partner: &Partner, tenant_id: &str) -> Option<Customer> {
        partner
            .customers
            .iter()
            .find(|c| c.tenant_id == tenant_id)
            .cloned()
    }
}
