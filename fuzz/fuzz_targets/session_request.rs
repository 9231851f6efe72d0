//! Session ↔ relay JSON messages: a `session::Request` (what a browser sends) is parsed, its
//! selector validated, and it survives a round trip; `session::Event` (what the CLI reads) too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logrelay_wire::session::{Event, Request};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<Request>(data) {
        if let Request::Subscribe { selector, .. } | Request::List { selector, .. } = &req {
            let _ = selector.validate();
        }
        let again = serde_json::to_vec(&req).unwrap();
        assert_eq!(serde_json::from_slice::<Request>(&again).unwrap(), req);
    }
    if let Ok(event) = serde_json::from_slice::<Event>(data) {
        let again = serde_json::to_vec(&event).unwrap();
        assert_eq!(serde_json::from_slice::<Event>(&again).unwrap(), event);
    }
});
