use bytes::Bytes;
use coderun_tests::app::{Payload, spawn_app};
use http::Method;

#[tokio::test]
async fn languages_and_specs_come_from_configuration() {
    let app = spawn_app().await;
    let token = app.login("demo", "demo").await;
    let languages = app.get("/api/v1/languages", &token).await.expect(200);
    let ids: Vec<&str> = languages
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["java", "python", "r", "scala"]);
    let python = &languages[1];
    assert_eq!(python["main_file"], "main.py");
    assert_eq!(python["command"], "python3 -u {main}");
    assert!(!python["image"].as_str().unwrap().is_empty());
    // What a teacher can rely on: the version and main libraries of each language's runtime.
    assert_eq!(python["version"], "3.11");
    let libraries: Vec<&str> = python["libraries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(libraries.contains(&"pandas 1.5"), "{libraries:?}");
    let versions: Vec<&str> = languages
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["17", "3.11", "4.2", "2.11"]);

    let specs = app.get("/api/v1/specs", &token).await.expect(200);
    let specs = specs.as_array().unwrap();
    assert_eq!(specs.len(), 3);
    let defaults: Vec<&str> = specs
        .iter()
        .filter(|s| s["default"] == true)
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(defaults, ["small"]);
    for spec in specs {
        for field in [
            "cpu_millis",
            "memory_mib",
            "disk_mib",
            "pids",
            "wall_seconds",
        ] {
            assert!(spec[field].as_u64().unwrap() > 0, "{field}");
        }
    }
}

#[tokio::test]
async fn datasets_are_listed_from_postgres_not_from_the_bucket() {
    let app = spawn_app().await;
    let token = app.login("demo", "demo").await;
    assert_eq!(
        app.get("/api/v1/datasets", &token).await.expect(200),
        serde_json::json!([])
    );
    // Objects an operator copied by hand are no dataset: only published versions are.
    app.state
        .storage
        .put(
            "datasets/stray/iris.csv",
            Bytes::from_static(b"a,b\n1,2\n"),
            "text/csv",
        )
        .await
        .unwrap();
    app.publish_dataset("iris", &[("iris.csv", b"a,b\n1,2\n"), ("README", b"hi")])
        .await;
    app.publish_dataset("mnist", &[("train/0.txt", b"0")]).await;
    let datasets = app.get("/api/v1/datasets", &token).await.expect(200);
    let summary: Vec<(&str, &str, i64, i64)> = datasets
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let v = &d["versions"][0];
            (
                d["name"].as_str().unwrap(),
                d["latest_version"].as_str().unwrap(),
                v["file_count"].as_i64().unwrap(),
                v["size"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(summary, [("iris", "v1", 2, 10), ("mnist", "v1", 1, 1)]);
}

#[tokio::test]
async fn the_catalogue_needs_a_token() {
    let app = spawn_app().await;
    for uri in ["/api/v1/languages", "/api/v1/specs", "/api/v1/datasets"] {
        app.send(Method::GET, uri, None, Payload::Empty)
            .await
            .problem(401);
    }
}
