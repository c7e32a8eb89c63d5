//! Dataset versions in the local executor: mounted read-only at `$DATA_DIR/{name}` from the
//! worker's cache, fetched once per worker by checksum, the version the run pinned.

mod support;

use std::time::Duration;

use coderun_worker::executor::datasets::fetched_files;
use serde_json::json;
use support::platform;

const T: Duration = Duration::from_secs(60);

/// Reads both files of the dataset and tries three ways of changing it.
const PROGRAM: &str = r#"import os
d = os.path.join(os.environ['DATA_DIR'], 'iris')
print(open(os.path.join(d, 'a.csv')).read().strip())
print(open(os.path.join(d, 'sub', 'b.txt')).read().strip())
attempts = [
    ('write', lambda: open(os.path.join(d, 'a.csv'), 'a').write('x')),
    ('create', lambda: open(os.path.join(d, 'new.txt'), 'w').write('x')),
    ('remove', lambda: os.remove(os.path.join(d, 'a.csv'))),
]
for what, f in attempts:
    try:
        f()
        print(what, 'allowed')
    except OSError:
        print(what, 'refused')
"#;

#[tokio::test]
async fn runs_read_their_pinned_version_read_only_and_a_worker_fetches_it_once() {
    let p = platform(vec![]).await;
    p.app
        .publish_dataset("iris", &[("a.csv", b"version one"), ("sub/b.txt", b"b1")])
        .await;
    p.app
        .publish_dataset("iris", &[("a.csv", b"version two"), ("sub/b.txt", b"b2")])
        .await;
    let cache = p.settings().worker.work_dir.join(".datasets");
    let worker = p.worker("w").await;

    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(
            p.submit_python(PROGRAM, json!({"datasets": ["iris@v1"]}))
                .await,
        );
    }
    for id in &ids {
        let run = p.wait_terminal(id, T).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        assert_eq!(run["datasets"], json!(["iris@v1"]));
        let (lines, _) = p.log(id).await;
        assert_eq!(
            lines,
            [
                "version one",
                "b1",
                "write refused",
                "create refused",
                "remove refused"
            ]
        );
    }
    // Two runs of v1, one fetch of its two files.
    assert_eq!(fetched_files(&cache), 2);

    // The latest version, by name: fetched once more (two more files), to its own folder.
    let id = p
        .submit_python(PROGRAM, json!({"datasets": ["iris"]}))
        .await;
    let run = p.wait_terminal(&id, T).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["datasets"], json!(["iris@v2"]));
    let (lines, _) = p.log(&id).await;
    assert_eq!(lines[..2], ["version two", "b2"]);
    assert_eq!(fetched_files(&cache), 4);

    // The cached copy is read-only on the host too, and unchanged.
    let folders: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(folders.len(), 2, "{folders:?}");
    for folder in folders {
        use std::os::unix::fs::PermissionsExt;
        let a = folder.join("a.csv");
        assert_eq!(
            std::fs::metadata(&a).unwrap().permissions().mode() & 0o777,
            0o444
        );
        assert!(std::fs::read_to_string(&a).unwrap().starts_with("version "));
    }
    worker.stop().await;
}

#[tokio::test]
async fn a_dataset_file_whose_bytes_changed_in_the_bucket_fails_the_run_before_it_starts() {
    let p = platform(vec![]).await;
    p.app.publish_dataset("iris", &[("a.csv", b"good")]).await;
    // Someone with bucket access changes the published object: its checksum no longer matches.
    p.app
        .state
        .storage
        .put(
            "datasets/iris/v1/a.csv",
            bytes::Bytes::from_static(b"evil"),
            "text/csv",
        )
        .await
        .unwrap();
    let cache = p.settings().worker.work_dir.join(".datasets");
    let worker = p.worker("w").await;
    let id = p
        .submit_python("print('never')\n", json!({"datasets": ["iris@v1"]}))
        .await;
    let run = p.wait_terminal(&id, T).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["reason"], "launch_failed", "{run}");
    let (lines, _) = p.log(&id).await;
    assert!(!lines.iter().any(|l| l == "never"));
    assert_eq!(fetched_files(&cache), 0);
    assert!(
        std::fs::read_dir(&cache).map(|d| d.count()).unwrap_or(0) == 0,
        "nothing half-fetched is left in the cache"
    );
    worker.stop().await;
}
