//! Layered, validated configuration, the same for every service:
//!
//! 1. compiled-in defaults (`T::default()`);
//! 2. an optional TOML file (`--config FILE` or `PALISADE_CONFIG`);
//! 3. environment variables `PALISADE_<SERVICE>__<SECTION>__<KEY>`, with `__` separating
//!    levels, e.g. `PALISADE_TOKEN_BROKER__SERVER__GRPC_LISTEN=0.0.0.0:50051`;
//! 4. the standard variables every platform sets: `DATABASE_URL` → `database.url`,
//!    `REDIS_URL` → `queue.redis_url` (and `queue.backend = "redis"`),
//!    `OTEL_EXPORTER_OTLP_ENDPOINT` → `telemetry.otlp_endpoint`,
//!    `OTEL_SERVICE_NAME` → `telemetry.service_name`.
//!
//! A value that does not parse stops start-up with a message naming the key and the reason.
//! This crate never prints values: secrets live in `secrecy::SecretString` fields.

use std::path::{Path, PathBuf};

use figment::{
    Figment,
    providers::{Format, Serialized, Toml},
};
use serde::{Serialize, de::DeserializeOwned};

pub use secrecy::{ExposeSecret, SecretString};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config key {key}: {reason}")]
    Invalid { key: String, reason: String },
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

impl ConfigError {
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Checks that go beyond parsing, run after loading. Report the first problem with its key.
pub trait Validate {
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// `token-broker` → `PALISADE_TOKEN_BROKER__`.
pub fn env_prefix(service: &str) -> String {
    format!(
        "PALISADE_{}__",
        service.to_ascii_uppercase().replace(['-', '.'], "_")
    )
}

/// Loads `T` for `service` from defaults, the file (explicit, else `PALISADE_CONFIG`) and the
/// process environment.
pub fn load<T>(service: &str, file: Option<&Path>) -> Result<T, ConfigError>
where
    T: Default + Serialize + DeserializeOwned + Validate,
{
    let env_file = std::env::var_os("PALISADE_CONFIG").map(PathBuf::from);
    let file = file.map(Path::to_path_buf).or(env_file);
    load_from(service, file.as_deref(), std::env::vars())
}

/// [`load`] with an explicit environment, for tests and for `palisade dev`.
pub fn load_from<T>(
    service: &str,
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError>
where
    T: Default + Serialize + DeserializeOwned + Validate,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::File {
                path: path.to_path_buf(),
                reason: "no such file".into(),
            });
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    let prefix = env_prefix(service);
    let defaults = Figment::from(Serialized::defaults(T::default()));
    let mut standard = Vec::new();
    for (key, value) in env {
        if let Some(rest) = key.strip_prefix(&prefix) {
            let path = rest.to_ascii_lowercase().replace("__", ".");
            let typed = value_of(&value, defaults.find_value(&path).ok().as_ref());
            figment = figment.merge(Serialized::global(&path, typed));
        } else if !value.is_empty() {
            standard.push((key, value));
        }
    }
    // The standard variables win over everything: they are what platforms inject.
    for (var, path) in [
        ("DATABASE_URL", "database.url"),
        ("REDIS_URL", "queue.redis_url"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "telemetry.otlp_endpoint"),
        ("OTEL_SERVICE_NAME", "telemetry.service_name"),
    ] {
        if let Some((_, value)) = standard.iter().find(|(k, _)| k == var) {
            figment = figment.merge(Serialized::global(path, value.clone()));
            if var == "REDIS_URL" {
                figment = figment.merge(Serialized::global("queue.backend", "redis"));
            }
        }
    }
    let settings: T = figment.extract().map_err(humanize)?;
    settings.validate()?;
    Ok(settings)
}

/// Environment values are text. They are read as the type the key's default has, so that
/// `MAX_CONNECTIONS=20` fills a number, `PASSWORD=123456` still fills a string, and a list
/// takes `a,b,c` (or a JSON array of strings).
fn value_of(raw: &str, default: Option<&figment::value::Value>) -> figment::value::Value {
    use figment::value::Value;
    match default {
        Some(Value::Num(..)) => raw
            .parse::<u64>()
            .map(Value::from)
            .or_else(|_| raw.parse::<i64>().map(Value::from))
            .or_else(|_| raw.parse::<f64>().map(Value::from))
            .unwrap_or_else(|_| Value::from(raw.to_owned())),
        Some(Value::Bool(..)) => raw
            .parse::<bool>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::from(raw.to_owned())),
        Some(Value::Array(..)) => {
            let items: Vec<String> = if raw.trim_start().starts_with('[') {
                serde_json::from_str(raw).unwrap_or_else(|_| vec![raw.to_owned()])
            } else {
                raw.split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(str::to_owned)
                    .collect()
            };
            Value::from(items)
        }
        _ => Value::from(raw.to_owned()),
    }
}

fn humanize(error: figment::Error) -> ConfigError {
    let key = if error.path.is_empty() {
        "(root)".to_owned()
    } else {
        error.path.join(".")
    };
    let reason = match &error.kind {
        figment::error::Kind::UnknownField(field, _) => format!("unknown key {field:?}"),
        figment::error::Kind::InvalidType(actual, expected) => {
            format!("expected {expected}, found {actual}")
        }
        figment::error::Kind::InvalidValue(actual, expected) => {
            format!("invalid value {actual}: expected {expected}")
        }
        figment::error::Kind::MissingField(field) => format!("missing key {field:?}"),
        other => other.to_string(),
    };
    ConfigError::Invalid { key, reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::time::Duration;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Server {
        grpc_listen: std::net::SocketAddr,
        #[serde(with = "humantime_serde")]
        shutdown_deadline: Duration,
    }
    impl Default for Server {
        fn default() -> Self {
            Self {
                grpc_listen: "127.0.0.1:50051".parse().unwrap(),
                shutdown_deadline: Duration::from_secs(20),
            }
        }
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Database {
        url: String,
        max_connections: u32,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Queue {
        backend: String,
        redis_url: String,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Settings {
        server: Server,
        database: Database,
        queue: Queue,
    }

    impl Validate for Settings {
        fn validate(&self) -> Result<(), ConfigError> {
            if self.database.max_connections > 1000 {
                return Err(ConfigError::invalid(
                    "database.max_connections",
                    "at most 1000",
                ));
            }
            Ok(())
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn defaults_then_file_then_env_then_standard_vars() {
        let dir = std::env::temp_dir().join(format!("palisade-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.toml");
        std::fs::write(
            &file,
            "[server]\ngrpc_listen = \"0.0.0.0:6000\"\nshutdown_deadline = \"5s\"\n[database]\nmax_connections = 7\n",
        )
        .unwrap();
        let settings: Settings = load_from(
            "demo-a",
            Some(&file),
            env(&[
                ("PALISADE_DEMO_A__DATABASE__MAX_CONNECTIONS", "9"),
                ("PALISADE_OTHER__DATABASE__MAX_CONNECTIONS", "99"),
                ("DATABASE_URL", "postgres://db/x"),
                ("REDIS_URL", "redis://r:6379"),
            ]),
        )
        .unwrap();
        assert_eq!(settings.server.grpc_listen.port(), 6000);
        assert_eq!(settings.server.shutdown_deadline, Duration::from_secs(5));
        // The environment beats the file, and another service's keys are ignored.
        assert_eq!(settings.database.max_connections, 9);
        assert_eq!(settings.database.url, "postgres://db/x");
        assert_eq!(settings.queue.redis_url, "redis://r:6379");
        assert_eq!(settings.queue.backend, "redis");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let dir = std::env::temp_dir().join(format!("palisade-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.toml");
        std::fs::write(&file, "[server]\ngrpc_listen = \"not an address\"\n").unwrap();
        let err = load_from::<Settings>("demo-b", Some(&file), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.grpc_listen"), "{err}");
        std::fs::write(&file, "[server]\ngrpc_lisen = \"0.0.0.0:1\"\n").unwrap();
        let err = load_from::<Settings>("demo-b", Some(&file), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("grpc_lisen"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn validation_runs_after_loading() {
        let dir = std::env::temp_dir().join(format!("palisade-config-val-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.toml");
        std::fs::write(&file, "[database]\nmax_connections = 5000\n").unwrap();
        let err = load_from::<Settings>("demo-c", Some(&file), env(&[]))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "config key database.max_connections: at most 1000");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let err = load_from::<Settings>("demo-d", Some(Path::new("/nonexistent/p.toml")), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/nonexistent/p.toml") && err.contains("no such file"),
            "{err}"
        );
    }

    #[test]
    fn numeric_text_reaches_string_and_number_fields() {
        let settings: Settings = load_from(
            "demo-e",
            None,
            env(&[
                ("PALISADE_DEMO_E__DATABASE__URL", "123456"),
                ("PALISADE_DEMO_E__DATABASE__MAX_CONNECTIONS", "20"),
                ("PALISADE_DEMO_E__SERVER__GRPC_LISTEN", "127.0.0.1:7000"),
            ]),
        )
        .unwrap();
        assert_eq!(settings.database.url, "123456");
        assert_eq!(settings.database.max_connections, 20);
        assert_eq!(settings.server.grpc_listen.port(), 7000);
    }

    #[test]
    fn lists_take_commas_or_json() {
        #[derive(Debug, serde::Serialize, serde::Deserialize, Default)]
        struct Lists {
            hosts: Vec<String>,
            files: Vec<String>,
        }
        impl Validate for Lists {}
        let loaded: Lists = load_from(
            "svc",
            None,
            env(&[
                ("PALISADE_SVC__HOSTS", "ms-sim, 127.0.0.1"),
                ("PALISADE_SVC__FILES", r#"["/etc/a.pem","/etc/b,c.pem"]"#),
            ]),
        )
        .unwrap();
        assert_eq!(loaded.hosts, ["ms-sim", "127.0.0.1"]);
        assert_eq!(loaded.files, ["/etc/a.pem", "/etc/b,c.pem"]);
    }

    #[test]
    fn prefixes_follow_the_service_name() {
        assert_eq!(env_prefix("token-broker"), "PALISADE_TOKEN_BROKER__");
        assert_eq!(env_prefix("alert-ingest"), "PALISADE_ALERT_INGEST__");
    }
}
