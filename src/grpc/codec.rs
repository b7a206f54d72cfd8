//! A request that is not valid protobuf, or not a well-formed gRPC or gRPC-Web message, is the
//! caller's mistake: `INVALID_ARGUMENT` with a short message, not `INTERNAL` with the decoder's
//! account of where it stopped (which names internals and can be long). The codec handles the
//! protobuf; [`malformed_is_invalid_argument`] the framing, which tonic checks before any codec.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::ProstCodec;

/// What the generated service and client use (`codec_path` in `build/main.rs`).
pub struct StrictCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        Self(ProstCodec::default())
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(PhantomData)
    }
}

pub struct StrictDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|_| {
            Status::invalid_argument("the message is not a valid reviews.v1 protobuf message")
        })
    }
}

/// What tonic and tonic-web answer, as `INTERNAL`, to a request that is not a well-formed gRPC
/// or gRPC-Web message, before any handler runs: the start of each `grpc-message`. The service's
/// own `INTERNAL` says "internal error" and is left alone.
const MALFORMED: [&str; 4] = [
    "Unexpected EOF decoding stream",
    "protocol error: received message with compressed-flag",
    "tonic-web: ",
    "failed to decode",
];

/// The message a malformed request gets instead of the decoder's account of it.
pub const MALFORMED_MESSAGE: &str = "the request is not a well-formed gRPC message";

/// Turns a trailers-only `INTERNAL` answer to a malformed request into `INVALID_ARGUMENT` with a
/// short message (the caller's mistake, said without the decoder's internals).
pub fn malformed_is_invalid_argument(headers: &mut http::HeaderMap) {
    if headers.get("grpc-status").is_none_or(|s| s != "13") {
        return;
    }
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .map(|m| {
            percent_encoding::percent_decode_str(m)
                .decode_utf8_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    if MALFORMED.iter().any(|p| message.starts_with(p)) {
        headers.remove("grpc-status-details-bin");
        Status::invalid_argument(MALFORMED_MESSAGE)
            .add_header(headers)
            .expect("a fixed ASCII message");
    }
}
