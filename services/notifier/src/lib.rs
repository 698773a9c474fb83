//! Fan-out of events to the right people and channels, in their language.
