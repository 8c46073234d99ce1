//! Filter compilation and evaluation must never panic: the input is a filter
//! spec and a message, separated by the first newline.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::filter::{Filter, FilterLimits};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(2, |b| *b == b'\n');
    let (Some(spec), Some(message)) = (parts.next(), parts.next()) else {
        return;
    };
    let Ok(serde_json::Value::Object(spec)) = serde_json::from_slice(spec) else {
        return;
    };
    let Ok(filter) = Filter::compile(&spec, &FilterLimits::default()) else {
        return;
    };
    if let Ok(message) = serde_json::from_slice::<serde_json::Value>(message) {
        let _ = filter.matches(&message);
    }
});
