//! Test support: throwaway Postgres databases and Redis prefixes, log capture.
