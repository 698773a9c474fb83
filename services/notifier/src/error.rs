//! The notifier's one error type. Each variant says what went wrong in lowercase words; the
//! gRPC layer maps it to a `tonic::Code` through [`NotifierError::code`] and never shows an
//! internal cause to a caller.

use palisade_storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum NotifierError {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("not found: {0}")]
    NotFound(&'static str),
    #[error("unauthenticated")]
    Unauthenticated,
    #[error("permission denied")]
    PermissionDenied,
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    #[error("outbound address refused: {0}")]
    AddressRefused(String),
    #[error("storage error")]
    Storage(#[from] StorageError),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("secret sealing failed")]
    Crypto(#[from] palisade_crypto::CryptoError),
    #[error("template error")]
    Template(#[from] minijinja::Error),
    #[error("malformed stored record: {0}")]
    Corrupt(String),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl NotifierError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidArgument(msg.into())
    }

    /// The code table: client mistakes keep their words, everything else is opaque.
    pub fn code(&self) -> tonic::Code {
        match self {
            Self::InvalidArgument(_) | Self::AddressRefused(_) => tonic::Code::InvalidArgument,
            Self::NotFound(_) => tonic::Code::NotFound,
            Self::Unauthenticated => tonic::Code::Unauthenticated,
            Self::PermissionDenied => tonic::Code::PermissionDenied,
            Self::FailedPrecondition(_) => tonic::Code::FailedPrecondition,
            Self::Storage(_)
            | Self::Database(_)
            | Self::Crypto(_)
            | Self::Template(_)
            | Self::Corrupt(_)
            | Self::Internal(_) => tonic::Code::Internal,
        }
    }
}

impl From<prost::DecodeError> for NotifierError {
    fn from(e: prost::DecodeError) -> Self {
        Self::Corrupt(e.to_string())
    }
}

impl From<NotifierError> for tonic::Status {
    fn from(err: NotifierError) -> Self {
        let code = err.code();
        if code == tonic::Code::Internal {
            // The cause chain goes to the log, never to the caller.
            let mut chain = String::new();
            let mut source = std::error::Error::source(&err);
            while let Some(s) = source {
                chain.push_str(": ");
                chain.push_str(&s.to_string());
                source = s.source();
            }
            tracing::error!(error = %err, cause = %chain, "internal error");
            return tonic::Status::new(code, "internal error");
        }
        tonic::Status::new(code, err.to_string())
    }
}

pub type Result<T, E = NotifierError> = std::result::Result<T, E>;
