//! alert-ingest's one error type, mapped to gRPC codes through the platform's table. Internal
//! causes are logged with a correlation id and never shown to a caller.

use palisade_storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("not found: {0}")]
    NotFound(&'static str),
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("storage error")]
    Storage(#[from] StorageError),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("malformed stored record: {0}")]
    Corrupt(String),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl IngestError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidArgument(msg.into())
    }
}

impl palisade_server::ServiceError for IngestError {
    fn code(&self) -> palisade_server::ErrorCode {
        use palisade_server::ErrorCode;
        match self {
            Self::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::FailedPrecondition(_) => ErrorCode::FailedPrecondition,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            // A database that is down or restarting: the caller may retry.
            Self::Storage(e) if e.is_unavailable() => ErrorCode::Unavailable,
            Self::Database(e) if palisade_storage::is_unavailable(e) => ErrorCode::Unavailable,
            Self::Storage(_) | Self::Database(_) | Self::Corrupt(_) | Self::Internal(_) => {
                ErrorCode::Internal
            }
        }
    }
}

impl From<prost::DecodeError> for IngestError {
    fn from(e: prost::DecodeError) -> Self {
        Self::Corrupt(e.to_string())
    }
}

impl From<IngestError> for tonic::Status {
    fn from(err: IngestError) -> Self {
        palisade_server::into_status(err)
    }
}

pub type Result<T, E = IngestError> = std::result::Result<T, E>;
