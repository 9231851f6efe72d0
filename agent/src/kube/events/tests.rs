use logrelay_wire::batch;
use logrelay_wire::control::SeqPos;

use super::*;

const POD: &str = "8b2e5f3a-1c2d-4e5f-8a9b-0c1d2e3f4a5b";

fn event(uid: &str, rv: &str, reason: &str, last: &str) -> Value {
    serde_json::json!({
        "metadata": {"uid": uid, "resourceVersion": rv, "namespace": "ns"},
        "involvedObject": {"kind": "Pod", "namespace": "ns", "name": "p", "uid": POD},
        "reason": reason, "type": "Warning", "message": "0/3 nodes are available",
        "count": 2, "firstTimestamp": "2024-01-02T03:04:00Z", "lastTimestamp": last,
        "source": {"component": "default-scheduler"}
    })
}

#[test]
fn an_event_becomes_one_json_line() {
    let r = record(
        &event("e1", "7", "FailedScheduling", "2024-01-02T03:04:05Z"),
        POD,
    )
    .unwrap();
    assert_eq!(r.key, ("e1".to_owned(), "7".to_owned()));
    assert_eq!(r.timestamp_ns, 1_704_164_645_000_000_000);
    assert_eq!(r.line.last(), Some(&b'\n'));
    let v: Value = serde_json::from_slice(&r.line).unwrap();
    assert_eq!(v["reason"], "FailedScheduling");
    assert_eq!(v["type"], "Warning");
    assert_eq!(v["count"], 2);
    assert_eq!(v["source"], "default-scheduler");
    assert_eq!(v["involved_object"]["uid"], POD);
    assert_eq!(v["last_timestamp"], "2024-01-02T03:04:05Z");
}

#[test]
fn malformed_or_foreign_events_are_refused_and_long_messages_cut() {
    assert!(matches!(
        record(&serde_json::json!("x"), POD),
        Err(Malformed::Shape(_))
    ));
    let mut other = event("e1", "7", "Pulled", "2024-01-02T03:04:05Z");
    other["involvedObject"]["uid"] = "someone-else".into();
    assert_eq!(record(&other, POD), Err(Malformed::OtherObject));
    let mut long = event("e1", "7", "Pulled", "2024-01-02T03:04:05Z");
    long["message"] = "é".repeat(MAX_MESSAGE_BYTES).into();
    let r = record(&long, POD).unwrap();
    let v: Value = serde_json::from_slice(&r.line).unwrap();
    assert_eq!(v["truncated"], true);
    assert!(v["message"].as_str().unwrap().len() <= MAX_MESSAGE_BYTES);
    assert!(watch_line(b"{not json", POD).is_err());
    assert!(matches!(
        watch_line(br#"{"type":"ERROR","object":{"message":"too old"}}"#, POD),
        Ok(WatchLine::Error(m)) if m == "too old"
    ));
}

#[test]
fn kubernetes_times_parse() {
    assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(
        parse_time("2024-01-02T03:04:05.123456Z"),
        Some(1_704_164_645_123_456_000)
    );
    assert_eq!(
        parse_time("2000-02-29T00:00:00Z"),
        Some(951_782_400_000_000_000)
    );
    assert_eq!(parse_time("2024-01-02 03:04:05Z"), None);
    assert_eq!(parse_time("2024-01-02T03:04:05+01:00"), None);
}

fn rec(uid: &str, rv: &str) -> EventRecord {
    record(&event(uid, rv, "Pulled", "2024-01-02T03:04:05Z"), POD).unwrap()
}

#[test]
fn versions_are_numbered_once_and_shared_by_demands() {
    let log = EventLog::new();
    log.live_started();
    assert_eq!(log.absorb([rec("a", "1"), rec("b", "2")]), 2);
    assert_eq!(
        log.absorb([rec("a", "1"), rec("a", "3")]),
        1,
        "a new version only"
    );
    let spec = Demand {
        tail: Some(2),
        follow: true,
        ..Demand::default()
    };
    let mut cursor = log.start(&spec);
    assert_eq!(cursor, 1);
    let reads = log.read(&mut cursor, None);
    assert_eq!(reads.len(), 2);
    let (batches, lines) = encode(
        reads,
        9,
        log.epoch(),
        false,
        &EventFilter::default(),
        1 << 16,
    );
    assert_eq!((batches.len(), lines), (1, 2));
    let (h, l) = batch::lines(&batches[0]).unwrap();
    assert_eq!(
        (h.stream, h.epoch, h.first_seq, h.count),
        (9, log.epoch(), 1, 2)
    );
    assert!(l[0].flags.has(batch::LineFlags::SYSTEM));

    // A resume in this epoch starts where it stopped; a backfill stops at `until`.
    let resume = Demand {
        since_seq: Some(SeqPos {
            epoch: log.epoch(),
            seq: 2,
        }),
        ..Demand::default()
    };
    assert_eq!(log.start(&resume), 2);
    let backfill = Demand {
        until: Some(SeqPos {
            epoch: log.epoch(),
            seq: 2,
        }),
        ..Demand::default()
    };
    let mut c = log.start(&backfill);
    assert_eq!(c, 0);
    assert_eq!(log.read(&mut c, Some(2)).len(), 2);

    // Filters drop lines; a demand behind what is kept gets a gap.
    let only_b = EventFilter::of(&Demand {
        contains: Some("\"a\"".into()),
        ..Demand::default()
    })
    .unwrap();
    let mut c = 0;
    let (batches, lines) = encode(log.read(&mut c, None), 9, 1, true, &only_b, 1 << 16);
    assert_eq!((batches.len(), lines), (0, 0));
    let mut behind = 0;
    let big: Vec<EventRecord> = (0..2000).map(|i| rec(&format!("x{i}"), "1")).collect();
    log.absorb(big);
    let reads = log.read(&mut behind, None);
    assert!(
        matches!(reads[0], Read::Gap { from: 0, .. }),
        "{:?}",
        reads[0]
    );
    log.live_ended();
    assert_eq!(
        log.read(&mut 0, None),
        [Read::Gap {
            from: 0,
            count: 2003
        }],
        "dropped with the last live demand"
    );
}

#[test]
fn list_responses_are_read_item_by_item() {
    let body = serde_json::json!({
        "metadata": {"resourceVersion": "42"},
        "items": [event("b", "2", "Started", "2024-01-02T03:05:00Z"), "junk", event("a", "1", "Scheduled", "2024-01-02T03:04:00Z")]
    });
    let (rv, items) = list(&serde_json::to_vec(&body).unwrap(), POD).unwrap();
    assert_eq!(rv, "42");
    assert!(items[0].is_err(), "malformed first");
    assert_eq!(items[1].as_ref().unwrap().key.0, "a", "then in time order");
    assert!(list(b"[]", POD).is_err());
}
