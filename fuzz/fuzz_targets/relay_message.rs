//! Every relay-protocol decoder fed arbitrary bytes: none may panic, and whatever
//! decodes must re-encode to a message that decodes to the same value.
#![no_main]

use ferry_proto::{
    decode_frame_header, decode_message, encode_message, GroupHeader, Message, FRAME_HEADER_LEN,
    MAX_CONTROL_MESSAGE, MAX_FRAME_PAYLOAD,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((version, msg, _))) = decode_message::<Message>(data, MAX_CONTROL_MESSAGE) {
        let again = encode_message(version, &msg).expect("a decoded message re-encodes");
        let (_, back, _) = decode_message::<Message>(&again, MAX_CONTROL_MESSAGE)
            .expect("re-encoded message decodes")
            .expect("re-encoded message is whole");
        assert_eq!(back, msg);
    }
    let _ = decode_message::<GroupHeader>(data, 64);
    if let Some(chunk) = data.first_chunk::<FRAME_HEADER_LEN>() {
        let _ = decode_frame_header(*chunk, MAX_FRAME_PAYLOAD);
    }
});
