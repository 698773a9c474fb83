//! Rendering responses: proto3 canonical JSON for scripts (stable field names, enums by name,
//! timestamps in RFC 3339), or tables for people.

use std::sync::OnceLock;

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, ReflectMessage, Value,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(palisade_contracts::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set compiled into palisade-contracts is valid")
    })
}

/// Converts a generated message to its reflective form through its wire bytes.
pub fn dynamic<M: prost::Message + prost::Name>(message: &M) -> DynamicMessage {
    let descriptor = pool()
        .get_message_by_name(&M::full_name())
        .unwrap_or_else(|| panic!("{} is in the descriptor set", M::full_name()));
    DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .expect("a message re-decodes with its own descriptor")
}

pub fn to_json<M: prost::Message + prost::Name>(message: &M) -> serde_json::Value {
    let options = prost_reflect::SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(false)
        .stringify_64_bit_integers(false);
    dynamic(message)
        .serialize_with_options(serde_json::value::Serializer, &options)
        .unwrap_or(serde_json::Value::Null)
}

/// What a table shows: the rows of a repeated field with chosen columns, or one record.
pub enum View<'a> {
    List {
        field: &'a str,
        columns: &'a [&'a str],
    },
    Record,
}

pub fn print<M: prost::Message + prost::Name>(format: OutputFormat, message: &M, view: View<'_>) {
    match format {
        OutputFormat::Json => println!("{}", to_json(message)),
        OutputFormat::Table => println!("{}", table(message, view)),
    }
}

/// One line per streamed item: JSON lines, or a compact record.
pub fn print_line<M: prost::Message + prost::Name>(
    format: OutputFormat,
    message: &M,
    columns: &[&str],
) {
    match format {
        OutputFormat::Json => println!("{}", to_json(message)),
        OutputFormat::Table => {
            let dm = dynamic(message);
            let cells: Vec<String> = columns
                .iter()
                .map(|c| format!("{}={}", c.rsplit('.').next().unwrap_or(c), cell_at(&dm, c)))
                .collect();
            println!("{}", cells.join("  "));
        }
    }
}

pub fn table<M: prost::Message + prost::Name>(message: &M, view: View<'_>) -> String {
    let dm = dynamic(message);
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    match view {
        View::List { field, columns } => {
            table.set_header(columns.iter().map(|c| c.replace('.', " ")));
            if let Some(Value::List(items)) = dm.get_field_by_name(field).map(|v| v.into_owned()) {
                for item in items {
                    if let Value::Message(row) = item {
                        table.add_row(columns.iter().map(|c| cell_at(&row, c)));
                    }
                }
            }
            let mut out = table.to_string();
            if let Some(Value::String(token)) = dm
                .get_field_by_name("next_page_token")
                .map(|v| v.into_owned())
                && !token.is_empty()
            {
                out.push_str(&format!("\nmore results: --page-token {token}"));
            }
            out
        }
        View::Record => {
            add_record_rows(&mut table, &dm, "");
            table.to_string()
        }
    }
}

/// One row per field; nested messages are expanded one level deep as `parent.child` rows.
fn add_record_rows(table: &mut Table, message: &DynamicMessage, prefix: &str) {
    for field in message.descriptor().fields() {
        let value = message.get_field(&field).into_owned();
        let name = format!("{prefix}{}", field.name());
        match &value {
            Value::Message(inner)
                if prefix.is_empty()
                    && inner.descriptor().full_name() != "google.protobuf.Timestamp" =>
            {
                add_record_rows(table, inner, &format!("{name}."));
            }
            _ => {
                table.add_row(vec![name, render(&value, &field)]);
            }
        }
    }
}

/// The value at a dotted path ("alert.status"), formatted for a cell.
fn cell_at(message: &DynamicMessage, path: &str) -> String {
    let mut current = message.clone();
    let mut segments = path.split('.').peekable();
    while let Some(segment) = segments.next() {
        let Some(field) = current.descriptor().get_field_by_name(segment) else {
            return String::new();
        };
        let value = current.get_field(&field).into_owned();
        if segments.peek().is_none() {
            return render(&value, &field);
        }
        match value {
            Value::Message(inner) => current = inner,
            _ => return String::new(),
        }
    }
    String::new()
}

fn render(value: &Value, field: &FieldDescriptor) -> String {
    match value {
        Value::Bool(b) => b.to_string(),
        Value::I32(n) => n.to_string(),
        Value::I64(n) => n.to_string(),
        Value::U32(n) => n.to_string(),
        Value::U64(n) => n.to_string(),
        Value::F32(n) => format!("{n:.2}"),
        Value::F64(n) => format!("{n:.2}"),
        Value::String(s) => s.clone(),
        Value::Bytes(b) => format!("{} bytes", b.len()),
        Value::EnumNumber(n) => enum_name(field, *n),
        Value::Message(m) => {
            if m.descriptor().full_name() == "google.protobuf.Timestamp" {
                timestamp(m)
            } else {
                let options = prost_reflect::SerializeOptions::new().use_proto_field_name(true);
                m.serialize_with_options(serde_json::value::Serializer, &options)
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            }
        }
        Value::List(items) => items
            .iter()
            .map(|v| render(v, field))
            .collect::<Vec<_>>()
            .join(", "),
        Value::Map(map) => {
            let mut pairs: Vec<String> = map
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        MapKey::String(s) => s.clone(),
                        other => format!("{other:?}"),
                    };
                    format!("{key}={}", render_plain(v))
                })
                .collect();
            pairs.sort();
            pairs.join(", ")
        }
    }
}

fn render_plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => format!("{other:?}"),
    }
}

/// `ALERT_STATUS_ACTIVE` of enum `AlertStatus` → `active`.
fn enum_name(field: &FieldDescriptor, number: i32) -> String {
    let Kind::Enum(descriptor) = field.kind() else {
        return number.to_string();
    };
    let Some(value) = descriptor.get_value(number) else {
        return number.to_string();
    };
    let prefix = screaming_snake(descriptor.name()) + "_";
    value
        .name()
        .strip_prefix(&prefix)
        .unwrap_or(value.name())
        .to_lowercase()
}

fn screaming_snake(camel: &str) -> String {
    let mut out = String::new();
    for (i, ch) in camel.chars().enumerate() {
        if ch.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_uppercase());
    }
    out
}

fn timestamp(m: &DynamicMessage) -> String {
    let seconds = match m.get_field_by_name("seconds").map(|v| v.into_owned()) {
        Some(Value::I64(s)) => s,
        _ => 0,
    };
    if seconds == 0 {
        return String::new();
    }
    chrono::DateTime::from_timestamp(seconds, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_contracts::alerts::v1 as alerts;

    fn sample() -> alerts::ListAlertsResponse {
        alerts::ListAlertsResponse {
            alerts: vec![alerts::Alert {
                alert_id: "a-1".into(),
                status: alerts::AlertStatus::Active as i32,
                severity: palisade_contracts::common::v1::Severity::High as i32,
                alert_type: "CryptoMining".into(),
                last_observed_at: Some(palisade_contracts::time::from_millis(1_700_000_000_000)),
                ..Default::default()
            }],
            next_page_token: "next".into(),
        }
    }

    #[test]
    fn json_uses_proto_field_names_enum_names_and_rfc3339() {
        let json = to_json(&sample());
        let alert = &json["alerts"][0];
        assert_eq!(alert["alert_id"], "a-1");
        assert_eq!(alert["status"], "ALERT_STATUS_ACTIVE");
        assert_eq!(alert["last_observed_at"], "2023-11-14T22:13:20Z");
        assert_eq!(json["next_page_token"], "next");
    }

    #[test]
    fn tables_shorten_enums_and_format_times() {
        let text = table(
            &sample(),
            View::List {
                field: "alerts",
                columns: &["alert_id", "status", "severity", "last_observed_at"],
            },
        );
        assert!(text.contains("active"), "{text}");
        assert!(text.contains("high"), "{text}");
        assert!(text.contains("2023-11-14 22:13:20Z"), "{text}");
        assert!(text.contains("--page-token next"), "{text}");
    }
}
