//! The agent's scrape parser: the first byte picks the flavor (bit 0) and the limits (bit 1,
//! sample limit in the high nibble); the rest is a response body. Parsing must not panic, must
//! respect the limits and group samples under their family; what parses, re-encoded as the
//! agent's metrics records (Prometheus text lines), parses again to the same samples.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logrelay_agent::scrape::encode::{NameFilter, ResultEncoder};
use logrelay_agent::scrape::exposition::{Flavor, Limits, MetricType, parse};
use logrelay_wire::batch::{self, LineFlags};

fuzz_target!(|data: &[u8]| {
    let Some((&control, body)) = data.split_first() else {
        return;
    };
    let flavor = if control & 1 == 0 {
        Flavor::Prometheus004
    } else {
        Flavor::OpenMetrics1
    };
    let limits = if control & 2 == 0 {
        Limits::UNLIMITED
    } else {
        Limits {
            max_samples: usize::from(control >> 4),
            max_label_value_bytes: 16,
            max_labels_per_sample: 4,
        }
    };
    let families = match parse(body, flavor, &limits) {
        Ok(families) => families,
        Err(error) => {
            assert!(error.line() >= 1);
            assert!(!error.to_string().is_empty());
            return;
        }
    };
    let samples: usize = families.iter().map(|f| f.samples.len()).sum();
    assert!(limits.max_samples == 0 || samples <= limits.max_samples);
    for family in &families {
        for sample in &family.samples {
            assert!(sample.name.starts_with(family.name.as_str()));
            assert!(flavor == Flavor::OpenMetrics1 || sample.exemplar.is_none());
        }
    }
    if flavor == Flavor::OpenMetrics1 {
        assert!(body.ends_with(b"# EOF") || body.ends_with(b"# EOF\n"));
    }

    // Re-encode as the agent does, small batches to exercise splitting.
    let mut enc = ResultEncoder::new(1, 1, 0, 0, 1024);
    enc.families(0, &families, &NameFilter::default());
    let (batches, next_seq) = enc.finish();
    let mut text = Vec::new();
    let mut seq = 0;
    for b in &batches {
        let (h, lines) = batch::lines(b).expect("the agent's batches decode");
        assert_eq!(h.first_seq, seq);
        seq = h.end_seq();
        for l in lines {
            if l.flags.has(LineFlags::TRUNCATED) {
                // A record longer than a batch is cut (and flagged): no round trip then.
                return;
            }
            text.extend_from_slice(l.message);
        }
    }
    assert_eq!(seq, next_seq);
    // Types only OpenMetrics knows are not valid 0.0.4; the rest must read back.
    let om_only = families.iter().any(|f| {
        matches!(
            f.kind,
            MetricType::GaugeHistogram | MetricType::Info | MetricType::StateSet
        )
    });
    if om_only {
        return;
    }
    let again = parse(&text, Flavor::Prometheus004, &Limits::UNLIMITED).unwrap_or_else(|e| {
        panic!(
            "re-encoded body does not parse: {e}\n{}",
            String::from_utf8_lossy(&text)
        )
    });
    let flat = |fams: &[logrelay_agent::scrape::exposition::Family]| -> Vec<(String, Vec<(String, String)>, u64)> {
        let mut v: Vec<_> = fams
            .iter()
            .flat_map(|f| &f.samples)
            .map(|s| {
                let bits = if s.value.is_nan() { f64::NAN.to_bits() } else { s.value.to_bits() };
                (s.name.clone(), s.labels.clone(), bits)
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(flat(&families), flat(&again));
});
