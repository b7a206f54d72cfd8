//! A request that is not valid protobuf, or not a well-formed gRPC or gRPC-Web message, is the
//! caller's mistake: `INVALID_ARGUMENT` with a short message, not `INTERNAL` with the decoder's
//! account of where it stopped (which names internals and can be long). The codec handles the
//! protobuf; [`rewrite_malformed_status`] the framing, which tonic checks before any codec.

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
const MALFORMED: [&str; 5] = [
    "Unexpected EOF decoding stream",
    // A unary call whose body holds no message at all.
    "Missing request message",
    // A frame flagged compressed without `grpc-encoding`, or whose flag is neither 0 nor 1.
    "protocol error: received message with ",
    "tonic-web: ",
    "failed to decode",
];

/// The message a malformed request gets instead of the decoder's account of it.
pub const MALFORMED_MESSAGE: &str = "the request is not a well-formed gRPC message";

/// What tonic answers, as `OUT_OF_RANGE` with its limit in the text, to a frame longer than the
/// largest message it decodes.
const TOO_LARGE: &str = "Error, decoded message length too large";

/// Rewrites tonic's trailers-only answers to a malformed request, before any handler ran: an
/// `INTERNAL` one becomes `INVALID_ARGUMENT` with a short message (the caller's mistake, said
/// without the decoder's internals), and an `OUT_OF_RANGE` one for a frame over the size limit
/// becomes `RESOURCE_EXHAUSTED` (what gRPC specifies for a message over the receive limit).
pub fn rewrite_malformed_status(headers: &mut http::HeaderMap) {
    let code = match headers.get("grpc-status").map(|s| s.as_bytes()) {
        Some(b"13") => tonic::Code::Internal,
        Some(b"11") => tonic::Code::OutOfRange,
        _ => return,
    };
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .map(|m| {
            percent_encoding::percent_decode_str(m)
                .decode_utf8_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    let replacement = match code {
        tonic::Code::Internal if MALFORMED.iter().any(|p| message.starts_with(p)) => {
            Status::invalid_argument(MALFORMED_MESSAGE)
        }
        tonic::Code::OutOfRange if message.starts_with(TOO_LARGE) => {
            Status::resource_exhausted("the request message is larger than the service accepts")
        }
        _ => return,
    };
    headers.remove("grpc-status-details-bin");
    replacement
        .add_header(headers)
        .expect("a fixed ASCII message");
}
