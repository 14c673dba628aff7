//! Frame codec tests: golden bytes captured from Spark 4.3.0 (`frames.md`), every split
//! point of a mixed stream, bad input, the allocation rule, and property tests.

use std::io::Read;

use proptest::collection::vec;
use proptest::prelude::*;

use super::decode::FrameError;
use super::header::{MAX_HEADER_LEN, MessageType};
use super::{FrameDecoder, FrameHeader, Item, Message};
use crate::buffer_pool::{BufferPool, POOLED_MIN};
use crate::error::RpcError;
use crate::sync::Arc;

/// `rpc.message.maxSize`'s default, 128 MiB.
const MAX: u64 = 128 * 1024 * 1024;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Bytes from a hex string.
fn hex(text: &str) -> Vec<u8> {
    assert!(text.len() % 2 == 0, "odd hex length");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// The frames captured from Spark 4.3.0 (`frames.md`) and the messages they carry.
fn golden() -> Vec<(Message, Vec<u8>)> {
    vec![
        (
            Message::RpcRequest {
                request_id: 5161022133627368424,
                body: b"hello".to_vec(),
            },
            hex("000000000000001a03479fa24948c9b3e80000000568656c6c6f"),
        ),
        (
            Message::RpcResponse {
                request_id: 5161022133627368424,
                body: b"hello".to_vec(),
            },
            hex("000000000000001a04479fa24948c9b3e80000000568656c6c6f"),
        ),
        (
            Message::OneWay {
                body: b"hello".to_vec(),
            },
            hex("0000000000000012090000000568656c6c6f"),
        ),
        (
            Message::RpcRequest {
                request_id: 7750427277461124647,
                body: b"FAIL:boom".to_vec(),
            },
            hex("000000000000001e036b8f0c8b9a917627000000094641494c3a626f6f6d"),
        ),
        (
            Message::RpcFailure {
                request_id: 7750427277461124647,
                error: "sparkanchor.EchoServer$EchoFailure: boom\n".to_owned(),
            },
            hex(concat!(
                "000000000000003e056b8f0c8b9a91762700000029737061726b616e63686f722e4563686f",
                "536572766572244563686f4661696c7572653a20626f6f6d0a"
            )),
        ),
    ]
}

/// The golden messages plus empty bodies, a 70 KiB body (above the 64 KiB allocation
/// floor) and a failure with non-ASCII text.
fn mixed_messages() -> Vec<Message> {
    let mut messages: Vec<Message> = golden().into_iter().map(|(message, _)| message).collect();
    messages.extend([
        Message::RpcRequest {
            request_id: 0,
            body: Vec::new(),
        },
        Message::OneWay { body: Vec::new() },
        Message::RpcResponse {
            request_id: u64::MAX,
            body: Vec::new(),
        },
        Message::RpcFailure {
            request_id: 1 << 63,
            error: String::new(),
        },
        Message::RpcResponse {
            request_id: 42,
            body: (0..70 * KIB).map(|i| (i * 31 % 251) as u8).collect(),
        },
        Message::RpcFailure {
            request_id: 43,
            error: "échec ☃ 失败: boom\n\tat x".to_owned(),
        },
        Message::OneWay {
            body: b"tail".to_vec(),
        },
    ]);
    messages
}

/// All messages encoded back to back.
fn encode_all(messages: &[Message]) -> Vec<u8> {
    let mut out = Vec::new();
    for message in messages {
        message.encode_to(&mut out);
    }
    out
}

/// Feeds `pieces` one after another the way the transport does, checking the `decode`
/// contract on every call.
fn decode_pieces<'a>(
    decoder: &mut FrameDecoder,
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<Message>, FrameError> {
    let mut out = Vec::new();
    for piece in pieces {
        let mut input = piece;
        while !input.is_empty() {
            let (n, message) = decoder.decode(input)?;
            assert!(n <= input.len(), "consumed {n} of {} bytes", input.len());
            if message.is_none() {
                assert_eq!(n, input.len(), "`None` only once all input is consumed");
            }
            input = &input[n..];
            out.extend(message);
        }
    }
    Ok(out)
}

/// Decodes a whole stream given as one slice.
fn decode_stream(stream: &[u8]) -> Vec<Message> {
    let mut decoder = FrameDecoder::new(MAX);
    let messages = decode_pieces(&mut decoder, [stream]).expect("valid stream");
    assert!(decoder.is_idle());
    messages
}

/// Decodes `stream` like a connection that reads `chunk` bytes at a time into its read
/// buffer, and, whenever a body of at least `threshold` missing bytes is pending, reads
/// at most `read_chunk` bytes straight into the body's room.
fn decode_via_pending_body(
    stream: &[u8],
    chunk: usize,
    read_chunk: usize,
    threshold: usize,
) -> Vec<Message> {
    decode_via_pending_body_with(FrameDecoder::new(MAX), stream, chunk, read_chunk, threshold)
}

/// As [`decode_via_pending_body`], with `decoder`.
fn decode_via_pending_body_with(
    mut decoder: FrameDecoder,
    stream: &[u8],
    chunk: usize,
    read_chunk: usize,
    threshold: usize,
) -> Vec<Message> {
    let mut out = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        if let Some(room) = decoder.pending_body(threshold) {
            assert!(!room.is_empty());
            let n = room.len().min(read_chunk).min(rest.len());
            let got = rest.read(&mut room[..n]).expect("slice read");
            assert_eq!(got, n);
            out.extend(decoder.body_filled(got).expect("valid stream"));
        } else {
            let end = chunk.min(rest.len());
            let (n, message) = decoder.decode(&rest[..end]).expect("valid stream");
            rest = &rest[n..];
            out.extend(message);
        }
    }
    assert!(decoder.is_idle());
    out
}

/// The (length, capacity) of the buffer a message's body or error text lives in.
fn body_len_and_capacity(message: &Message) -> (usize, usize) {
    match message {
        Message::RpcRequest { body, .. }
        | Message::RpcResponse { body, .. }
        | Message::OneWay { body } => (body.len(), body.capacity()),
        Message::RpcFailure { error, .. } => (error.len(), error.capacity()),
        Message::StreamRequest { stream_id }
        | Message::StreamResponse { stream_id, .. }
        | Message::StreamFailure { stream_id, .. } => (stream_id.len(), stream_id.capacity()),
    }
}

/// Asserts that no body buffer was allocated beyond its length (the cap of the rule).
fn assert_exact_capacities(messages: &[Message]) {
    for message in messages {
        let (len, capacity) = body_len_and_capacity(message);
        assert_eq!(
            len,
            capacity,
            "body of a {}-byte frame over-allocated",
            message.frame_len()
        );
    }
}

/// The 8 length bytes of a frame claiming `len` bytes.
fn length_field(len: i64) -> [u8; 8] {
    len.to_be_bytes()
}

/// Feeds `bytes` to a fresh decoder in one call and returns the error.
fn decode_error(bytes: &[u8]) -> FrameError {
    let mut decoder = FrameDecoder::new(MAX);
    match decoder.decode(bytes) {
        Err(err) => err,
        Ok(result) => panic!("expected an error, got {result:?}"),
    }
}

// ---- 1. golden bytes ----

#[test]
fn golden_messages_encode_to_the_captured_bytes() {
    for (message, bytes) in golden() {
        let mut encoded = Vec::new();
        message.encode_to(&mut encoded);
        assert_eq!(encoded, bytes, "{message:?}");
        assert_eq!(message.frame_len(), bytes.len() as u64);

        let (header, tail) = message.clone().into_parts();
        assert_eq!(header.frame_len(), bytes.len() as u64);
        assert!(header.as_bytes().len() <= MAX_HEADER_LEN);
        assert_eq!([header.as_bytes(), &tail].concat(), bytes, "{message:?}");
    }
}

#[test]
fn golden_bytes_decode_to_their_messages() {
    for (message, bytes) in golden() {
        let mut decoder = FrameDecoder::new(MAX);
        let (n, decoded) = decoder.decode(&bytes).expect("golden frame");
        assert_eq!(n, bytes.len());
        assert_eq!(decoded, Some(message));
        assert!(decoder.is_idle());
    }
}

#[test]
fn header_constructors_lay_out_spark_headers() {
    let header = FrameHeader::rpc_request(5161022133627368424, 5);
    assert_eq!(
        header.as_bytes(),
        &hex("000000000000001a03479fa24948c9b3e800000005")[..]
    );
    let header = FrameHeader::rpc_response(5161022133627368424, 5);
    assert_eq!(
        header.as_bytes(),
        &hex("000000000000001a04479fa24948c9b3e800000005")[..]
    );
    let header = FrameHeader::rpc_failure(7750427277461124647, 41);
    assert_eq!(
        header.as_bytes(),
        &hex("000000000000003e056b8f0c8b9a91762700000029")[..]
    );
    assert_eq!(header.frame_len(), 62);
    let header = FrameHeader::one_way(5);
    assert_eq!(header.as_bytes(), &hex("00000000000000120900000005")[..]);
    assert_eq!(header.frame_len(), 18);
    // Ids above i64::MAX travel as negative i64s, bit for bit.
    let header = FrameHeader::rpc_request(u64::MAX, 0);
    assert_eq!(
        header.as_bytes(),
        &hex("000000000000001503ffffffffffffffff00000000")[..]
    );
}

#[test]
fn empty_bodies_make_header_only_frames() {
    let cases = [
        (
            Message::RpcRequest {
                request_id: 1,
                body: Vec::new(),
            },
            21,
        ),
        (
            Message::RpcResponse {
                request_id: 1,
                body: Vec::new(),
            },
            21,
        ),
        (
            Message::RpcFailure {
                request_id: 1,
                error: String::new(),
            },
            21,
        ),
        (Message::OneWay { body: Vec::new() }, 13),
    ];
    for (message, len) in cases {
        let mut bytes = Vec::new();
        message.encode_to(&mut bytes);
        assert_eq!(bytes.len(), len);
        assert_eq!(message.frame_len(), len as u64);
        assert_eq!(decode_stream(&bytes), [message]);
    }
}

#[test]
fn one_message_per_call() {
    let stream: Vec<u8> = golden().into_iter().flat_map(|(_, bytes)| bytes).collect();
    let mut decoder = FrameDecoder::new(MAX);
    let (n, message) = decoder.decode(&stream).expect("golden stream");
    assert_eq!(n, 26);
    assert_eq!(message, Some(golden()[0].0.clone()));
    let (n, message) = decoder.decode(&stream[26..]).expect("golden stream");
    assert_eq!(n, 26);
    assert_eq!(message, Some(golden()[1].0.clone()));
}

// ---- 2. every split point ----

#[test]
fn every_split_point_yields_the_same_messages() {
    let messages = mixed_messages();
    let stream = encode_all(&messages);
    for at in 0..=stream.len() {
        let mut decoder = FrameDecoder::new(MAX);
        let decoded = decode_pieces(&mut decoder, [&stream[..at], &stream[at..]])
            .unwrap_or_else(|err| panic!("split at {at}: {err}"));
        assert!(decoded == messages, "split at {at}");
        assert_exact_capacities(&decoded);
        assert!(decoder.is_idle());
    }
}

#[test]
fn one_byte_at_a_time_yields_the_same_messages() {
    let messages = mixed_messages();
    let stream = encode_all(&messages);
    let mut decoder = FrameDecoder::new(MAX);
    let mut decoded = Vec::new();
    for (i, byte) in stream.iter().enumerate() {
        let (n, message) = decoder
            .decode(std::slice::from_ref(byte))
            .expect("valid stream");
        assert_eq!(n, 1);
        decoded.extend(message);
        let at_boundary = decoded.iter().map(Message::frame_len).sum::<u64>() == i as u64 + 1;
        assert_eq!(decoder.is_idle(), at_boundary, "after byte {i}");
    }
    assert_eq!(decoded, messages);
    assert_exact_capacities(&decoded);
}

#[test]
fn pending_body_reads_yield_the_same_messages() {
    let messages = mixed_messages();
    let stream = encode_all(&messages);
    let cases = [
        // (chunk into the read buffer, chunk read straight into the body, threshold)
        (1, 1, 0),
        (1, 3, 1),
        (7, 5, 0),
        (21, 1000, 4),
        (26, 4 * KIB, 100),
        (100, 64 * KIB, 0),
        (4 * KIB, 5000, 1024),
        (64 * KIB, 100 * KIB, 0),
        (usize::MAX, 1, 0),
        (usize::MAX, usize::MAX, 0),
        (3, usize::MAX, 8 * KIB),
    ];
    for (chunk, read_chunk, threshold) in cases {
        let decoded = decode_via_pending_body(&stream, chunk, read_chunk, threshold);
        assert!(
            decoded == messages,
            "chunk {chunk}, read {read_chunk}, threshold {threshold}"
        );
        assert_exact_capacities(&decoded);
    }
}

// ---- 3. bad input ----

#[test]
fn one_tib_claim_is_refused_at_its_type_byte_and_a_request_after_its_id() {
    let claim = length_field(1 << 40);
    let mut decoder = FrameDecoder::new(MAX);
    assert_eq!(decoder.decode(&claim[..7]), Ok((7, None)));
    assert!(!decoder.is_idle());
    // The length is over the maximum: only the type byte is read next.
    assert_eq!(decoder.decode(&claim[7..]), Ok((1, None)));
    let err = decoder.decode(&[9]).expect_err("1 TiB frame");
    assert_eq!(
        err,
        FrameError::TooLarge {
            size: 1 << 40,
            max: MAX
        }
    );
    assert_eq!(decoder.buffered_capacity(), 0);
    // The rest of the claimed frame is never looked at; the error sticks.
    assert_eq!(decoder.decode(&[3; 100]), Err(err.clone()));
    assert_eq!(decoder.buffered_capacity(), 0);

    // A request: its id is read too (so that it can be answered), nothing else.
    let mut bytes = claim.to_vec();
    bytes.extend_from_slice(&FrameHeader::rpc_request(77, 0).as_bytes()[8..]);
    let request_err = FrameError::RequestTooLarge {
        request_id: 77,
        size: 1 << 40,
        max: MAX,
    };
    assert_eq!(decode_error(&bytes), request_err);
    // Length, type and id are 17 bytes: any split before that waits for the rest.
    for split in 0..17 {
        let mut decoder = FrameDecoder::new(MAX);
        let first = decoder.decode(&bytes[..split]);
        assert_eq!(first, Ok((split, None)), "split {split}");
        let second = decoder.decode(&bytes[split..]);
        assert_eq!(second, Err(request_err.clone()), "split {split}");
        assert_eq!(decoder.buffered_capacity(), 0);
    }
    assert!(matches!(
        RpcError::from(request_err),
        RpcError::FrameTooLarge { size, max } if size == 1 << 40 && max == MAX
    ));
    // An answer (response or failure): its id is read too, to fail that request.
    for header in [
        FrameHeader::rpc_response(78, 0),
        FrameHeader::rpc_failure(78, 0),
    ] {
        let mut bytes = claim.to_vec();
        bytes.extend_from_slice(&header.as_bytes()[8..]);
        let response_err = FrameError::ResponseTooLarge {
            request_id: 78,
            size: 1 << 40,
            max: MAX,
        };
        assert_eq!(decode_error(&bytes), response_err);
        assert!(matches!(
            RpcError::from(response_err),
            RpcError::FrameTooLarge { size, max } if size == 1 << 40 && max == MAX
        ));
    }
    // Where nothing would be answered (before a handshake), refused at the length field.
    let mut decoder = FrameDecoder::new(MAX);
    decoder.set_read_refused_ids(false);
    assert_eq!(decoder.decode(&claim[..7]), Ok((7, None)));
    assert_eq!(decoder.decode(&claim[7..]), Err(err.clone()));
    // An unknown type byte after a length over the maximum: still TooLarge.
    let mut bytes = claim.to_vec();
    bytes.push(200);
    assert_eq!(decode_error(&bytes), err);
}

#[test]
fn frame_of_exactly_the_maximum_is_accepted_one_more_is_not() {
    let max = 100;
    let message = Message::OneWay {
        body: vec![7; max - 13],
    };
    let mut bytes = Vec::new();
    message.encode_to(&mut bytes);
    let mut decoder = FrameDecoder::new(max as u64);
    assert_eq!(decoder.decode(&bytes), Ok((max, Some(message))));

    let mut decoder = FrameDecoder::new(max as u64 - 1);
    assert_eq!(
        decoder.decode(&bytes),
        Err(FrameError::TooLarge {
            size: max as u64,
            max: max as u64 - 1
        })
    );
}

#[test]
fn negative_lengths_are_bad() {
    for len in [-1, -26, i64::MIN] {
        assert_eq!(decode_error(&length_field(len)), FrameError::BadLength(len));
    }
}

#[test]
fn lengths_below_nine_are_bad() {
    for len in 0..9 {
        assert_eq!(
            decode_error(&length_field(len)),
            FrameError::BadLength(len),
            "length {len}"
        );
    }
}

#[test]
fn lengths_shorter_than_the_type_header_are_bad() {
    for (message_type, header_len) in [(3u8, 21), (4, 21), (5, 21), (9, 13)] {
        for len in 9..header_len {
            let mut bytes = length_field(len).to_vec();
            bytes.push(message_type);
            assert_eq!(
                decode_error(&bytes),
                FrameError::BadLength(len),
                "type {message_type}"
            );
        }
    }
}

#[test]
fn unknown_type_bytes_are_refused() {
    for byte in [13u8, 42, 0x7f, 0xfe, 0xff] {
        let mut bytes = length_field(26).to_vec();
        bytes.push(byte);
        let err = decode_error(&bytes);
        assert_eq!(err, FrameError::UnknownType(byte));
        assert_eq!(err.to_string(), format!("unknown message type {byte}"));
    }
}

#[test]
fn unsupported_spark_types_are_refused_by_name() {
    for byte in [0u8, 1, 2, 10, 11, 12] {
        let mut bytes = length_field(26).to_vec();
        bytes.push(byte);
        let err = decode_error(&bytes);
        assert_eq!(err, FrameError::UnsupportedType(byte));
        let name = MessageType::try_from(byte).expect("Spark type").name();
        assert_eq!(
            err.to_string(),
            format!("unsupported message type {byte} ({name})")
        );
    }
    assert_eq!(
        FrameError::UnsupportedType(0).to_string(),
        "unsupported message type 0 (ChunkFetchRequest)"
    );
}

#[test]
fn message_type_codes_round_trip() {
    for byte in 0..=12u8 {
        let message_type = MessageType::try_from(byte).expect("Spark type");
        assert_eq!(message_type as u8, byte);
        assert_eq!(message_type.header_len().is_some(), matches!(byte, 3..=9));
    }
    assert_eq!(
        MessageType::try_from(12).map(MessageType::name),
        Ok("MergedBlockMetaSuccess")
    );
    for byte in 13..=255u8 {
        assert_eq!(
            MessageType::try_from(byte),
            Err(FrameError::UnknownType(byte))
        );
    }
}

#[test]
fn body_length_that_disagrees_with_frame_length_is_malformed() {
    let golden = golden();
    // RpcRequest "hello" (26 bytes, body length at 17..21) and OneWay "hello" (18 bytes,
    // body length at 9..13) with a wrong body length field.
    for (frame, at) in [(&golden[0].1, 17), (&golden[2].1, 9), (&golden[4].1, 17)] {
        let right = i32::from_be_bytes(frame[at..at + 4].try_into().expect("4 bytes"));
        for wrong in [right - 1, right + 1, 0, -1, i32::MIN, i32::MAX] {
            let mut bytes = frame.clone();
            bytes[at..at + 4].copy_from_slice(&wrong.to_be_bytes());
            let err = decode_error(&bytes);
            assert!(matches!(err, FrameError::Malformed(_)), "{err:?}");
            let text = err.to_string();
            assert!(
                text.contains(&wrong.to_string()) && text.contains("frame"),
                "{text}"
            );
        }
    }
}

#[test]
fn invalid_utf8_failure_text_is_decoded_lossily() {
    let text = b"bad \xff\xfe text \xe2\x82";
    let mut bytes = FrameHeader::rpc_failure(9, text.len()).as_bytes().to_vec();
    bytes.extend_from_slice(text);
    let expected = Message::RpcFailure {
        request_id: 9,
        error: String::from_utf8_lossy(text).into_owned(),
    };
    assert_eq!(decode_stream(&bytes), std::slice::from_ref(&expected));
    // Also when the text arrives in pieces, and the connection goes on afterwards.
    bytes.extend_from_slice(&golden()[2].1);
    let mut decoder = FrameDecoder::new(MAX);
    let decoded = decode_pieces(&mut decoder, bytes.chunks(5)).expect("lossy, not fatal");
    assert_eq!(decoded, [expected, golden()[2].0.clone()]);
}

#[test]
fn errors_stick() {
    let mut decoder = FrameDecoder::new(MAX);
    let err = decoder
        .decode(&length_field(-5))
        .expect_err("negative length");
    assert!(!decoder.is_idle());
    assert_eq!(decoder.decode(&golden()[0].1), Err(err.clone()));
    assert_eq!(decoder.decode(&[]), Err(err));
    assert!(decoder.pending_body(0).is_none());
    assert_eq!(decoder.body_filled(0), Ok(None));
}

// ---- 4. allocation rule ----

#[test]
fn body_capacity_grows_only_with_received_bytes() {
    let body_len = MAX as usize - 21;
    let header = FrameHeader::rpc_request(1, body_len);
    assert_eq!(header.frame_len(), MAX);

    let mut decoder = FrameDecoder::new(MAX);
    let mut first = header.as_bytes().to_vec();
    first.extend_from_slice(&[1; 100]);
    assert_eq!(decoder.decode(&first), Ok((first.len(), None)));
    assert!(
        decoder.buffered_capacity() <= 64 * KIB,
        "{}",
        decoder.buffered_capacity()
    );

    let more = vec![2; MIB];
    assert_eq!(decoder.decode(&more), Ok((MIB, None)));
    assert!(
        decoder.buffered_capacity() <= 2 * MIB,
        "{}",
        decoder.buffered_capacity()
    );
    assert!(!decoder.is_idle());
}

#[test]
fn body_capacity_rule_holds_at_every_step() {
    let body_len = MAX as usize - 21;
    let header = FrameHeader::rpc_request(1, body_len);
    let rule = |received: usize| (64 * KIB).max(2 * received).min(body_len);

    // Through decode(), in uneven chunks.
    let mut decoder = FrameDecoder::new(MAX);
    assert_eq!(decoder.decode(header.as_bytes()), Ok((21, None)));
    assert_eq!(
        decoder.buffered_capacity(),
        0,
        "nothing allocated before body bytes arrive"
    );
    let mut received = 0;
    for chunk in [1, 100, 4 * KIB, 70 * KIB, 3, 200 * KIB, 1, MIB, 17] {
        assert_eq!(decoder.decode(&vec![0; chunk]), Ok((chunk, None)));
        received += chunk;
        assert!(
            decoder.buffered_capacity() <= rule(received),
            "after {received} bytes"
        );
    }

    // Through pending_body(), filling whatever it offers.
    let mut decoder = FrameDecoder::new(MAX);
    assert_eq!(decoder.decode(header.as_bytes()), Ok((21, None)));
    let mut received = 0;
    while received < 3 * MIB {
        let want = decoder.pending_body(0).expect("body pending").len();
        assert!(
            decoder.buffered_capacity() <= rule(received),
            "{} after {received}",
            decoder.buffered_capacity()
        );
        assert!(want > 0);
        assert!(received + want <= decoder.buffered_capacity());
        received += want;
        assert_eq!(decoder.body_filled(want), Ok(None));
        assert!(decoder.buffered_capacity() <= rule(received));
    }
}

#[test]
fn whole_body_in_the_input_is_allocated_exactly_once() {
    let message = Message::RpcRequest {
        request_id: 3,
        body: vec![5; 100 * KIB + 3],
    };
    let decoded = decode_stream(&encode_all(std::slice::from_ref(&message)));
    assert_eq!(decoded, [message]);
    assert_exact_capacities(&decoded);
}

#[test]
fn pending_body_only_while_a_body_is_missing_enough_bytes() {
    let mut decoder = FrameDecoder::new(MAX);
    assert!(decoder.pending_body(0).is_none(), "idle");
    let header = FrameHeader::one_way(1000);
    assert_eq!(decoder.decode(&header.as_bytes()[..5]), Ok((5, None)));
    assert!(decoder.pending_body(0).is_none(), "inside a header");
    assert_eq!(decoder.decode(&header.as_bytes()[5..]), Ok((8, None)));
    assert!(
        decoder.pending_body(1001).is_none(),
        "threshold above what is missing"
    );
    let room = decoder.pending_body(1000).expect("1000 bytes missing");
    assert_eq!(room.len(), 1000);
    room[..400].fill(9);
    assert!(decoder.buffered_capacity() <= 1000);
    assert_eq!(decoder.body_filled(400), Ok(None));
    assert!(decoder.pending_body(601).is_none());
    let room = decoder.pending_body(600).expect("600 bytes missing");
    assert_eq!(room.len(), 600);
    room.fill(9);
    assert_eq!(
        decoder.body_filled(600),
        Ok(Some(Message::OneWay {
            body: vec![9; 1000]
        }))
    );
    assert!(decoder.is_idle());
    assert!(decoder.pending_body(0).is_none());
    assert_eq!(decoder.body_filled(0), Ok(None));
}

#[test]
fn debug_output_shows_progress_not_payload() {
    let mut decoder = FrameDecoder::new(MAX);
    let mut bytes = FrameHeader::one_way(10).as_bytes().to_vec();
    bytes.extend_from_slice(b"secret");
    assert_eq!(decoder.decode(&bytes), Ok((bytes.len(), None)));
    let text = format!("{decoder:?}");
    assert!(
        text.contains("body_bytes: 6") && !text.contains("115"),
        "{text}"
    );
}

// ---- 4a. pooled body buffers ----

/// A pool holding one buffer of `capacity` bytes full of stale 0xEE bytes, and the
/// buffer's address.
fn pool_with_stale_buffer(capacity: usize) -> (Arc<BufferPool>, *const u8) {
    let pool = Arc::new(BufferPool::default());
    let stale = vec![0xEE; capacity];
    let address = stale.as_ptr();
    pool.give(stale);
    (pool, address)
}

/// A large message whose body bytes all differ from their neighbours' (no stale byte
/// can hide).
fn large_message(len: usize) -> Message {
    Message::RpcResponse {
        request_id: 9,
        body: (0..len).map(|i| (i % 251) as u8).collect(),
    }
}

#[test]
fn a_large_body_is_read_into_a_pooled_buffer_over_its_old_bytes() {
    let message = large_message(POOLED_MIN + 12_345);
    let mut stream = encode_all(std::slice::from_ref(&message));
    stream.extend(encode_all(&mixed_messages()));
    for (chunk, read_chunk) in [(64 * KIB, 100 * KIB), (7, 4 * KIB), (MIB, 2 * MIB)] {
        // Through the room pending_body offers.
        let (pool, address) = pool_with_stale_buffer(POOLED_MIN + 20_000);
        let mut decoder = FrameDecoder::new(MAX);
        decoder.set_pool(Arc::clone(&pool));
        let decoded = decode_via_pending_body_with(decoder, &stream, chunk, read_chunk, 0);
        assert_eq!(decoded[0], message, "chunk {chunk}");
        assert_eq!(decoded[1..], mixed_messages()[..]);
        let Message::RpcResponse { body, .. } = &decoded[0] else {
            unreachable!()
        };
        assert_eq!(body.as_ptr(), address, "the pooled buffer");
        assert_eq!(pool.reused(), 1);
        // Through decode(), in chunks (appended over the old bytes).
        let (pool, address) = pool_with_stale_buffer(POOLED_MIN + 20_000);
        let mut decoder = FrameDecoder::new(MAX);
        decoder.set_pool(pool);
        let decoded = decode_pieces(&mut decoder, stream.chunks(chunk)).expect("valid");
        assert_eq!(decoded[0], message, "chunk {chunk}");
        let Message::RpcResponse { body, .. } = &decoded[0] else {
            unreachable!()
        };
        assert_eq!(body.as_ptr(), address, "the pooled buffer");
    }
}

#[test]
fn a_pooled_buffer_shorter_than_the_body_is_filled_out() {
    // A buffer of the right capacity whose last user left fewer bytes than this body.
    let pool = Arc::new(BufferPool::default());
    let mut short = Vec::with_capacity(2 * MIB);
    short.resize(MIB, 0xEE);
    pool.give(short);
    let message = large_message(MIB + MIB / 2);
    let stream = encode_all(std::slice::from_ref(&message));
    let mut decoder = FrameDecoder::new(MAX);
    decoder.set_pool(Arc::clone(&pool));
    assert_eq!(
        decode_via_pending_body_with(decoder, &stream, 4 * KIB, 64 * KIB, 0),
        [message]
    );
    assert_eq!(pool.reused(), 1);
}

#[test]
fn small_bodies_and_bodies_without_a_fit_leave_the_pool_alone() {
    let (pool, _) = pool_with_stale_buffer(4 * MIB);
    let mut decoder = FrameDecoder::new(MAX);
    decoder.set_pool(Arc::clone(&pool));
    // Below the pooled minimum, and more than twice as small as the kept buffer.
    let small = large_message(POOLED_MIN - 1);
    let half = large_message(2 * MIB - 1);
    let stream = encode_all(&[small.clone(), half.clone()]);
    assert_eq!(
        decode_pieces(&mut decoder, stream.chunks(64 * KIB)).expect("valid"),
        [small, half]
    );
    assert_eq!(pool.reused(), 0);
    assert_eq!(pool.kept(), (4 * MIB, 1));
    // A claim of a large body with nothing of it arrived: the pooled buffer is lent, and
    // nothing is allocated (the allocation rule bounds a decoder without a fitting one).
    let header = FrameHeader::rpc_request(1, 3 * MIB);
    assert_eq!(decoder.decode(header.as_bytes()), Ok((21, None)));
    assert_eq!(pool.reused(), 1);
    assert_eq!(decoder.buffered_capacity(), 4 * MIB);
    let header = FrameHeader::rpc_request(1, 3 * MIB);
    let mut other = FrameDecoder::new(MAX);
    other.set_pool(Arc::clone(&pool));
    assert_eq!(other.decode(header.as_bytes()), Ok((21, None)));
    assert_eq!(other.buffered_capacity(), 0, "the pool is empty now");
}

// ---- 6. conversion into RpcError ----

#[test]
fn too_large_becomes_frame_too_large() {
    let err = RpcError::from(FrameError::TooLarge {
        size: 1 << 40,
        max: MAX,
    });
    assert!(matches!(err, RpcError::FrameTooLarge { size, max } if size == 1 << 40 && max == MAX));
    let text = err.to_string();
    assert!(
        text.contains(&(1u64 << 40).to_string()) && text.contains(&MAX.to_string()),
        "{text}"
    );
}

#[test]
fn other_errors_become_decode_errors_naming_the_frame() {
    let cases = [
        (FrameError::UnknownType(42), "42"),
        (FrameError::UnsupportedType(7), "7 (StreamResponse)"),
        (FrameError::BadLength(-3), "-3"),
        (
            FrameError::Malformed("body length 4, expected 5".into()),
            "expected 5",
        ),
    ];
    for (frame_err, needle) in cases {
        let err = RpcError::from(frame_err);
        assert!(
            matches!(&err, RpcError::Decode { what, .. } if what == "frame"),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains("frame") && text.contains(needle), "{text}");
    }
}

// ---- 4b. stream frames ----

/// StreamRequest / StreamResponse / StreamFailure laid out as Spark's encoders do.
#[test]
fn stream_frames_have_sparks_layout() {
    let mut out = Vec::new();
    Message::StreamRequest {
        stream_id: "/files/a b".to_owned(),
    }
    .encode_to(&mut out);
    assert_eq!(
        out,
        hex("000000000000001706000000 0a2f66696c65732f612062"
            .replace(' ', "")
            .as_str())
    );
    out.clear();
    Message::StreamResponse {
        stream_id: "/f".to_owned(),
        byte_count: 0x0102,
    }
    .encode_to(&mut out);
    // 8 + 1 + (4 + 2) + 8 = 23: the stream's bytes are not counted.
    assert_eq!(
        out,
        hex("00000000000000170700000002 2f660000000000000102"
            .replace(' ', "")
            .as_str())
    );
    out.clear();
    Message::StreamFailure {
        stream_id: "/f".to_owned(),
        error: "no".to_owned(),
    }
    .encode_to(&mut out);
    assert_eq!(
        out,
        hex("00000000000000150800000002 2f6600000002 6e6f"
            .replace(' ', "")
            .as_str())
    );
}

/// A message and the stream bytes that followed it.
type Decoded = (Option<Message>, Vec<u8>);

/// Frames, a StreamResponse with its raw bytes, an empty stream, a failure, and frames
/// after them: what the decoder yields, messages and stream bytes joined per stream.
fn decode_items(pieces: &[&[u8]]) -> Vec<Decoded> {
    let mut decoder = FrameDecoder::new(MAX);
    let mut out: Vec<Decoded> = Vec::new();
    for piece in pieces {
        let mut input = *piece;
        while !input.is_empty() {
            let (n, item) = decoder.next(input).expect("valid stream");
            assert!(n > 0 && n <= input.len());
            match item {
                Some(Item::Message(message)) => out.push((Some(message), Vec::new())),
                Some(Item::StreamData { data, end }) => {
                    assert!(!data.is_empty());
                    out.last_mut()
                        .expect("a response first")
                        .1
                        .extend_from_slice(data);
                    if end {
                        assert!(decoder.stream_remaining().is_none());
                    }
                }
                None => assert_eq!(n, input.len()),
            }
            input = &input[n..];
        }
    }
    assert!(decoder.is_idle());
    out
}

fn stream_session() -> (Vec<u8>, Vec<Decoded>) {
    let body = pseudo_random_bytes(1000, 3);
    let response = Message::StreamResponse {
        stream_id: "/files/x".to_owned(),
        byte_count: body.len() as u64,
    };
    let empty = Message::StreamResponse {
        stream_id: "/files/empty".to_owned(),
        byte_count: 0,
    };
    let failure = Message::StreamFailure {
        stream_id: "/files/y".to_owned(),
        error: "Stream '/files/y' was not found.".to_owned(),
    };
    let request = Message::StreamRequest {
        stream_id: "/jars/z.jar".to_owned(),
    };
    let rpc = golden()[1].0.clone();
    let mut stream = Vec::new();
    request.encode_to(&mut stream);
    response.encode_to(&mut stream);
    stream.extend_from_slice(&body);
    empty.encode_to(&mut stream);
    // Raw bytes that look like a frame are still the stream's.
    let looks_like_a_frame = hex("000000000000001a04479fa24948c9b3e80000000568656c6c6f");
    let tricky = Message::StreamResponse {
        stream_id: "/t".to_owned(),
        byte_count: looks_like_a_frame.len() as u64,
    };
    tricky.encode_to(&mut stream);
    stream.extend_from_slice(&looks_like_a_frame);
    failure.encode_to(&mut stream);
    rpc.encode_to(&mut stream);
    let expected = vec![
        (Some(request), Vec::new()),
        (Some(response), body),
        (Some(empty), Vec::new()),
        (Some(tricky), looks_like_a_frame),
        (Some(failure), Vec::new()),
        (Some(rpc), Vec::new()),
    ];
    (stream, expected)
}

#[test]
fn every_split_point_of_a_stream_response_yields_the_same_items() {
    let (stream, expected) = stream_session();
    assert_eq!(decode_items(&[&stream]), expected);
    for at in 0..=stream.len() {
        let (a, b) = stream.split_at(at);
        assert_eq!(decode_items(&[a, b]), expected, "split at {at}");
    }
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(decode_items(&bytes), expected, "one byte at a time");
    for (i, j) in [(3, 50), (30, 31), (100, 900), (1040, 1041)] {
        let (a, rest) = stream.split_at(i);
        let (b, c) = rest.split_at(j - i);
        assert_eq!(decode_items(&[a, b, c]), expected, "split at {i} and {j}");
    }
}

#[test]
fn stream_bytes_can_be_read_past_the_decoder() {
    let (stream, expected) = stream_session();
    let mut decoder = FrameDecoder::new(MAX);
    let mut input = &stream[..];
    let mut items = Vec::new();
    while !input.is_empty() {
        if let Some(remaining) = decoder.stream_remaining() {
            // What the transport does: read straight into the consumer's buffer.
            let n = (remaining as usize).min(7).min(input.len());
            let end = decoder.stream_consumed(n);
            let last: &mut Decoded = items.last_mut().unwrap();
            last.1.extend_from_slice(&input[..n]);
            assert_eq!(end, decoder.stream_remaining().is_none());
            input = &input[n..];
            continue;
        }
        let (n, item) = decoder.next(input).unwrap();
        if let Some(Item::Message(message)) = item {
            items.push((Some(message), Vec::new()));
        }
        input = &input[n..];
    }
    assert_eq!(items, expected);
}

#[test]
fn a_huge_stream_claim_allocates_nothing() {
    let mut out = Vec::new();
    Message::StreamResponse {
        stream_id: "/f".to_owned(),
        byte_count: i64::MAX as u64,
    }
    .encode_to(&mut out);
    let mut decoder = FrameDecoder::new(MAX);
    let (n, item) = decoder.next(&out).unwrap();
    assert_eq!(n, out.len());
    assert!(matches!(
        item,
        Some(Item::Message(Message::StreamResponse { .. }))
    ));
    assert_eq!(decoder.stream_remaining(), Some(i64::MAX as u64));
    assert_eq!(decoder.buffered_capacity(), 0);
    let (n, item) = decoder.next(&[1, 2, 3]).unwrap();
    assert_eq!(n, 3);
    assert_eq!(
        item,
        Some(Item::StreamData {
            data: &[1, 2, 3],
            end: false
        })
    );
    assert_eq!(decoder.received(), 3);
    assert!(!decoder.is_idle(), "a hang-up now cuts the stream short");
}

#[test]
fn malformed_stream_frames_are_refused() {
    let frame = |type_byte: u8, fields: &[u8]| {
        let mut out = length_field(9 + fields.len() as i64).to_vec();
        out.push(type_byte);
        out.extend_from_slice(fields);
        out
    };
    let cases: Vec<Vec<u8>> = vec![
        // A negative byte count.
        frame(
            7,
            &[
                0, 0, 0, 1, b'x', 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ],
        ),
        // A string longer than the frame.
        frame(6, &[0, 0, 0, 9, b'x']),
        // A negative string length.
        frame(8, &[0xff, 0xff, 0xff, 0xff]),
        // Bytes after the fields.
        frame(6, &[0, 0, 0, 1, b'x', 0]),
        // No byte count.
        frame(7, &[0, 0, 0, 1, b'x']),
        // A failure without its error text.
        frame(8, &[0, 0, 0, 1, b'x']),
        // Nothing at all.
        frame(6, &[]),
    ];
    for bytes in cases {
        let err = decode_error(&bytes);
        assert!(
            matches!(err, FrameError::Malformed(_)),
            "{bytes:02x?}: {err}"
        );
        for at in 0..bytes.len() {
            let mut decoder = FrameDecoder::new(MAX);
            let first = decoder.decode(&bytes[..at]);
            assert!(first.is_ok(), "an error before the frame is whole");
            assert_eq!(decoder.decode(&bytes[at..]), Err(err.clone()));
        }
    }
    // A stream frame longer than the maximum is refused before anything is allocated.
    let mut decoder = FrameDecoder::new(64);
    let mut claim = length_field(1 << 40).to_vec();
    claim.push(6);
    assert!(matches!(
        decoder.decode(&claim),
        Err(FrameError::TooLarge { .. })
    ));
}

// ---- 5. property tests ----

/// `len` pseudo-random bytes from `seed` (xorshift64*): arbitrary bodies without drawing
/// each byte through proptest, which is slow in debug builds.
fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// Any message, with bodies up to 4 KiB and arbitrary ids and error texts.
fn any_message() -> impl Strategy<Value = Message> {
    let body = (0..=4 * KIB, any::<u64>()).prop_map(|(len, seed)| pseudo_random_bytes(len, seed));
    (0..7u8, any::<u64>(), body, any::<String>()).prop_map(|(kind, request_id, body, error)| {
        match kind {
            0 => Message::RpcRequest { request_id, body },
            1 => Message::RpcResponse { request_id, body },
            2 => Message::RpcFailure { request_id, error },
            3 => Message::StreamRequest { stream_id: error },
            // An empty stream: no raw bytes follow.
            4 => Message::StreamResponse {
                stream_id: error,
                byte_count: 0,
            },
            5 => Message::StreamFailure {
                stream_id: format!("/files/{request_id}"),
                error,
            },
            _ => Message::OneWay { body },
        }
    })
}

/// Cuts `stream` at the given points (taken modulo its length, in order).
fn split_at_points(stream: &[u8], points: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = points.iter().map(|p| p % (stream.len() + 1)).collect();
    cuts.push(0);
    cuts.push(stream.len());
    cuts.sort_unstable();
    cuts.windows(2)
        .map(|w| stream[w[0]..w[1]].to_vec())
        .collect()
}

/// Feeds arbitrary pieces and checks the `decode` contract; errors are fine, panics not.
fn feed_untrusted(pieces: &[Vec<u8>], max: u64) {
    let mut decoder = FrameDecoder::new(max);
    for piece in pieces {
        let mut input = &piece[..];
        while !input.is_empty() {
            // `next`, not `decode`: `decode` yields a piece of a stream's bytes as `None`
            // too, having consumed only that piece.
            match decoder.next(input) {
                Ok((n, item)) => {
                    assert!(n <= input.len());
                    match item {
                        None => assert_eq!(n, input.len()),
                        Some(Item::Message(message)) => assert!(message.frame_len() <= max),
                        Some(Item::StreamData { data, .. }) => assert_eq!(data.len(), n),
                    }
                    input = &input[n..];
                }
                Err(err) => {
                    assert_eq!(decoder.decode(input), Err(err));
                    assert_eq!(decoder.buffered_capacity(), 0);
                    return;
                }
            }
            let capacity = decoder.buffered_capacity();
            assert!(capacity <= max as usize);
        }
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in vec(any::<u8>(), 0..512),
        points in vec(any::<usize>(), 0..8),
        max in 0u64..2048,
    ) {
        feed_untrusted(&split_at_points(&bytes, &points), max);
    }

    #[test]
    fn mutated_frames_never_panic(
        messages in vec(any_message(), 1..4),
        mutations in vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
        points in vec(any::<usize>(), 0..8),
    ) {
        let mut stream = encode_all(&messages);
        for (at, byte) in mutations {
            let at = at % stream.len();
            stream[at] = byte;
        }
        stream.truncate(cut % (stream.len() + 1));
        feed_untrusted(&split_at_points(&stream, &points), 16 * KIB as u64);
    }

    #[test]
    fn decode_of_encode_is_identity_for_any_split(
        messages in vec(any_message(), 0..6),
        points in vec(any::<usize>(), 0..12),
    ) {
        let stream = encode_all(&messages);
        let pieces = split_at_points(&stream, &points);
        let mut decoder = FrameDecoder::new(MAX);
        let decoded = decode_pieces(&mut decoder, pieces.iter().map(Vec::as_slice))
            .expect("valid stream");
        prop_assert!(decoder.is_idle());
        prop_assert_eq!(&decoded, &messages);
        assert_exact_capacities(&decoded);
        for message in messages {
            let (header, tail) = message.clone().into_parts();
            prop_assert_eq!(header.frame_len(), message.frame_len());
            prop_assert_eq!(decode_stream(&[header.as_bytes(), &tail].concat()), [message]);
        }
    }

    #[test]
    fn decode_of_encode_is_identity_through_pending_body(
        messages in vec(any_message(), 0..6),
        chunk in 1usize..600,
        read_chunk in 1usize..5000,
        threshold in 0usize..2000,
    ) {
        let stream = encode_all(&messages);
        let decoded = decode_via_pending_body(&stream, chunk, read_chunk, threshold);
        prop_assert_eq!(&decoded, &messages);
        assert_exact_capacities(&decoded);
    }
}
