//! The `palisade` operator CLI and the one-process local run.
