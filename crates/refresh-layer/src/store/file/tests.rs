use super::*;
use std::os::unix::fs::PermissionsExt;

fn state(generation: u64) -> StoredCredential {
    StoredCredential {
        access_token: format!("at-{generation}"),
        expires_at_ms: Some(1_000),
        refresh_token: Some(format!("rt-{generation}")),
        generation,
        obtained_at_ms: 1,
        provider: None,
    }
}

#[tokio::test]
async fn round_trip_with_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path().join("creds")).unwrap();
    assert_eq!(store.load("crm").await.unwrap(), None);
    store.save("crm", &state(3)).await.unwrap();
    assert_eq!(store.load("crm").await.unwrap(), Some(state(3)));
    let mode = std::fs::metadata(store.path_of("crm"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let dir_mode = std::fs::metadata(dir.path().join("creds"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700);
    // No temp files left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path().join("creds"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

/// A save of an older generation than the one stored (a save abandoned
/// while its fsync hung, finishing after another process wrote a newer
/// state) does not land; one of the same generation does (a state
/// renumbered or written again in place).
#[tokio::test]
async fn an_older_generation_never_lands_over_a_newer_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path().join("creds")).unwrap();
    store.save("crm", &state(5)).await.unwrap();
    let e = store.save("crm", &state(3)).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict { stored: 5 }), "{e:?}");
    assert_eq!(store.load("crm").await.unwrap(), Some(state(5)));
    let mut again = state(5);
    again.access_token = "at-5-again".into();
    store.save("crm", &again).await.unwrap();
    assert_eq!(store.load("crm").await.unwrap(), Some(again));
    store.save("crm", &state(6)).await.unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path().join("creds"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "no temp file left behind: {names:?}");
}

#[tokio::test]
async fn corrupt_file_is_reported_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path()).unwrap();
    std::fs::write(
        store.path_of("crm"),
        "{\"access_token\": \"secret-canary\", oops",
    )
    .unwrap();
    let err = store.load("crm").await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }));
    assert!(!err.to_string().contains("secret-canary"));
    // The store answered: the credential's problem, not the store's.
    assert_eq!(store.health(), Ok(()));
    assert!(
        std::fs::read_to_string(store.path_of("crm"))
            .unwrap()
            .contains("oops")
    );
}

/// A holder that never lets go (a stopped process): the wait ends after
/// the lock wait with the store unavailable, and the lock is free again
/// once the holder lets go.
#[tokio::test]
async fn a_lock_held_for_too_long_is_unavailable_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let a = FileStore::new(dir.path()).unwrap();
    let wait = std::time::Duration::from_millis(200);
    let b = FileStore::new(dir.path()).unwrap().with_lock_wait(wait);
    let held = a.lock("crm").await.unwrap();
    let got = tokio::time::timeout(wait * 20, b.lock("crm"))
        .await
        .expect("bounded");
    assert!(
        matches!(&got, Err(StoreError::Unavailable(m)) if m.contains("held by another process for 0.2s")),
        "{got:?}"
    );
    let down = b.health().unwrap_err();
    assert!(down.contains("held by another process"), "{down}");
    drop(held);
    tokio::time::timeout(std::time::Duration::from_secs(5), b.lock("crm"))
        .await
        .expect("free again")
        .unwrap();
    assert_eq!(b.health(), Ok(()));
}

/// Waits for a lock that a hung holder keeps leave no thread blocked in
/// `flock`: asked for again and again (each refresh attempt, each
/// write-back check), they would fill tokio's blocking pool, and every
/// file store of the process (another directory's too) would stop.
#[test]
fn waits_for_a_held_lock_leave_no_thread_behind() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let a = FileStore::new(dir.path()).unwrap();
        let wait = std::time::Duration::from_millis(30);
        let b = FileStore::new(dir.path()).unwrap().with_lock_wait(wait);
        let _held = a.lock("crm").await.unwrap();
        for _ in 0..6 {
            assert!(matches!(
                b.lock("crm").await,
                Err(StoreError::Unavailable(_))
            ));
        }
        let unrelated = FileStore::new(other.path()).unwrap();
        let loaded = tokio::time::timeout(std::time::Duration::from_secs(10), unrelated.load("x"))
            .await
            .expect("the blocking pool is free");
        assert_eq!(loaded, Ok(None));
    });
}

#[tokio::test]
async fn lock_excludes_a_second_holder_until_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let a = FileStore::new(dir.path()).unwrap();
    let b = FileStore::new(dir.path()).unwrap();
    let guard = a.lock("crm").await.unwrap();
    let mut second = Box::pin(b.lock("crm"));
    // The second lock cannot be taken while the first is held.
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(100), &mut second)
            .await
            .is_err()
    );
    drop(guard);
    tokio::time::timeout(std::time::Duration::from_secs(5), second)
        .await
        .unwrap()
        .unwrap();
}

/// Every operation fails while the directory is replaced by a file: the
/// store is down with the failure (a path, never content), for clones
/// too; the first operation that succeeds once it is back clears it.
#[tokio::test]
async fn health_is_the_outcome_of_the_last_operation() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("creds");
    let store = FileStore::new(&root).unwrap();
    let clone = store.clone();
    store.save("crm", &state(1)).await.unwrap();
    assert_eq!(store.health(), Ok(()));

    std::fs::remove_dir_all(&root).unwrap();
    std::fs::write(&root, "not a directory").unwrap();
    assert!(store.lock("crm").await.is_err());
    let down = store.health().unwrap_err();
    assert!(down.contains("lock") && down.contains("crm.lock"), "{down}");
    assert!(down.contains("Not a directory"), "{down}");
    assert_eq!(clone.health(), Err(down));
    assert!(store.save("crm", &state(2)).await.is_err());
    let down = store.health().unwrap_err();
    assert!(down.contains("save"), "{down}");
    assert!(!down.contains("at-2") && !down.contains("rt-2"), "{down}");
    assert!(store.load("crm").await.is_err());
    assert!(store.health().unwrap_err().contains("load"));

    std::fs::remove_file(&root).unwrap();
    std::fs::create_dir(&root).unwrap();
    assert_eq!(store.load("crm").await.unwrap(), None);
    assert_eq!(store.health(), Ok(()));
    assert_eq!(clone.health(), Ok(()));
}

/// The operation started last decides, whatever order they end in.
#[test]
fn an_operation_that_ends_late_does_not_overwrite_a_later_one() {
    let h = Health::default();
    let lock = h.begin();
    let load = h.begin();
    h.end(load, Ok(()));
    h.end(lock, Err("store unavailable: held".into()));
    assert_eq!(h.get(), Ok(()));
    let next = h.begin();
    h.end(next, Err("store save failed: full".into()));
    assert_eq!(h.get(), Err("store save failed: full".into()));
}

/// An existing directory open to group or others (an emptyDir is 0777, a
/// package-made one 0755) is closed to 0700: otherwise any local user
/// could replace the state file or hold the refresh lock.
#[test]
fn an_existing_directory_open_to_others_is_closed_to_0700() {
    let dir = tempfile::tempdir().unwrap();
    for mode in [0o777, 0o755, 0o710] {
        let creds = dir.path().join(format!("creds-{mode:o}"));
        std::fs::create_dir(&creds).unwrap();
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(mode)).unwrap();
        FileStore::new(&creds).unwrap();
        let now = std::fs::metadata(&creds).unwrap().permissions().mode();
        assert_eq!(now & 0o777, 0o700, "was {mode:o}");
    }
    // Stricter than 0700 is left alone.
    let strict = dir.path().join("strict");
    std::fs::create_dir(&strict).unwrap();
    std::fs::set_permissions(&strict, std::fs::Permissions::from_mode(0o500)).unwrap();
    FileStore::new(&strict).unwrap();
    let now = std::fs::metadata(&strict).unwrap().permissions().mode();
    assert_eq!(now & 0o777, 0o500);
    std::fs::set_permissions(&strict, std::fs::Permissions::from_mode(0o700)).unwrap();
}
