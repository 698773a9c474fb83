//! The compliance service's one error type. Each variant says what went wrong in lowercase
//! words; the gRPC layer maps it to a `tonic::Code` through the platform's code table and never
//! shows an internal cause to a caller.

use palisade_storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum ComplianceError {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// Another replica (or this one) is already evaluating the partner.
    #[error("an evaluation of partner {0} is already running")]
    Busy(String),
    /// This replica's lease on an evaluation was taken over (it stalled past the lease).
    #[error("lease on evaluation {0} lost")]
    LeaseLost(String),
    #[error("storage error")]
    Storage(#[from] StorageError),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("malformed stored record: {0}")]
    Corrupt(String),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ComplianceError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidArgument(msg.into())
    }
}

impl palisade_server::ServiceError for ComplianceError {
    fn code(&self) -> palisade_server::ErrorCode {
        use palisade_server::ErrorCode;
        match self {
            Self::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::FailedPrecondition(_) => ErrorCode::FailedPrecondition,
            Self::Busy(_) => ErrorCode::AlreadyExists,
            Self::LeaseLost(_) => ErrorCode::Unavailable,
            // A database that is down or restarting: the caller may retry.
            Self::Storage(e) if e.is_unavailable() => ErrorCode::Unavailable,
            Self::Database(e) if palisade_storage::is_unavailable(e) => ErrorCode::Unavailable,
            Self::Storage(_) | Self::Database(_) | Self::Corrupt(_) | Self::Internal(_) => {
                ErrorCode::Internal
            }
        }
    }
}

impl From<prost::DecodeError> for ComplianceError {
    fn from(e: prost::DecodeError) -> Self {
        Self::Corrupt(e.to_string())
    }
}

impl From<ComplianceError> for tonic::Status {
    fn from(err: ComplianceError) -> Self {
        palisade_server::into_status(err)
    }
}

pub type Result<T, E = ComplianceError> = std::result::Result<T, E>;
