//! The queue contract with Redis Streams and in-process implementations, and the outbox relay.
