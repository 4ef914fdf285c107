use super::*;

fn config(extra: &str) -> Config {
    Config::from_yaml(
        &format!("proxy: {{ listen: 127.0.0.1:0{extra} }}\naudit: {{ enabled: true }}\n"),
        "t.yaml",
    )
    .unwrap()
}

/// What a reload applies is not reported as needing a restart, and
/// what it does not apply is.
#[test]
fn restart_notes_name_exactly_what_a_reload_does_not_apply() {
    let old = config("");
    let off = Config::from_yaml(
        "proxy: { listen: 127.0.0.1:0 }\naudit: { enabled: false }\n",
        "t.yaml",
    )
    .unwrap();
    assert!(startup_bound_changes(&old, &off, false).is_empty());
    let to_file = Config::from_yaml(
        "proxy: { listen: 127.0.0.1:0 }\naudit: { enabled: true, file: /tmp/x.log }\n",
        "t.yaml",
    )
    .unwrap();
    let notes = startup_bound_changes(&old, &to_file, false);
    assert!(
        notes.iter().any(|n| n.starts_with("audit.file changed")),
        "{notes:?}"
    );
    // Only what changed is named.
    let slower = config(", client_header_timeout: 90s");
    let notes = startup_bound_changes(&old, &slower, false);
    assert_eq!(
        notes,
        ["proxy.client_header_timeout changed; it applies after a restart"]
    );
    let two = config(", send_timeout: 2m, upstream_max_idle: 3, upstream_idle_timeout: 20s");
    let notes = startup_bound_changes(&old, &two, false);
    assert_eq!(
        notes,
        [
            "proxy.send_timeout changed; it applies after a restart",
            "proxy.upstream_max_idle, proxy.upstream_idle_timeout changed; they apply after a restart (connection pools are made with them)"
        ]
    );
}

/// The two lists of startup-bound settings agree: after the running
/// values are kept, nothing is left to report, whatever changed.
#[test]
fn keeping_the_running_values_leaves_nothing_to_restart_for() {
    let old = config("");
    let new = Config::from_yaml(
        "proxy: { listen: 127.0.0.1:1, drain_timeout: 3s, max_header_bytes: 16KiB, \
         client_header_timeout: 90s, client_idle_timeout: 2m, delayed_close_timeout: 3s, send_timeout: 2m, \
         upstream_max_idle: 3, \
         upstream_idle_timeout: 20s, upstream_h2_keepalive: 30s, \
         tls: { cert_file: /tmp/c.pem, key_file: /tmp/k.pem } }\n\
         admin: { listen: 127.0.0.1:2, allow_remote: true }\n\
         audit: { enabled: false, file: /tmp/x.log }\n",
        "t.yaml",
    )
    .unwrap();
    let mut kept = new.clone();
    let before = startup_bound_changes(&old, &kept, false);
    assert_eq!(before.len(), 6, "{before:?}");
    keep_startup_bound(&old, &mut kept, false);
    assert_eq!(
        startup_bound_changes(&old, &kept, false),
        Vec::<String>::new()
    );
    // What a reload applies is not touched.
    assert!(old.audit.enabled && !kept.audit.enabled);
    // Unless the audit destination could not be opened at startup:
    // then audit stays as it started, and turning it on is reported.
    let off = Config::from_yaml(
        "proxy: { listen: 127.0.0.1:0 }\naudit: { enabled: false, file: /tmp/x.log }\n",
        "t.yaml",
    )
    .unwrap();
    let mut on = config("");
    on.audit.file.clone_from(&off.audit.file);
    assert!(startup_bound_changes(&off, &on, false).is_empty());
    let notes = startup_bound_changes(&off, &on, true);
    assert!(
        notes.iter().any(|n| n.starts_with("audit.enabled changed")),
        "{notes:?}"
    );
    keep_startup_bound(&off, &mut on, true);
    assert!(!on.audit.enabled);
    assert_eq!(startup_bound_changes(&off, &on, true), Vec::<String>::new());
}
