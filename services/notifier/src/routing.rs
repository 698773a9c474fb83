//! Who hears about an item. Partner routes are evaluated in priority order; when none
//! matches, the defaults mirror Microsoft's own behaviour: Azure fraud alerts go to the admin
//! agents, incidents (a revoked partner token, a failing critical compliance check, a
//! terminated relationship) go to the security contact, other compliance changes to the
//! compliance contact.

use palisade_contracts::notify::v1::{DeliveryMode, Recipient, Route};

use crate::events::{Category, ItemSummary};

/// A matched route, reduced to what planning needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub route_id: String,
    pub recipients: Vec<Recipient>,
    pub channel_ids: Vec<String>,
    pub digest: bool,
}

pub const DEFAULT_ADMINS: &str = "default-admin-agents";
pub const DEFAULT_SECURITY: &str = "default-security-contact";
pub const DEFAULT_COMPLIANCE: &str = "default-compliance-contact";

fn matches(route: &Route, item: &ItemSummary) -> bool {
    (route.event_kinds.is_empty() || route.event_kinds.contains(&item.kind))
        && item.severity >= route.min_severity
        && (route.alert_types.is_empty()
            || route
                .alert_types
                .iter()
                .any(|t| t.eq_ignore_ascii_case(&item.alert_type)))
        && (route.customer_tenant_ids.is_empty()
            || route.customer_tenant_ids.contains(&item.customer_tenant_id))
}

pub fn route(routes: &[Route], item: &ItemSummary) -> Vec<Target> {
    let mut targets = Vec::new();
    let mut sorted: Vec<&Route> = routes.iter().collect();
    sorted.sort_by(|a, b| {
        a.priority
            .cmp(&b.priority)
            .then(a.route_id.cmp(&b.route_id))
    });
    for r in sorted {
        if !matches(r, item) {
            continue;
        }
        targets.push(Target {
            route_id: r.route_id.clone(),
            recipients: r.recipients().collect(),
            channel_ids: r.channel_ids.clone(),
            digest: r.mode() == DeliveryMode::Digest,
        });
        if r.stop {
            break;
        }
    }
    if targets.is_empty() {
        targets.push(default_target(item));
    }
    targets
}

pub fn default_target(item: &ItemSummary) -> Target {
    let (route_id, recipient) = match item.category {
        _ if item.incident => (DEFAULT_SECURITY, Recipient::SecurityContact),
        Category::FraudAlert => (DEFAULT_ADMINS, Recipient::AdminAgents),
        Category::Compliance => (DEFAULT_COMPLIANCE, Recipient::ComplianceContact),
        Category::TokenHealth | Category::Gdap | Category::Dap => {
            (DEFAULT_ADMINS, Recipient::AdminAgents)
        }
    };
    Target {
        route_id: route_id.to_owned(),
        recipients: vec![recipient],
        channel_ids: Vec::new(),
        digest: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(category: Category, incident: bool, severity: i32) -> ItemSummary {
        ItemSummary {
            event_id: "e".into(),
            kind: "alert.raised".into(),
            category,
            fingerprint: "f".into(),
            firing: true,
            one_shot: false,
            incident,
            severity,
            severity_name: String::new(),
            title: String::new(),
            detail: String::new(),
            alert_type: "cryptoMining".into(),
            customer_tenant_id: "c1".into(),
            customer_name: String::new(),
            subscription_id: String::new(),
            link: String::new(),
            occurred_at: 0,
        }
    }

    #[test]
    fn defaults_mirror_microsoft() {
        let fraud = route(&[], &item(Category::FraudAlert, false, 4));
        assert_eq!(fraud[0].recipients, vec![Recipient::AdminAgents]);
        let revoked = route(&[], &item(Category::TokenHealth, true, 4));
        assert_eq!(revoked[0].recipients, vec![Recipient::SecurityContact]);
        let critical = route(&[], &item(Category::Compliance, true, 4));
        assert_eq!(critical[0].recipients, vec![Recipient::SecurityContact]);
        let minor = route(&[], &item(Category::Compliance, false, 2));
        assert_eq!(minor[0].recipients, vec![Recipient::ComplianceContact]);
    }

    #[test]
    fn partner_rules_match_kind_severity_type_and_customers_in_priority_order() {
        let soc = Route {
            route_id: "soc".into(),
            event_kinds: vec!["alert.raised".into()],
            min_severity: 4,
            alert_types: vec!["CRYPTOMINING".into()],
            customer_tenant_ids: vec!["c1".into(), "c2".into()],
            channel_ids: vec!["ch-soc".into()],
            priority: 1,
            stop: true,
            ..Default::default()
        };
        let all = Route {
            route_id: "all".into(),
            recipients: vec![Recipient::SecurityContact as i32],
            mode: DeliveryMode::Digest as i32,
            priority: 2,
            ..Default::default()
        };
        let routes = [all.clone(), soc.clone()];
        let t = route(&routes, &item(Category::FraudAlert, false, 4));
        assert_eq!(t.len(), 1, "stop ends evaluation");
        assert_eq!(t[0].channel_ids, vec!["ch-soc".to_owned()]);
        let low = route(&routes, &item(Category::FraudAlert, false, 2));
        assert_eq!(low.len(), 1);
        assert_eq!(low[0].route_id, "all");
        assert!(low[0].digest);
        let mut other_customer = item(Category::FraudAlert, false, 4);
        other_customer.customer_tenant_id = "c9".into();
        assert_eq!(route(&routes, &other_customer)[0].route_id, "all");
    }
}
