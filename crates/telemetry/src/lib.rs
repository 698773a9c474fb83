//! Logs, traces and metrics set up once per process, with W3C context propagation.
