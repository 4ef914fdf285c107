//! Records longer than usual.

use super::*;

/// Long records (a long path, ids whose every character escapes to two
/// or six bytes) come out whole and exact, at every length around the
/// 768 bytes the writer reserves and the 1 KiB the per-thread buffer
/// starts with.
#[test]
fn long_records_are_exactly_serde_jsons() {
    let check = |path: &str, facts: &RequestFacts| {
        let m = meta(path);
        let r = RequestRecord::from_parts(
            &m,
            facts,
            StatusCode::OK,
            None,
            Duration::from_micros(12_345),
            false,
            now(),
        );
        let expected = serde_json::to_string(&r).unwrap();
        r.with_json(|s| assert_eq!(s, expected, "path of {}", path.len()));
        let mut out = b"before".to_vec();
        r.write_json(&mut out);
        assert_eq!(&out[6..], expected.as_bytes());
        expected.len()
    };
    let mut lens = Vec::new();
    for n in (1..900).chain([4_000, 60_000]) {
        lens.push(check(&format!("/{}", "a".repeat(n)), &injected()));
    }
    // Every record length from under to over 1 KiB was written.
    assert!((700..=1100).all(|l| lens.contains(&l)));
    let mut facts = injected();
    facts.client = Some(Arc::from("\u{1}".repeat(500)));
    facts.route = Some(Arc::from("\"".repeat(700)));
    assert!(check("/x", &facts) > 4_000);
}
