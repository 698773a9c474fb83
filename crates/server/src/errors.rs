//! One table from service errors to gRPC codes. Internal errors are logged in full, with their
//! cause chain, and reach the caller only as a generic message with a correlation id.

/// The codes a service error may map to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    Unauthenticated,
    FailedPrecondition,
    ResourceExhausted,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn grpc(self) -> tonic::Code {
        match self {
            Self::InvalidArgument => tonic::Code::InvalidArgument,
            Self::NotFound => tonic::Code::NotFound,
            Self::AlreadyExists => tonic::Code::AlreadyExists,
            Self::PermissionDenied => tonic::Code::PermissionDenied,
            Self::Unauthenticated => tonic::Code::Unauthenticated,
            Self::FailedPrecondition => tonic::Code::FailedPrecondition,
            Self::ResourceExhausted => tonic::Code::ResourceExhausted,
            Self::Unavailable => tonic::Code::Unavailable,
            Self::Internal => tonic::Code::Internal,
        }
    }
}

/// Implemented by each service's error enum.
pub trait ServiceError: std::error::Error {
    fn code(&self) -> ErrorCode;
}

/// Converts a service error into the status the caller sees.
pub fn into_status<E: ServiceError>(error: E) -> tonic::Status {
    let code = error.code();
    if code == ErrorCode::Internal {
        let correlation_id = uuid::Uuid::new_v4();
        let mut chain = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            chain.push_str(": ");
            chain.push_str(&cause.to_string());
            source = cause.source();
        }
        tracing::error!(%correlation_id, error = %chain, "internal error");
        return tonic::Status::internal(format!(
            "internal error (correlation id {correlation_id})"
        ));
    }
    tonic::Status::new(code.grpc(), error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum DemoError {
        #[error("alert {0} not found")]
        NotFound(String),
        #[error("database failed")]
        Database(#[source] std::io::Error),
    }

    impl ServiceError for DemoError {
        fn code(&self) -> ErrorCode {
            match self {
                Self::NotFound(_) => ErrorCode::NotFound,
                Self::Database(_) => ErrorCode::Internal,
            }
        }
    }

    #[test]
    fn client_errors_keep_their_message_and_internal_ones_do_not() {
        let status = into_status(DemoError::NotFound("a-1".into()));
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(status.message(), "alert a-1 not found");
        let status = into_status(DemoError::Database(std::io::Error::other(
            "password=hunter2 rejected",
        )));
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(
            status
                .message()
                .starts_with("internal error (correlation id ")
        );
        assert!(!status.message().contains("hunter2"));
    }
}
