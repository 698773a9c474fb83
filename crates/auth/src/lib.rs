//! Client credentials bound to partner tenants and scopes, and the check every RPC runs.
