use super::*;
use crate::metrics::tests::sample;

fn text(h: &Histogram, route: &str) -> String {
    let mut out = String::new();
    h.render(&mut out, route);
    out
}

fn bucket(text: &str, route: &str, le: &str) -> Option<f64> {
    sample(
        text,
        &format!("{REQUEST_DURATION}_bucket"),
        &[("route", route), ("le", le)],
    )
}

#[test]
fn a_sample_on_a_bound_counts_in_that_bound_and_every_one_above() {
    let h = Histogram::default();
    for d in [
        Duration::ZERO,
        Duration::from_millis(1),
        Duration::from_millis(1) + Duration::from_nanos(1),
        Duration::from_micros(2500),
        Duration::from_secs(30),
        Duration::from_secs(30) + Duration::from_nanos(1),
        Duration::from_secs(3600),
    ] {
        h.record(d);
    }
    let t = text(&h, "r");
    let want = [
        ("0.001", 2.0),
        ("0.0025", 4.0),
        ("0.005", 4.0),
        ("0.01", 4.0),
        ("0.025", 4.0),
        ("0.05", 4.0),
        ("0.1", 4.0),
        ("0.25", 4.0),
        ("0.5", 4.0),
        ("1", 4.0),
        ("2.5", 4.0),
        ("5", 4.0),
        ("10", 4.0),
        ("30", 5.0),
        ("+Inf", 7.0),
    ];
    assert_eq!(want.len(), BUCKETS.len() + 1);
    for (le, n) in want {
        assert_eq!(bucket(&t, "r", le), Some(n), "le={le}\n{t}");
    }
    let sum = sample(&t, &format!("{REQUEST_DURATION}_sum"), &[("route", "r")]);
    // Whole microseconds: the two nanoseconds are not in the sum.
    assert_eq!(sum, Some(0.001 + 0.001 + 0.0025 + 30.0 + 30.0 + 3600.0));
    let count = sample(&t, &format!("{REQUEST_DURATION}_count"), &[("route", "r")]);
    assert_eq!(count, Some(7.0));
}

#[test]
fn the_text_is_what_the_exporter_writes() {
    // The same samples through metrics-exporter-prometheus, configured as
    // latchkey configured it for this histogram before this module: every
    // bucket and count line is identical, and the sums agree (the
    // exporter adds f64 seconds, this module whole microseconds).
    let samples: Vec<Duration> = [0, 200, 240, 274, 999, 1_000, 1_001, 40_000, 2_500_000]
        .into_iter()
        .map(Duration::from_micros)
        .chain([Duration::from_secs(31)])
        .collect();
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(REQUEST_DURATION.to_owned()),
            BUCKETS,
        )
        .unwrap()
        .build_recorder();
    let exporter = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        let h = metrics::histogram!(REQUEST_DURATION, "route" => "bench");
        for d in &samples {
            h.record(d.as_secs_f64());
        }
    });
    let theirs = exporter.render();
    let h = Histogram::default();
    for d in &samples {
        h.record(*d);
    }
    let ours = text(&h, "bench");
    let series = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| l.starts_with(REQUEST_DURATION) && !l.contains("_sum"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(series(&ours), series(&theirs), "\n{ours}\n{theirs}");
    assert_eq!(series(&ours).len(), BUCKETS.len() + 2);
    let sum = |t: &str| sample(t, &format!("{REQUEST_DURATION}_sum"), &[("route", "bench")]);
    let (a, b) = (sum(&ours).unwrap(), sum(&theirs).unwrap());
    assert!((a - b).abs() < 1e-9, "{a} vs {b}");
}

#[test]
fn the_family_has_one_header_and_escaped_route_labels() {
    let odd = "unit-hist \"odd\\ route\nid";
    for_route(odd).record(Duration::from_millis(2));
    for_route("unit-hist-plain").record(Duration::from_millis(2));
    // The same label is the same series.
    for_route("unit-hist-plain").record(Duration::from_millis(3));
    let mut out = String::from("# TYPE other counter\nother 1\n\n");
    render(&mut out);
    assert!(out.starts_with("# TYPE other counter\nother 1\n\n# HELP "));
    assert!(out.ends_with("\n\n"));
    assert_eq!(out.matches("# HELP latchkey_request_duration").count(), 1);
    assert_eq!(
        out.matches("# TYPE latchkey_request_duration_seconds histogram\n")
            .count(),
        1
    );
    assert!(out.contains(
        "latchkey_request_duration_seconds_count{route=\"unit-hist \\\"odd\\\\ route\\nid\"} 1\n"
    ));
    assert!(out.contains("latchkey_request_duration_seconds_count{route=\"unit-hist-plain\"} 2\n"));
    // Appended to text that does not end in a blank line, it starts one.
    let mut out = String::from("other 1\n");
    render(&mut out);
    assert!(out.starts_with("other 1\n\n# HELP latchkey_request_duration_seconds "));
}

#[test]
fn records_from_many_threads_are_all_counted() {
    let h = Arc::new(Histogram::default());
    let threads: Vec<_> = (0..4_u64)
        .map(|t| {
            let h = h.clone();
            std::thread::spawn(move || {
                for i in 0..10_000_u64 {
                    h.record(Duration::from_micros(t * 1_000 + i % 7));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let t = text(&h, "r");
    let count = sample(&t, &format!("{REQUEST_DURATION}_count"), &[("route", "r")]);
    assert_eq!(count, Some(40_000.0));
    // 1 ms exactly (t = 1, i % 7 = 0) is still in the first bucket.
    let first = 10_000.0 + (0..10_000).filter(|i| i % 7 == 0).count() as f64;
    assert_eq!(bucket(&t, "r", "0.001"), Some(first));
    let sum_us: u64 = (0..4)
        .map(|t| (0..10_000).map(|i| t * 1_000 + i % 7).sum::<u64>())
        .sum();
    let sum = sample(&t, &format!("{REQUEST_DURATION}_sum"), &[("route", "r")]);
    assert_eq!(sum, Some(sum_us as f64 / 1e6));
}
