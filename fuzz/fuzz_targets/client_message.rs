//! The native protocol's request parser must never panic, whatever arrives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::protocol::ClientMessage;

fuzz_target!(|data: &[u8]| {
    let _ = ClientMessage::parse(data, 32);
});
