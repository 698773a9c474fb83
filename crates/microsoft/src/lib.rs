//! HTTP clients for Entra ID, Partner Center, Microsoft Graph and Key Vault, exact to the
//! wire (`shared/reference/microsoft-apis.md`), and the Partner Center webhook verifier.
//!
//! Every client takes its base URL from configuration and nothing else: the same code talks to
//! Microsoft in production and to ms-sim in tests. Parsers are lenient where Microsoft is
//! inconsistent (string booleans and counts, zoneless times, JSON inside strings, either
//! casing) and exact in what they send.

pub mod entra;
pub mod graph_alerts;
pub mod graph_compliance;
pub mod http;
pub mod key_vault;
pub mod partner_center;
pub mod partner_center_reports;
pub mod webhook;
