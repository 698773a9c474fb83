//! The security matrix: every RPC of every Palisade service, called the way an attacker would
//! call it. The suite lives in `tests/`; this library holds what its tests share: the RPCs as
//! the compiled contracts declare them, and a gRPC client that calls any of them by name with
//! a request built at run time.
//!
//! The RPC list comes from `palisade_contracts::FILE_DESCRIPTOR_SET`, not from a hand-written
//! list, so an RPC added to a `.proto` file appears here without anyone remembering it, and
//! the suite fails until the RPC has its case. Never used outside tests.

use std::time::Duration;

use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
};

/// The descriptors of every Palisade proto, as the contracts crate compiled them.
pub fn pool() -> DescriptorPool {
    DescriptorPool::decode(palisade_contracts::FILE_DESCRIPTOR_SET)
        .expect("the contracts' descriptor set decodes")
}

/// Every RPC of every service in the contracts.
pub fn rpcs(pool: &DescriptorPool) -> Vec<MethodDescriptor> {
    pool.services()
        .flat_map(|s| s.methods().collect::<Vec<_>>())
        .collect()
}

/// `palisade.tokens.v1.TokenBrokerService/GetAccessToken`: the gRPC path without its slash.
pub fn rpc_name(method: &MethodDescriptor) -> String {
    format!("{}/{}", method.parent_service().full_name(), method.name())
}

/// A request for `method` from JSON (proto field names), e.g. `{"partner_tenant_id": "p"}`.
pub fn request(method: &MethodDescriptor, json: serde_json::Value) -> DynamicMessage {
    DynamicMessage::deserialize(method.input(), json)
        .unwrap_or_else(|e| panic!("request for {}: {e}", rpc_name(method)))
}

/// Encodes and decodes `DynamicMessage`s for one method.
#[derive(Clone)]
struct DynamicCodec {
    output: MessageDescriptor,
}

struct DynamicEncoder;

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        prost::Message::encode(&item, dst).map_err(|e| Status::internal(e.to_string()))
    }
}

struct DynamicDecoder {
    output: MessageDescriptor,
}

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        DynamicMessage::decode(self.output.clone(), src)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        DynamicDecoder {
            output: self.output.clone(),
        }
    }
}

/// How long a server stream is read for its first message. A denial arrives at once, as the
/// call's status or the stream's first item; an allowed stream (e.g. `WatchAlerts` with no
/// alerts) may stay silent, which counts as "not denied". A bound on waiting, not a measure.
pub const FIRST_MESSAGE_WAIT: Duration = Duration::from_secs(2);

/// Calls `method` with `request`, presenting `bearer` as `authorization: Bearer …` when given.
/// `Ok` means the server did not refuse: a unary answer, or a stream that opened and did not
/// start with an error.
pub async fn call(
    channel: Channel,
    method: &MethodDescriptor,
    request: DynamicMessage,
    bearer: Option<&str>,
) -> Result<(), Status> {
    assert!(
        !method.is_client_streaming(),
        "{}: client streaming is not supported by the matrix yet",
        rpc_name(method)
    );
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::try_from(format!("/{}", rpc_name(method)))
        .expect("a valid gRPC path");
    let mut req = tonic::Request::new(request);
    if let Some(bearer) = bearer {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {bearer}")
                .parse()
                .expect("an ascii header value"),
        );
    }
    let codec = DynamicCodec {
        output: method.output(),
    };
    if method.is_server_streaming() {
        let mut stream = grpc.server_streaming(req, path, codec).await?.into_inner();
        match tokio::time::timeout(FIRST_MESSAGE_WAIT, stream.message()).await {
            Ok(Err(status)) => Err(status),
            Ok(Ok(_)) | Err(_) => Ok(()),
        }
    } else {
        grpc.unary(req, path, codec).await.map(|_| ())
    }
}
