//! Fan-out of events to the right people and channels, in their language.
//!
//! The notifier consumes alert, token, compliance and relationship events, decides who must
//! hear about each (routing), folds repeats into groups (Alertmanager's three timers over a
//! persisted notification log), escalates what nobody acknowledges, and delivers by email,
//! Standard Webhooks, Teams, Slack, SMS and PagerDuty with retries, dead letters and a log of
//! every attempt. It must never lose a notification and never spam one.

pub mod channels;
pub mod dispatch;
pub mod engine;
pub mod error;
pub mod events;
pub mod links;
pub mod routing;
pub mod store;
pub mod templates;
pub mod validate;

pub use engine::{EngineSettings, Notifier};
pub use error::NotifierError;
