//! Framing of the QUIC transport: each message is a varint length and the encoded protobuf
//! (`DeviceFrame` up, `GatewayFrame` down). The decoder checks the length against the limit
//! before it buffers anything, and never panics on bytes from the network.

use bytes::{Buf, BytesMut};
use prost::Message;
use std::marker::PhantomData;
use tokio_util::codec::{Decoder, Encoder};

/// What a frame stream can fail with.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes is over the {max} byte limit")]
    TooLarge { len: u64, max: usize },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
}

/// Longest varint prefix (a u64).
const MAX_VARINT: usize = 10;

/// Decodes `In` frames and encodes `Out` frames.
#[derive(Debug)]
pub struct FrameCodec<In, Out> {
    max: usize,
    _types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> FrameCodec<In, Out> {
    /// A codec refusing frames over `max` bytes (both directions).
    pub fn new(max: usize) -> Self {
        FrameCodec {
            max,
            _types: PhantomData,
        }
    }
}

/// The length prefix at the start of `src`: `Ok(None)` while incomplete, else (length, prefix
/// bytes).
pub fn frame_len(src: &[u8]) -> Result<Option<(u64, usize)>, FrameError> {
    let mut len = 0u64;
    for (i, b) in src.iter().take(MAX_VARINT).enumerate() {
        let part = u64::from(b & 0x7f);
        if i == MAX_VARINT - 1 && (b & 0x80 != 0 || part > 1) {
            return Err(FrameError::Malformed(
                "length prefix overflows 64 bits".into(),
            ));
        }
        len |= part << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((len, i + 1)));
        }
    }
    if src.len() >= MAX_VARINT {
        return Err(FrameError::Malformed(
            "length prefix overflows 64 bits".into(),
        ));
    }
    Ok(None)
}

impl<In: Message + Default, Out> Decoder for FrameCodec<In, Out> {
    type Item = In;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, FrameError> {
        let Some((len, prefix)) = frame_len(src)? else {
            return Ok(None);
        };
        if len > self.max as u64 {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        let total = prefix + len as usize;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(prefix);
        let body = src.split_to(len as usize).freeze();
        In::decode(body)
            .map(Some)
            .map_err(|e| FrameError::Malformed(e.to_string()))
    }
}

impl<In, Out: Message> Encoder<Out> for FrameCodec<In, Out> {
    type Error = FrameError;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), FrameError> {
        let len = item.encoded_len();
        if len > self.max {
            return Err(FrameError::TooLarge {
                len: len as u64,
                max: self.max,
            });
        }
        item.encode_length_delimited(dst)
            .map_err(|e| FrameError::Malformed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use seam_shared::proto::gateway::{DeviceFrame, GetPolicyRequest, device_frame::Request};

    fn frame(call_id: u64, known: u64) -> DeviceFrame {
        DeviceFrame {
            call_id,
            timeout_ms: 0,
            request: Some(Request::GetPolicy(GetPolicyRequest {
                known_version: known,
            })),
        }
    }

    proptest! {
        #[test]
        fn round_trips_and_every_truncation_waits(call_id: u64, known: u64) {
            let mut codec = FrameCodec::<DeviceFrame, DeviceFrame>::new(1 << 20);
            let mut buf = BytesMut::new();
            codec.encode(frame(call_id, known), &mut buf).unwrap();
            let full = buf.clone();
            for cut in 0..full.len() {
                let mut part = BytesMut::from(&full[..cut]);
                prop_assert!(codec.decode(&mut part).unwrap().is_none());
            }
            prop_assert_eq!(codec.decode(&mut buf).unwrap(), Some(frame(call_id, known)));
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut codec = FrameCodec::<DeviceFrame, DeviceFrame>::new(32);
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
        }
    }

    #[test]
    fn oversized_lengths_are_refused_before_buffering() {
        let mut codec = FrameCodec::<DeviceFrame, DeviceFrame>::new(1000);
        // A prefix announcing 1 GiB with no body.
        let mut buf = BytesMut::from(&[0x80, 0x80, 0x80, 0x80, 0x04][..]);
        let e = codec.decode(&mut buf).unwrap_err();
        assert!(
            matches!(
                e,
                FrameError::TooLarge {
                    len: 1_073_741_824,
                    max: 1000
                }
            ),
            "{e}"
        );
        assert!(buf.capacity() < 1 << 20);
        let mut over = BytesMut::from(&[0xff; 11][..]);
        assert!(matches!(
            codec.decode(&mut over),
            Err(FrameError::Malformed(_))
        ));
        let mut bad = BytesMut::from(&[0x02, 0xff, 0xff][..]);
        assert!(matches!(
            codec.decode(&mut bad),
            Err(FrameError::Malformed(_))
        ));
    }
}
