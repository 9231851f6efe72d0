//! Agent ↔ relay control messages: `control::decode` of `AgentMsg` and `RelayMsg` on any bytes
//! must not panic, and whatever decodes survives an encode/decode round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logrelay_wire::control::{self, AgentMsg, RelayMsg};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = control::decode::<AgentMsg>(data) {
        let again = control::encode(&msg);
        assert_eq!(control::decode::<AgentMsg>(&again).unwrap(), msg);
    }
    if let Ok(msg) = control::decode::<RelayMsg>(data) {
        let again = control::encode(&msg);
        assert_eq!(control::decode::<RelayMsg>(&again).unwrap(), msg);
    }
});
