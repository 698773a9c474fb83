//! The SAM refresh-token vault and access-token service.
