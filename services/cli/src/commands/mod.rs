//! One module per service; each maps subcommands onto RPCs.

pub mod alerts;
pub mod auth;
pub mod compliance;
pub mod notify;
pub mod tokens;

use crate::{connect::Unreachable, exit};

/// Pagination flags shared by list commands.
#[derive(Debug, Clone, clap::Args)]
pub struct Page {
    /// Items per page (the server caps it).
    #[arg(long, default_value_t = 50)]
    pub page_size: i32,
    /// The `next_page_token` of the previous page.
    #[arg(long, default_value = "")]
    pub page_token: String,
}

/// A person-readable message and an exit code for any failure.
pub fn describe_error(err: &anyhow::Error) -> (u8, String) {
    if let Some(unreachable) = err.downcast_ref::<Unreachable>() {
        return (exit::UNAVAILABLE, unreachable.to_string());
    }
    if let Some(status) = err.downcast_ref::<tonic::Status>() {
        use tonic::Code;
        let message = status.message();
        return match status.code() {
            Code::Unauthenticated => (
                exit::UNAUTHENTICATED,
                format!("{message} (pass --credential or set PALISADE_CREDENTIAL)"),
            ),
            Code::PermissionDenied => (exit::PERMISSION_DENIED, message.to_owned()),
            Code::NotFound => (exit::NOT_FOUND, message.to_owned()),
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
                (exit::INVALID_ARGUMENT, message.to_owned())
            }
            Code::AlreadyExists | Code::Aborted => (exit::CONFLICT, message.to_owned()),
            Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => {
                (exit::UNAVAILABLE, format!("service unavailable: {message}"))
            }
            _ => (exit::FAILURE, format!("{}: {message}", status.code())),
        };
    }
    (exit::FAILURE, format!("{err:#}"))
}

/// Parses "7d", "36h", "90m" or "600s" into seconds.
pub fn parse_duration_secs(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 60d, 12h, 30m"))?;
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit {unit:?}: use s, m, h or d")),
    };
    Ok(value * factor)
}

/// A progress bar on stderr when a person is watching, nothing for scripts.
pub fn progress_bar(format: crate::OutputFormat, message: &'static str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if format == crate::OutputFormat::Table && std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(message);
        bar
    } else {
        indicatif::ProgressBar::hidden()
    }
}

pub fn update_progress(
    bar: &indicatif::ProgressBar,
    progress: Option<&palisade_contracts::common::v1::Progress>,
) {
    if let Some(p) = progress {
        bar.set_length(p.total);
        bar.set_position(p.done);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration_secs("60d"), Ok(60 * 86_400));
        assert_eq!(parse_duration_secs("12h"), Ok(43_200));
        assert_eq!(parse_duration_secs("90"), Ok(90));
        assert!(parse_duration_secs("ten days").is_err());
        assert!(parse_duration_secs("5w").is_err());
    }

    #[test]
    fn statuses_map_to_exit_codes() {
        let denied = anyhow::Error::new(tonic::Status::permission_denied(
            "permission denied for partner p1: the credential lacks alerts:write",
        ));
        assert_eq!(describe_error(&denied).0, exit::PERMISSION_DENIED);
        assert!(describe_error(&denied).1.contains("alerts:write"));
        let unauthenticated =
            anyhow::Error::new(tonic::Status::unauthenticated("missing credential"));
        assert_eq!(describe_error(&unauthenticated).0, exit::UNAUTHENTICATED);
        assert!(
            describe_error(&unauthenticated)
                .1
                .contains("PALISADE_CREDENTIAL")
        );
    }
}
