//! Raw frames for tests that play a hostile or minimal peer over a plain socket. Included
//! with `#[path]` by the test binaries that send them.

/// A `StreamRequest` frame (type 6) for the stream `id`: the frame's length (8 bytes), its
/// type, and `id` with a 4-byte length.
pub(crate) fn stream_request_frame(id: &[u8]) -> Vec<u8> {
    let mut frame = ((9 + 4 + id.len()) as i64).to_be_bytes().to_vec();
    frame.push(6);
    frame.extend_from_slice(&(id.len() as i32).to_be_bytes());
    frame.extend_from_slice(id);
    frame
}
