//! The token broker's one error type. Each variant says what went wrong in lowercase words; the
//! gRPC layer maps it to a `tonic::Code` through the platform's code table and never shows an
//! internal cause (which could name a key or a host) to a caller.

use palisade_storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("not found: {0}")]
    NotFound(&'static str),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The token cannot be minted until a person acts (re-consent, fix a policy, renew the
    /// app credential); the message says what to do.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Microsoft (or Key Vault) is throttling or failing; nothing was marked broken.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    #[error("storage error")]
    Storage(#[from] StorageError),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("secret sealing failed")]
    Crypto(#[from] palisade_crypto::CryptoError),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl BrokerError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidArgument(msg.into())
    }

    pub fn code(&self) -> tonic::Code {
        palisade_server::ServiceError::code(self).grpc()
    }
}

impl palisade_server::ServiceError for BrokerError {
    fn code(&self) -> palisade_server::ErrorCode {
        use palisade_server::ErrorCode;
        match self {
            Self::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::PermissionDenied(_) => ErrorCode::PermissionDenied,
            Self::FailedPrecondition(_) => ErrorCode::FailedPrecondition,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            // The key provider failing on its side (after its retries) is worth a retry by
            // the caller, unlike a record that does not decrypt.
            Self::Crypto(palisade_crypto::CryptoError::Unavailable(_)) => ErrorCode::Unavailable,
            // A database that is down or restarting: the caller may retry.
            Self::Storage(e) if e.is_unavailable() => ErrorCode::Unavailable,
            Self::Database(e) if palisade_storage::is_unavailable(e) => ErrorCode::Unavailable,
            Self::Storage(_) | Self::Database(_) | Self::Crypto(_) | Self::Internal(_) => {
                ErrorCode::Internal
            }
        }
    }
}

impl From<BrokerError> for tonic::Status {
    fn from(err: BrokerError) -> Self {
        palisade_server::into_status(err)
    }
}

pub type Result<T, E = BrokerError> = std::result::Result<T, E>;
