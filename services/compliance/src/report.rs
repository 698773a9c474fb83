//! Exports of an evaluation: CSV (one row per finding, for spreadsheets), JSON (proto field
//! names, for scripts) and a self-contained HTML page a person can read and forward.

use palisade_contracts::common::v1::Severity;
use palisade_contracts::compliance::v1::{CheckKind, CheckStatus, ComplianceStatus, Finding};
use serde_json::{Value, json};

use crate::model::{check_name, status_name};

fn status_of(f: &Finding) -> CheckStatus {
    CheckStatus::try_from(f.status).unwrap_or(CheckStatus::Unknown)
}

fn check_of(f: &Finding) -> CheckKind {
    CheckKind::try_from(f.check).unwrap_or(CheckKind::Unspecified)
}

fn severity_name(f: &Finding) -> &'static str {
    match Severity::try_from(f.severity).unwrap_or(Severity::Unspecified) {
        Severity::High => "high",
        Severity::Medium => "medium",
        Severity::Low => "low",
        Severity::Informational => "informational",
        Severity::Unspecified => "",
    }
}

fn iso(ts: Option<&prost_types::Timestamp>) -> String {
    ts.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32))
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// RFC 4180: quote every field, double the quotes; a leading `=+-@` is defused so a
/// spreadsheet never runs a cell as a formula.
fn csv_field(value: &str) -> String {
    let defused = if value.starts_with(['=', '+', '-', '@']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    format!("\"{}\"", defused.replace('"', "\"\""))
}

pub fn csv(status: &ComplianceStatus, findings: &[Finding]) -> Vec<u8> {
    let mut out = String::from(
        "partner_tenant_id,evaluation_id,evaluated_at,check,status,severity,customer_tenant_id,title,summary,subjects,remediation,doc_url\r\n",
    );
    for f in findings {
        let row = [
            status.partner_tenant_id.as_str(),
            status.evaluation_id.as_str(),
            &iso(f.evaluated_at.as_ref()),
            check_name(check_of(f)),
            status_name(status_of(f)),
            severity_name(f),
            &f.customer_tenant_id,
            &f.title,
            &f.summary,
            &f.subjects.join("; "),
            &f.remediation,
            &f.doc_url,
        ];
        out.push_str(
            &row.iter()
                .map(|v| csv_field(v))
                .collect::<Vec<_>>()
                .join(","),
        );
        out.push_str("\r\n");
    }
    out.into_bytes()
}

fn finding_json(f: &Finding) -> Value {
    let mut evidence: Vec<(&String, &String)> = f.evidence.iter().collect();
    evidence.sort();
    json!({
        "finding_id": f.finding_id,
        "check": check_name(check_of(f)),
        "status": status_name(status_of(f)),
        "severity": severity_name(f),
        "title": f.title,
        "summary": f.summary,
        "evidence": evidence.into_iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
        "subjects": f.subjects,
        "remediation": f.remediation,
        "doc_url": f.doc_url,
        "evaluated_at": iso(f.evaluated_at.as_ref()),
        "customer_tenant_id": f.customer_tenant_id,
    })
}

pub fn json(status: &ComplianceStatus, findings: &[Finding]) -> Vec<u8> {
    let body = json!({
        "partner_tenant_id": status.partner_tenant_id,
        "evaluation_id": status.evaluation_id,
        "evaluated_at": iso(status.evaluated_at.as_ref()),
        "score": status.score,
        "max_score": status.max_score,
        "microsoft_score": status.microsoft_score,
        "microsoft_max_score": status.microsoft_max_score,
        "checks": status.checks.iter().map(finding_json).collect::<Vec<_>>(),
        "findings": findings.iter().filter(|f| !f.customer_tenant_id.is_empty()).map(finding_json).collect::<Vec<_>>(),
    });
    let mut bytes = serde_json::to_vec_pretty(&body).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

pub fn html(status: &ComplianceStatus, findings: &[Finding]) -> Vec<u8> {
    let mut out = String::new();
    out.push_str(&format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Partner security compliance — {partner}</title>\
<style>body{{font-family:system-ui,sans-serif;margin:2rem auto;max-width:72rem;color:#1b1f23;line-height:1.45}}\
h1{{font-size:1.6rem}}.score{{font-size:2.4rem;font-weight:700}}table{{border-collapse:collapse;width:100%;margin:1rem 0}}\
th,td{{border-bottom:1px solid #ddd;padding:.45rem .6rem;text-align:left;vertical-align:top}}th{{background:#f6f8fa}}\
.pass{{color:#1a7f37}}.fail{{color:#cf222e}}.warn{{color:#9a6700}}.unknown{{color:#57606a}}\
.badge{{font-weight:600;text-transform:uppercase;font-size:.8rem}}details{{margin:.3rem 0}}small{{color:#57606a}}</style></head><body>\
<h1>Partner security compliance</h1><p><small>Partner tenant {partner} · evaluation {evaluation} · {at}</small></p>\
<p><span class=\"score\">{score:.0}</span> / {max:.0} &nbsp; <small>Microsoft's own score: {ms:.0} / {msmax:.0}</small></p>",
        partner = esc(&status.partner_tenant_id),
        evaluation = esc(&status.evaluation_id),
        at = esc(&iso(status.evaluated_at.as_ref())),
        score = status.score,
        max = status.max_score,
        ms = status.microsoft_score,
        msmax = status.microsoft_max_score,
    ));
    out.push_str("<h2>Requirements</h2><table><tr><th>Status</th><th>Requirement</th><th>What we saw</th><th>What to do</th></tr>");
    for f in &status.checks {
        let s = status_name(status_of(f));
        out.push_str(&format!(
            "<tr><td class=\"badge {s}\">{s}</td><td><a href=\"{doc}\">{title}</a></td><td>{summary}",
            doc = esc(&f.doc_url),
            title = esc(&f.title),
            summary = esc(&f.summary),
        ));
        if !f.subjects.is_empty() {
            out.push_str(&format!(
                "<details><summary>{} affected</summary>{}</details>",
                f.subjects.len(),
                f.subjects
                    .iter()
                    .map(|x| esc(x))
                    .collect::<Vec<_>>()
                    .join("<br>")
            ));
        }
        if !f.evidence.is_empty() {
            let mut evidence: Vec<_> = f.evidence.iter().collect();
            evidence.sort();
            out.push_str(&format!(
                "<details><summary>evidence</summary>{}</details>",
                evidence
                    .iter()
                    .map(|(k, v)| format!("<code>{}</code>: {}", esc(k), esc(v)))
                    .collect::<Vec<_>>()
                    .join("<br>")
            ));
        }
        out.push_str(&format!("</td><td>{}</td></tr>", esc(&f.remediation)));
    }
    out.push_str("</table>");
    let customers: Vec<&Finding> = findings
        .iter()
        .filter(|f| !f.customer_tenant_id.is_empty())
        .collect();
    if !customers.is_empty() {
        out.push_str(&format!(
            "<h2>Customer tenants needing attention ({})</h2><table><tr><th>Status</th><th>Customer</th><th>Finding</th><th>What to do</th></tr>",
            customers.len()
        ));
        for f in customers {
            let s = status_name(status_of(f));
            out.push_str(&format!(
                "<tr><td class=\"badge {s}\">{s}</td><td>{name}<br><small>{id}</small></td><td>{title}: {summary}</td><td>{fix}</td></tr>",
                name = esc(f.evidence.get("customer").map(String::as_str).unwrap_or_default()),
                id = esc(&f.customer_tenant_id),
                title = esc(&f.title),
                summary = esc(&f.summary),
                fix = esc(&f.remediation),
            ));
        }
        out.push_str("</table>");
    }
    out.push_str("<p><small>Generated by Palisade compliance. Checks follow Microsoft's partner security requirements.</small></p></body></html>\n");
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        assert_eq!(csv_field("a\"b"), "\"a\"\"b\"");
        assert_eq!(csv_field("=cmd()"), "\"'=cmd()\"");
    }

    #[test]
    fn html_escapes_what_it_shows() {
        let status = ComplianceStatus {
            partner_tenant_id: "<p>".into(),
            checks: vec![Finding {
                title: "<script>".into(),
                status: CheckStatus::Fail as i32,
                ..Finding::default()
            }],
            ..ComplianceStatus::default()
        };
        let page = String::from_utf8(html(&status, &[])).unwrap();
        assert!(page.contains("&lt;script&gt;"));
        assert!(!page.contains("<script>"));
    }
}
