//! Generated protobuf contracts for every Palisade service and queue event.
