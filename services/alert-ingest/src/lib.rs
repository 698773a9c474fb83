//! Partner security alerts: polled, received by webhook, deduplicated, persisted, resolved.
