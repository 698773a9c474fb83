//! Layered, validated configuration: compiled defaults, optional file, then environment.
