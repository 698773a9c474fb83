//! Continuous evaluation of the partner security requirements.
