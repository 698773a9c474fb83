//! Injected faults: per host, path and tenant, for the next N calls or a fraction of calls.
//! Rules are checked in the order they were added; the first that fires wins.

use rand::Rng;

use crate::Host;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FaultKind {
    /// Answer with this status and the host's error body (5xx, or any other).
    Status { status: u16 },
    /// 429 with `Retry-After`.
    Throttle { retry_after_secs: u64 },
    /// Answer normally, after this delay.
    Latency { ms: u64 },
    /// Drop the connection mid-response.
    Reset,
    /// Run the handler, then cut its body in half.
    Truncate,
    /// Run the handler, then answer with JSON that does not parse.
    Malformed,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Fault {
    /// `login`, `partner_center`, `graph`, `key_vault`, `certificates`, `vault_transit`; any
    /// when absent.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub path_contains: Option<String>,
    /// The tenant in the token URL (Entra) or the token's `tid`.
    #[serde(default)]
    pub tenant: Option<String>,
    pub kind: FaultKind,
    /// Fire for the next `count` matching calls; forever when absent.
    #[serde(default)]
    pub count: Option<usize>,
    /// Fire for this share of matching calls (0..=1); every one when absent.
    #[serde(default)]
    pub fraction: Option<f64>,
}

impl Fault {
    pub fn new(kind: FaultKind) -> Self {
        Self {
            host: None,
            path_contains: None,
            tenant: None,
            kind,
            count: None,
            fraction: None,
        }
    }
    pub fn on(mut self, host: Host) -> Self {
        self.host = Some(host.name().to_owned());
        self
    }
    pub fn path(mut self, contains: &str) -> Self {
        self.path_contains = Some(contains.to_owned());
        self
    }
    pub fn tenant(mut self, tenant: &str) -> Self {
        self.tenant = Some(tenant.to_owned());
        self
    }
    pub fn times(mut self, count: usize) -> Self {
        self.count = Some(count);
        self
    }
    pub fn fraction(mut self, fraction: f64) -> Self {
        self.fraction = Some(fraction);
        self
    }

    fn matches(&self, host: Host, path: &str, tenant: &str) -> bool {
        self.host.as_deref().is_none_or(|h| h == host.name())
            && self
                .path_contains
                .as_deref()
                .is_none_or(|p| path.to_ascii_lowercase().contains(&p.to_ascii_lowercase()))
            && self
                .tenant
                .as_deref()
                .is_none_or(|t| t.eq_ignore_ascii_case(tenant))
    }
}

#[derive(Debug, Default)]
pub struct Faults {
    rules: Vec<Fault>,
}

impl Faults {
    pub fn add(&mut self, fault: Fault) {
        self.rules.push(fault);
    }

    pub fn clear(&mut self) {
        self.rules.clear();
    }

    pub fn list(&self) -> Vec<Fault> {
        self.rules.clone()
    }

    /// The fault to apply to this call, if any, consuming one of its counted uses.
    pub fn take(&mut self, host: Host, path: &str, tenant: &str) -> Option<FaultKind> {
        let index = self.rules.iter().position(|rule| {
            rule.matches(host, path, tenant)
                && rule
                    .fraction
                    .is_none_or(|f| rand::thread_rng().gen_bool(f.clamp(0.0, 1.0)))
        })?;
        let rule = &mut self.rules[index];
        let kind = rule.kind.clone();
        if let Some(count) = rule.count.as_mut() {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.rules.remove(index);
            }
        }
        Some(kind)
    }
}
