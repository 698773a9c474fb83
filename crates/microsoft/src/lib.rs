//! HTTP clients for Entra ID, Partner Center and Microsoft Graph, exact to the wire.
//!
//! Not written yet: issues #4, #5 and #7 bring the clients they need (token endpoint, Partner
//! Center, Graph, webhook verification), tested against ms-sim. The crate stays in the layout
//! so the services' dependency graph is visible from the start.

pub mod entra;
pub mod key_vault;

pub mod graph_alerts;
pub mod http;
pub mod partner_center;
pub mod webhook;
pub mod graph_compliance;
pub mod partner_center_reports;
