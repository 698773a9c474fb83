//! Generated protobuf contracts for every Palisade service and queue event.
//!
//! The `.proto` files under `proto/` are the source of truth; this crate only compiles them
//! (see `build.rs`). Nothing hand-written lives here except the module tree and the
//! descriptor set used by gRPC reflection.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod palisade {
    pub mod common {
        pub mod v1 {
            tonic::include_proto!("palisade.common.v1");
        }
    }
    pub mod auth {
        pub mod v1 {
            tonic::include_proto!("palisade.auth.v1");
        }
    }
    pub mod tokens {
        pub mod v1 {
            tonic::include_proto!("palisade.tokens.v1");
        }
    }
    pub mod alerts {
        pub mod v1 {
            tonic::include_proto!("palisade.alerts.v1");
        }
    }
    pub mod notify {
        pub mod v1 {
            tonic::include_proto!("palisade.notify.v1");
        }
    }
    pub mod compliance {
        pub mod v1 {
            tonic::include_proto!("palisade.compliance.v1");
        }
    }
    pub mod events {
        pub mod v1 {
            tonic::include_proto!("palisade.events.v1");
        }
    }
}

pub use palisade::{alerts, auth, common, compliance, events, notify, tokens};

mod redact;

/// The encoded `FileDescriptorSet` of every Palisade proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/palisade_descriptor.bin"));

/// Converts between `prost_types::Timestamp` and Unix milliseconds, the storage format.
pub mod time {
    pub use prost_types::Timestamp;

    pub fn from_millis(millis: i64) -> Timestamp {
        Timestamp {
            seconds: millis.div_euclid(1000),
            nanos: (millis.rem_euclid(1000) * 1_000_000) as i32,
        }
    }

    pub fn to_millis(ts: &Timestamp) -> i64 {
        ts.seconds * 1000 + i64::from(ts.nanos) / 1_000_000
    }

    /// An unset timestamp means "no value" in our contracts.
    pub fn opt_from_millis(millis: Option<i64>) -> Option<Timestamp> {
        millis.map(from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn descriptor_set_lists_every_service() {
        let set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let services: Vec<String> = set
            .file
            .iter()
            .flat_map(|f| {
                let pkg = f.package().to_string();
                f.service.iter().map(move |s| format!("{pkg}.{}", s.name()))
            })
            .collect();
        for expected in [
            "palisade.auth.v1.CredentialService",
            "palisade.tokens.v1.TokenBrokerService",
            "palisade.alerts.v1.AlertService",
            "palisade.notify.v1.NotificationService",
            "palisade.compliance.v1.ComplianceService",
        ] {
            assert!(services.iter().any(|s| s == expected), "missing {expected}");
        }
    }

    #[test]
    fn every_enum_starts_with_unspecified_zero() {
        let set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        for file in set
            .file
            .iter()
            .filter(|f| f.package().starts_with("palisade."))
        {
            let nested = file.message_type.iter().flat_map(|m| m.enum_type.iter());
            for e in file.enum_type.iter().chain(nested) {
                let first = &e.value[0];
                assert_eq!(first.number(), 0, "{}", e.name());
                assert!(
                    first.name().ends_with("_UNSPECIFIED"),
                    "{} starts with {}",
                    e.name(),
                    first.name()
                );
            }
        }
    }

    #[test]
    fn timestamps_round_trip_through_millis() {
        for millis in [0, 1, -1, 1_700_000_000_123, -1_500] {
            assert_eq!(time::to_millis(&time::from_millis(millis)), millis);
        }
    }
}
