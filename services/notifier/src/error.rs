//! The notifier's one error type. Each variant says what went wrong in lowercase words; the
//! gRPC layer maps it to a `tonic::Code` through the platform's code table
//! (`palisade_server::ServiceError`) and never shows an internal cause to a caller.

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
        palisade_server::ServiceError::code(self).grpc()
    }
}

impl palisade_server::ServiceError for NotifierError {
    fn code(&self) -> palisade_server::ErrorCode {
        use palisade_server::ErrorCode;
        match self {
            Self::InvalidArgument(_) | Self::AddressRefused(_) => ErrorCode::InvalidArgument,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::Unauthenticated => ErrorCode::Unauthenticated,
            Self::PermissionDenied => ErrorCode::PermissionDenied,
            Self::FailedPrecondition(_) => ErrorCode::FailedPrecondition,
            // A database that is down or restarting: the caller may retry.
            Self::Storage(e) if e.is_unavailable() => ErrorCode::Unavailable,
            Self::Database(e) if palisade_storage::is_unavailable(e) => ErrorCode::Unavailable,
            Self::Storage(_)
            | Self::Database(_)
            | Self::Crypto(_)
            | Self::Template(_)
            | Self::Corrupt(_)
            | Self::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<prost::DecodeError> for NotifierError {
    fn from(e: prost::DecodeError) -> Self {
        Self::Corrupt(e.to_string())
    }
}

impl From<NotifierError> for tonic::Status {
    /// Through the platform's table: internal causes are logged with a correlation id and
    /// never shown to the caller.
    fn from(err: NotifierError) -> Self {
        palisade_server::into_status(err)
    }
}

pub type Result<T, E = NotifierError> = std::result::Result<T, E>;
