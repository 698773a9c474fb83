//! The deterministic world a seed describes: partners, their SAM app, their users, and their
//! customers with or without GDAP, app consent, leftover DAP or Entra ID P2. The same seed
//! always gives the same ids and secrets, so tests and demos can name them.
//!
//! Customers are never stored: a customer is a pure function of (seed, partner, index), and its
//! tenant id encodes the partner and the index, so 100 partners × 10,000 customers cost no
//! memory until something changes one of them (the world keeps such changes as overrides).

use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// Global Administrator, the role a least-privilege GDAP relationship must not carry.
pub const ROLE_GLOBAL_ADMIN: &str = "62e90394-69f5-4237-9190-012177145e10";
pub const ROLE_CLOUD_APP_ADMIN: &str = "158c047a-c907-4556-b7ef-446551a6b5f7";
pub const ROLE_HELPDESK_ADMIN: &str = "729827e3-9c14-49f7-bb1b-9608f156bbb8";
pub const ROLE_USER_ADMIN: &str = "fe930be7-5e62-47db-91af-98c3a49a38b1";
pub const ROLE_SECURITY_READER: &str = "5d6b6bb7-de71-4623-b4af-96380a352509";
pub const ROLE_GLOBAL_READER: &str = "f2ef992c-3afb-46b9-b7cf-a126ee74c451";

#[derive(Debug, Clone)]
pub struct ScenarioConfig {
    pub partners: usize,
    pub customers_per_partner: usize,
    /// Seeded alerts per partner, covering every type and state.
    pub alerts_per_partner: usize,
}

impl Default for ScenarioConfig {
    fn default() -> Self {
        Self {
            partners: 2,
            customers_per_partner: 10,
            alerts_per_partner: 12,
        }
    }
}

#[derive(Debug, Clone)]
pub struct User {
    pub upn: String,
    pub object_id: String,
    pub display_name: String,
    /// Registered for MFA: signing in satisfies `amr_values=mfa`.
    pub has_mfa: bool,
    /// Holds a directory admin role (and, in a partner tenant, the Admin Agent role).
    pub is_admin: bool,
    /// Holds an Entra ID P2 licence.
    pub has_p2: bool,
}

#[derive(Clone)]
pub struct App {
    pub client_id: String,
    pub client_secret: String,
    certificate: std::sync::Arc<OnceLock<AppCertificate>>,
    certificate_seed: u64,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// The certificate registered on an app for `client_assertion` authentication.
#[derive(Clone)]
pub struct AppCertificate {
    pub certificate_pem: String,
    pub private_key_pem: String,
    /// base64url SHA-1 of the DER certificate: the `x5t` header of a client assertion.
    pub x5t: String,
    pub(crate) public_key: rsa::RsaPublicKey,
}

impl std::fmt::Debug for AppCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppCertificate")
            .field("x5t", &self.x5t)
            .finish_non_exhaustive()
    }
}

impl App {
    /// The app's certificate, generated on first use (RSA key generation is slow).
    pub fn certificate(&self) -> &AppCertificate {
        self.certificate.get_or_init(|| {
            crate::pki::app_certificate(self.certificate_seed, &self.client_id)
                .expect("generating a certificate from a seed cannot fail")
        })
    }
}

/// The operator's own app in its own tenant (what Palisade uses for Key Vault), client
/// credentials only.
#[derive(Debug, Clone)]
pub struct OperatorApp {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GdapStatus {
    Active,
    /// Active, ending within 30 days and not auto-extended.
    Expiring,
    Expired,
}

#[derive(Debug, Clone)]
pub struct Customer {
    pub partner_index: usize,
    pub index: usize,
    pub tenant_id: String,
    pub display_name: String,
    pub domain: String,
    /// A GDAP relationship with the partner exists (None: never had one).
    pub gdap: Option<GdapStatus>,
    /// The roles the GDAP relationship grants.
    pub gdap_roles: Vec<String>,
    /// The partner's app is consented in the customer tenant.
    pub app_consent: bool,
    /// Legacy DAP still allowed (`allowDelegatedAccess`).
    pub dap: bool,
    pub security_defaults: bool,
    pub mfa_ca_policy: bool,
    /// Entra ID licence: 2 = P2, 1 = P1 only, 0 = none.
    pub entra_premium: u8,
    /// The indirect reseller, when the partner is an indirect provider for this customer.
    pub reseller: Option<Reseller>,
}

impl Customer {
    /// Whether a customer-tenant token can be had through GDAP.
    pub fn gdap_usable(&self) -> bool {
        matches!(self.gdap, Some(GdapStatus::Active | GdapStatus::Expiring))
    }
}

#[derive(Debug, Clone)]
pub struct Reseller {
    pub tenant_id: String,
    pub name: String,
    pub mpn_id: String,
}

#[derive(Debug, Clone)]
pub struct Partner {
    pub index: usize,
    pub tenant_id: String,
    pub domain: String,
    pub company_name: String,
    pub mpn_id: String,
    pub app: App,
    /// An admin agent with MFA, a service account without, a break-glass account with MFA.
    pub users: Vec<User>,
    pub customer_count: usize,
    seed: u64,
    prefix: u32,
}

impl Partner {
    pub fn admin(&self) -> &User {
        &self.users[0]
    }
    pub fn service_account(&self) -> &User {
        &self.users[1]
    }

    /// The customer at `index`, computed on demand.
    pub fn customer(&self, index: usize) -> Option<Customer> {
        (index < self.customer_count).then(|| customer_at(self.seed, self.prefix, self, index))
    }

    pub fn customers(&self) -> impl Iterator<Item = Customer> + '_ {
        (0..self.customer_count).filter_map(|c| self.customer(c))
    }
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub seed: u64,
    pub partners: Vec<Partner>,
    pub operator: OperatorApp,
    pub alerts_per_partner: usize,
    /// Customer tenant ids start with this, then carry the partner and customer index.
    customer_prefix: u32,
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

fn derived_u32(seed: u64, label: &str) -> u32 {
    let digest = Sha256::digest(format!("{seed}/{label}").as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

fn customer_at(seed: u64, prefix: u32, partner: &Partner, c: usize) -> Customer {
    let p = partner.index;
    // Every fifth customer has no usable GDAP (half of those had one that expired); every
    // seventh no app consent; every third GDAP carries Global Administrator.
    let gdap = if c % 5 == 4 {
        (c % 10 == 9).then_some(GdapStatus::Expired)
    } else if c % 11 == 3 {
        Some(GdapStatus::Expiring)
    } else {
        Some(GdapStatus::Active)
    };
    let gdap_roles = match c % 3 {
        0 => vec![ROLE_GLOBAL_ADMIN],
        1 => vec![ROLE_CLOUD_APP_ADMIN, ROLE_USER_ADMIN, ROLE_SECURITY_READER],
        _ => vec![ROLE_HELPDESK_ADMIN, ROLE_GLOBAL_READER],
    }
    .into_iter()
    .map(str::to_owned)
    .collect();
    let reseller = (c % 8 == 5).then(|| Reseller {
        tenant_id: derived_id(seed, &format!("reseller{}", c % 3)),
        name: format!("Reseller {}", c % 3),
        mpn_id: format!("{}", 5_100_000 + c % 3),
    });
    Customer {
        partner_index: p,
        index: c,
        tenant_id: format!("{prefix:08x}-{p:04x}-4c00-8000-{c:012x}"),
        display_name: format!("Customer {c} of partner {p}"),
        domain: format!("customer{c}p{p}.onmicrosoft.com"),
        gdap,
        gdap_roles,
        app_consent: c % 7 != 6,
        dap: c % 6 == 1,
        security_defaults: c.is_multiple_of(2),
        mfa_ca_policy: c % 4 == 1,
        entra_premium: match c % 6 {
            5 => 0,
            2 => 1,
            _ => 2,
        },
        reseller,
    }
}

impl Scenario {
    pub fn generate(seed: u64, config: &ScenarioConfig) -> Self {
        let customer_prefix = derived_u32(seed, "customers");
        let partners = (0..config.partners)
            .map(|p| {
                let domain = format!("partner{p}.onmicrosoft.com");
                let user = |name: &str, display: &str, has_mfa: bool, has_p2: bool| User {
                    upn: format!("{name}@{domain}"),
                    object_id: derived_id(seed, &format!("partner{p}/user/{name}")),
                    display_name: display.to_owned(),
                    has_mfa,
                    is_admin: true,
                    has_p2,
                };
                Partner {
                    index: p,
                    tenant_id: derived_id(seed, &format!("partner{p}")),
                    company_name: format!("Partner {p} Ltd"),
                    mpn_id: format!("{}", 4_800_000 + p),
                    app: App {
                        client_id: derived_id(seed, &format!("partner{p}/app")),
                        client_secret: format!(
                            "sim~{}",
                            &derived_id(seed, &format!("partner{p}/secret")).replace('-', "")
                        ),
                        certificate: std::sync::Arc::new(OnceLock::new()),
                        certificate_seed: seed ^ (p as u64 + 1) << 20,
                    },
                    users: vec![
                        user("admin", "Admin Agent", true, true),
                        user("svc-automation", "Automation Service", false, false),
                        user("breakglass", "Break Glass", true, true),
                    ],
                    customer_count: config.customers_per_partner,
                    domain,
                    seed,
                    prefix: customer_prefix,
                }
            })
            .collect();
        Self {
            seed,
            partners,
            operator: OperatorApp {
                tenant_id: derived_id(seed, "operator"),
                client_id: derived_id(seed, "operator/app"),
                client_secret: format!(
                    "sim~{}",
                    derived_id(seed, "operator/secret").replace('-', "")
                ),
            },
            alerts_per_partner: config.alerts_per_partner,
            customer_prefix,
        }
    }

    pub fn partner_by_tenant(&self, tenant_id: &str) -> Option<&Partner> {
        self.partners
            .iter()
            .find(|p| p.tenant_id.eq_ignore_ascii_case(tenant_id))
    }

    pub fn partner_by_client(&self, client_id: &str) -> Option<&Partner> {
        self.partners.iter().find(|p| p.app.client_id == client_id)
    }

    /// Decodes a customer tenant id back to its partner and index, in O(1).
    pub fn customer_by_tenant(&self, tenant_id: &str) -> Option<(&Partner, Customer)> {
        let lower = tenant_id.to_ascii_lowercase();
        let parts: Vec<&str> = lower.split('-').collect();
        let [prefix, p, "4c00", "8000", c] = parts.as_slice() else {
            return None;
        };
        if u32::from_str_radix(prefix, 16).ok()? != self.customer_prefix || c.len() != 12 {
            return None;
        }
        let p = usize::from_str_radix(p, 16).ok()?;
        let c = usize::from_str_radix(c, 16).ok()?;
        let partner = self.partners.get(p)?;
        Some((partner, partner.customer(c)?))
    }

    /// The customer, if it belongs to this partner.
    pub fn customer(&self, partner: &Partner, tenant_id: &str) -> Option<Customer> {
        self.customer_by_tenant(tenant_id)
            .filter(|(p, _)| p.index == partner.index)
            .map(|(_, c)| c)
    }

    /// The users of a customer tenant: two admins and a member.
    pub fn customer_users(&self, customer: &Customer) -> Vec<User> {
        let user = |name: &str, display: &str, is_admin: bool, has_mfa: bool| User {
            upn: format!("{name}@{}", customer.domain),
            object_id: derived_id(self.seed, &format!("{}/user/{name}", customer.tenant_id)),
            display_name: display.to_owned(),
            has_mfa,
            is_admin,
            has_p2: customer.entra_premium == 2,
        };
        let protected = customer.security_defaults || customer.mfa_ca_policy;
        vec![
            user("admin", "Tenant Admin", true, true),
            // Without a tenant-wide MFA policy the second admin never registered.
            user(
                "it-admin",
                "IT Admin",
                true,
                protected || customer.index % 3 == 1,
            ),
            user("employee", "Employee", false, protected),
        ]
    }

    /// The Azure subscription id of a customer's Azure plan (what alerts name).
    pub fn azure_subscription_id(&self, customer: &Customer) -> String {
        derived_id(
            self.seed,
            &format!("{}/azure-subscription", customer.tenant_id),
        )
    }
}
