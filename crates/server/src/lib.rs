//! The gRPC and admin-HTTP scaffold every service runs in: tower stack, health, reflection, graceful shutdown.
