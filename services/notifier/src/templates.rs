//! Message templates: one file per message and language under `templates/<lang>/<name>.j2`,
//! each with a `subject` and a `body` block, rendered by minijinja.
//!
//! The files are compiled in, so a deployed binary can never miss a translation; the test
//! below renders every template in every language.

use minijinja::Environment;
use serde::Serialize;

use crate::{error::Result, validate::LANGUAGES};

/// Every template name; each exists in every language of [`LANGUAGES`].
pub const NAMES: [&str; 10] = [
    "alert",
    "compliance",
    "dap",
    "digest",
    "endpoint_disabled",
    "escalation",
    "gdap",
    "group",
    "test",
    "token_health",
];

macro_rules! template {
    ($lang:literal, $name:literal) => {
        (
            concat!($lang, "/", $name),
            include_str!(concat!("../templates/", $lang, "/", $name, ".j2")),
        )
    };
}

const SOURCES: &[(&str, &str)] = &[
    template!("en", "alert"),
    template!("ja", "alert"),
    template!("fr", "alert"),
    template!("en", "compliance"),
    template!("ja", "compliance"),
    template!("fr", "compliance"),
    template!("en", "dap"),
    template!("ja", "dap"),
    template!("fr", "dap"),
    template!("en", "digest"),
    template!("ja", "digest"),
    template!("fr", "digest"),
    template!("en", "endpoint_disabled"),
    template!("ja", "endpoint_disabled"),
    template!("fr", "endpoint_disabled"),
    template!("en", "escalation"),
    template!("ja", "escalation"),
    template!("fr", "escalation"),
    template!("en", "gdap"),
    template!("ja", "gdap"),
    template!("fr", "gdap"),
    template!("en", "group"),
    template!("ja", "group"),
    template!("fr", "group"),
    template!("en", "test"),
    template!("ja", "test"),
    template!("fr", "test"),
    template!("en", "token_health"),
    template!("ja", "token_health"),
    template!("fr", "token_health"),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub body: String,
}

#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl Templates {
    pub fn new() -> Self {
        let mut env = Environment::new();
        // Plain text: nothing is HTML-escaped here; the channel encoders escape for their
        // own formats (JSON, MIME).
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.set_keep_trailing_newline(false);
        for (name, source) in SOURCES {
            env.add_template(name, source)
                .expect("templates compile: checked by the every_template_renders test");
        }
        Self { env }
    }

    /// Renders `name` in `language` (one of [`LANGUAGES`]; anything else renders English).
    pub fn render(&self, name: &str, language: &str, ctx: impl Serialize) -> Result<Rendered> {
        let lang = if LANGUAGES.contains(&language) {
            language
        } else {
            "en"
        };
        let template = self.env.get_template(&format!("{lang}/{name}"))?;
        // Rendering the whole template evaluates it once; the blocks are then taken apart.
        let mut captured = template.render_captured(ctx)?;
        let (subject, body) = captured.with_state_mut(|state| {
            Ok::<_, minijinja::Error>((state.render_block("subject")?, state.render_block("body")?))
        })?;
        Ok(Rendered {
            // A subject is one line: a newline in a header would break MIME and chat titles.
            subject: subject.split_whitespace().collect::<Vec<_>>().join(" "),
            body: body.trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Category, ItemSummary};
    use minijinja::context;

    fn item(firing: bool) -> ItemSummary {
        ItemSummary {
            event_id: "m1".into(),
            kind: "alert.raised".into(),
            category: Category::FraudAlert,
            fingerprint: "fp-1".into(),
            firing,
            one_shot: false,
            incident: false,
            severity: 4,
            severity_name: "high".into(),
            title: "Crypto mining".into(),
            detail: "Unusual compute".into(),
            alert_type: "cryptoMiningActivity".into(),
            customer_tenant_id: "cust-1".into(),
            customer_name: "Contoso".into(),
            subscription_id: "sub-1".into(),
            link: "https://example.com/fix".into(),
            occurred_at: 0,
        }
    }

    #[test]
    fn every_template_renders_in_every_language() {
        let templates = Templates::new();
        let stats = context! {
            open_alerts => 3, customers => 2, subscriptions => 2, overdue_alerts => 1,
            per_alert_type => vec![context!{ alert_type => "cryptoMiningActivity", count => 3 }],
            compliance_failures => vec!["MFA for every user"],
        };
        for firing in [true, false] {
            let ctx = context! {
                item => item(firing), items => vec![item(true), item(false)],
                firing_count => 1, resolved_count => 1, stats => stats.clone(),
                date => "2026-11-23", step => 2, ack_url => "https://notify.example/ack?x=1",
                channel_name => "SOC", reason => "the endpoint answered 410 Gone",
            };
            for name in NAMES {
                let mut seen = Vec::new();
                for lang in LANGUAGES {
                    let r = templates.render(name, lang, &ctx).unwrap();
                    assert!(!r.subject.is_empty(), "{lang}/{name} subject");
                    assert!(!r.body.is_empty(), "{lang}/{name} body");
                    assert!(!r.subject.contains('\n'));
                    assert!(
                        !r.body.contains("{{") && !r.body.contains("{%"),
                        "{lang}/{name}"
                    );
                    seen.push(r);
                }
                // Each language is a real translation, not a copy of English.
                assert_ne!(seen[0], seen[1], "ja/{name} equals en");
                assert_ne!(seen[0], seen[2], "fr/{name} equals en");
            }
        }
        let ja = templates
            .render("alert", "ja", context! { item => item(true) })
            .unwrap();
        assert!(ja.subject.contains("アラート"), "{}", ja.subject);
        let fallback = templates
            .render("alert", "de", context! { item => item(true) })
            .unwrap();
        assert!(
            fallback.subject.starts_with("[HIGH] Azure alert"),
            "{}",
            fallback.subject
        );
    }
}
