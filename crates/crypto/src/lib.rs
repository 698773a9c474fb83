//! Envelope encryption with versioned key-encryption keys: local, Azure Key Vault.
