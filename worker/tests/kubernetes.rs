//! The Kubernetes executor, from HTTP submit to the finished run, against the stand-in
//! Kubernetes API reached through its kubeconfig (as a cluster would be), on the real
//! Postgres, Redis and S3. The test plays the kubelet: it moves each pod through its phases.

mod support;

use std::time::{Duration, Instant};

use coderun_tests::kube::{Fault, NAMESPACE as NS, StandIn};
use coderun_worker::executor::kubernetes::{self, job};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Container;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use support::{Platform, kubernetes_env, kubernetes_settings, platform};
use uuid::Uuid;

const T: Duration = Duration::from_secs(30);

/// A stand-in API server and a platform whose workers use it.
async fn setup(extra: Vec<(&'static str, String)>) -> (StandIn, Platform) {
    let kube = StandIn::start().await;
    let mut overrides = kubernetes_settings(kube.kubeconfig());
    overrides.extend(extra);
    let p = platform(overrides).await;
    (kube, p)
}

/// Polls `f` until it gives a value, panicking after `timeout`.
async fn eventually<V>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<V>) -> V {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn job_of(id: &str) -> String {
    job::job_name(id.parse().unwrap())
}

/// The run's Job, once created.
async fn job_for(kube: &StandIn, id: &str) -> Job {
    let name = job_of(id);
    eventually("the run's Job", T, || kube.job(NS, &name)).await
}

/// The run's pod, once the job controller made it.
async fn pod_for(kube: &StandIn, id: &str) -> String {
    let name = job_of(id);
    eventually("the run's pod", T, || kube.pod_of_job(NS, &name)).await
}

async fn wait_status(p: &Platform, id: &str, status: &str) -> Value {
    p.wait_for(id, T, |s| s == status).await
}

/// Waits until the run's log (`GET /log`) holds exactly `lines`.
async fn wait_log(p: &Platform, id: &str, lines: &[&str]) {
    let deadline = Instant::now() + T;
    loop {
        let (got, _) = p.log(id).await;
        if got == lines {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the log is {got:?}, not {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Submits a Python run and drives its pod to Running; returns (run id, pod).
async fn running_run(kube: &StandIn, p: &Platform) -> (String, String) {
    let id = p.submit_python("print('hi')\n", json!({})).await;
    let pod = pod_for(kube, &id).await;
    wait_status(p, &id, "pending").await;
    kube.set_pod_running(NS, &pod);
    wait_status(p, &id, "running").await;
    (id, pod)
}

async fn wait_no_permits(ctx: &coderun_worker::Context) {
    let deadline = Instant::now() + T;
    loop {
        let permits = support::run_permits(ctx).await;
        if permits.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "permits still held: {permits:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn containers(job: &Job) -> Vec<Container> {
    let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    pod.init_containers
        .iter()
        .flatten()
        .chain(pod.containers.iter())
        .cloned()
        .collect()
}

fn env_of(container: &Container, name: &str) -> String {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
        .unwrap_or_else(|| panic!("{} has no {name}", container.name))
}

/// A gzipped tar of `files`, plus a symlink the host side must not follow.
fn outputs_archive(files: &[(&str, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, format!("./{path}"), content.as_bytes())
            .unwrap();
    }
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    link.set_cksum();
    builder
        .append_link(&mut link, "./passwd", "/etc/passwd")
        .unwrap();
    let tar = builder.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    gz.finish().unwrap()
}

#[tokio::test]
async fn a_run_goes_from_submit_through_its_job_to_succeeded_with_its_log_and_outputs() {
    let (kube, p) = setup(vec![]).await;
    kube.enforce_pod_security_restricted(NS);
    p.app
        .publish_dataset("iris", &[("iris.csv", b"a,b\n1,2\n")])
        .await;
    let worker = p.worker("w").await;
    let id = p
        .submit_python("print('hello')\n", json!({"datasets": ["iris"]}))
        .await;

    // The Job holds every part a run's Job must have.
    let job = job_for(&kube, &id).await;
    let name = job_of(&id);
    assert_eq!(job.metadata.name.as_deref(), Some(name.as_str()));
    assert!(name.len() <= 63);
    let labels = job.metadata.labels.clone().unwrap();
    assert_eq!(labels[job::RUN_ID], id);
    assert_eq!(labels["app.kubernetes.io/managed-by"], "coderun");
    let spec = job.spec.as_ref().unwrap();
    assert_eq!(spec.backoff_limit, Some(0));
    assert_eq!(spec.active_deadline_seconds, Some(30));
    assert_eq!(spec.ttl_seconds_after_finished, Some(600));
    let pod_spec = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod_spec.restart_policy.as_deref(), Some("Never"));
    assert_eq!(pod_spec.automount_service_account_token, Some(false));
    assert_eq!(pod_spec.enable_service_links, Some(false));
    let main = &pod_spec.containers[0];
    assert_eq!(main.image.as_deref(), Some("coderun/run-python:bookworm"));
    assert_eq!(
        main.command.clone().unwrap(),
        ["sh", "-c", "python3 -u main.py"]
    );
    let limits = main.resources.as_ref().unwrap().limits.clone().unwrap();
    assert_eq!(limits["cpu"].0, "500m");
    assert_eq!(limits["memory"].0, "256Mi");
    assert_eq!(env_of(main, "RUN_ID"), id);
    let stored = coderun_shared::runs::get(&p.app.db, id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    let fetch = &containers(&job)[0];
    assert!(
        env_of(fetch, "CODE_URL").contains(&format!("snapshots/{}.tar.gz", stored.code_sha256))
    );
    assert!(env_of(fetch, "CODE_URL").contains("X-Amz-Signature"));
    assert_eq!(env_of(fetch, "CODE_SHA256"), stored.code_sha256);
    // The dataset version is fetched file by file, each checked against its sha256.
    let args = fetch.command.clone().unwrap();
    assert_eq!(args[args.len() - 3], "iris/iris.csv");
    assert!(args[args.len() - 2].contains("datasets/iris/v1/iris.csv"));
    assert_eq!(args[args.len() - 1], sha256_hex(b"a,b\n1,2\n"));
    assert!(args[2].contains("sha256sum -c"));
    // The Job's URL downloads exactly the published bytes.
    let fetched = reqwest::get(&args[args.len() - 2]).await.unwrap();
    assert_eq!(fetched.bytes().await.unwrap().as_ref(), b"a,b\n1,2\n");
    let serialized = serde_json::to_string(&job).unwrap();
    let secret = p.settings().storage.secret_key.expose_secret().to_owned();
    assert!(
        !serialized.contains(&secret),
        "the Job holds the storage secret"
    );
    for needle in ["secretKeyRef", "envFrom", "serviceAccountToken"] {
        assert!(!serialized.contains(needle), "the Job holds {needle}");
    }
    // The pod passes Pod Security "restricted" admission.
    let pod = pod_for(&kube, &id).await;
    assert!(kube.pod_create_failures().is_empty());

    wait_status(&p, &id, "pending").await;
    kube.set_pod_running(NS, &pod);
    wait_status(&p, &id, "running").await;
    kube.append_log(NS, &pod, "hello from the pod\n");
    kube.append_log(NS, &pod, "second line\n");
    wait_log(&p, &id, &["hello from the pod", "second line"]).await;

    // The outputs sidecar's upload, as the pod would do it: a PUT to the presigned URL.
    let outputs_url = env_of(&containers(&job)[1], "OUTPUTS_URL");
    let archive = outputs_archive(&[("result.txt", "42"), ("sub/b.txt", "b")]);
    let put = reqwest::Client::new()
        .put(outputs_url)
        .body(archive)
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{put:?}");

    kube.set_pod_succeeded(NS, &pod);
    let run = p.wait_terminal(&id, T).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["exit_code"], 0);
    assert_eq!(run["reason"], Value::Null);
    assert_eq!(
        Platform::phases(&run),
        ["queued", "dispatched", "pending", "running", "succeeded"]
    );

    // The TTL controller removes the Job and its pod; the log was stored before.
    assert_eq!(kube.run_ttl_after(Duration::from_secs(601)), [name]);
    assert!(kube.pod(NS, &pod).is_none());
    let (lines, complete) = p.log(&id).await;
    assert_eq!(lines, ["hello from the pod", "second line"]);
    assert!(complete);
    let download = p
        .app
        .get(&format!("/api/v1/runs/{id}/log/download"), &p.token)
        .await;
    let url = download.header("location").unwrap().to_owned();
    let log = reqwest::get(url).await.unwrap().text().await.unwrap();
    assert_eq!(log, "hello from the pod\nsecond line\n");

    let outputs = p
        .app
        .get(&format!("/api/v1/runs/{id}/outputs"), &p.token)
        .await
        .expect(200);
    let items = outputs["items"].as_array().unwrap();
    let paths: Vec<&str> = items.iter().map(|o| o["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        ["result.txt", "sub/b.txt"],
        "the symlink is left out"
    );
    let url = items[0]["url"].as_str().unwrap();
    assert_eq!(reqwest::get(url).await.unwrap().text().await.unwrap(), "42");
    assert!(
        p.app
            .objects(
                &coderun_shared::objects::RunObjects::new(id.parse().unwrap()).outputs_archive()
            )
            .await
            .is_empty()
    );

    wait_no_permits(&worker.ctx).await;
    assert_eq!(kube.job_creates(), 1);
    worker.stop().await;
}

#[tokio::test]
async fn a_failing_program_reports_its_exit_code_and_its_log() {
    let (kube, p) = setup(vec![]).await;
    let worker = p.worker("w").await;
    let (id, pod) = running_run(&kube, &p).await;
    kube.append_log(NS, &pod, "Traceback: boom\n");
    kube.set_pod_failed(NS, &pod, 3, "Error");
    let run = p.wait_terminal(&id, T).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["exit_code"], 3);
    assert_eq!(run["reason"], Value::Null);
    let (lines, complete) = p.log(&id).await;
    assert_eq!(lines, ["Traceback: boom"]);
    assert!(complete);
    wait_no_permits(&worker.ctx).await;
    worker.stop().await;
}

/// The live log streams over HTTP/2 where the server speaks it (here by prior knowledge, as
/// `kubernetes.log_streams_h2c` says; over TLS by ALPN) and over HTTP/1.1 otherwise, with the
/// same lines either way.
#[tokio::test]
async fn the_live_log_streams_over_http2_when_the_server_speaks_it_and_http1_otherwise() {
    for (h2c, version) in [(true, "HTTP/2.0"), (false, "HTTP/1.1")] {
        let (kube, p) = setup(vec![("kubernetes.log_streams_h2c", h2c.to_string())]).await;
        let worker = p.worker("w").await;
        let (id, pod) = running_run(&kube, &p).await;
        kube.append_log(NS, &pod, "streamed\n");
        wait_log(&p, &id, &["streamed"]).await;
        let versions: Vec<String> = kube
            .follow_versions()
            .iter()
            .map(|v| format!("{v:?}"))
            .collect();
        assert!(!versions.is_empty(), "no follow reached the server");
        assert!(
            versions.iter().all(|v| v == version),
            "h2c = {h2c}: the follows came as {versions:?}"
        );
        kube.append_log(NS, &pod, "and the end\n");
        kube.set_pod_succeeded(NS, &pod);
        let run = p.wait_terminal(&id, T).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        let (lines, complete) = p.log(&id).await;
        assert_eq!(lines, ["streamed", "and the end"]);
        assert!(complete);
        wait_no_permits(&worker.ctx).await;
        worker.stop().await;
    }
}

#[tokio::test]
async fn an_oom_killed_program_ends_oom_killed() {
    let (kube, p) = setup(vec![]).await;
    let worker = p.worker("w").await;
    let (id, pod) = running_run(&kube, &p).await;
    kube.set_pod_failed(NS, &pod, 137, "OOMKilled");
    let run = p.wait_terminal(&id, T).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["reason"], "oom_killed");
    assert_eq!(run["exit_code"], 137);
    worker.stop().await;
}

#[tokio::test]
async fn a_job_past_its_deadline_ends_deadline_exceeded() {
    let (kube, p) = setup(vec![]).await;
    let worker = p.worker("w").await;
    let (id, _pod) = running_run(&kube, &p).await;
    kube.job_deadline_exceeded(NS, &job_of(&id));
    let run = p.wait_terminal(&id, T).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["reason"], "deadline_exceeded");
    wait_no_permits(&worker.ctx).await;
    worker.stop().await;
}

#[tokio::test]
async fn an_evicted_pod_and_a_disrupted_pod_both_end_evicted() {
    let (kube, p) = setup(vec![]).await;
    let worker = p.worker("w").await;
    let (evicted, pod) = running_run(&kube, &p).await;
    kube.evict_pod(NS, &pod);
    let run = p.wait_terminal(&evicted, T).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["reason"], "evicted");

    let (disrupted, pod) = running_run(&kube, &p).await;
    kube.disrupt_pod(NS, &pod);
    let run = p.wait_terminal(&disrupted, T).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["reason"], "evicted");
    wait_no_permits(&worker.ctx).await;
    worker.stop().await;
}

#[tokio::test]
async fn an_image_that_cannot_be_pulled_fails_the_run_and_its_job_is_deleted() {
    let (kube, p) = setup(vec![]).await;
    let worker = p.worker("w").await;
    let id = p.submit_python("print('hi')\n", json!({})).await;
    let pod = pod_for(&kube, &id).await;
    wait_status(&p, &id, "pending").await;
    let pulling_since = Instant::now();
    kube.set_image_pull_failure(NS, &pod, "ImagePullBackOff");
    let run = p.wait_terminal(&id, T).await;
    assert!(
        pulling_since.elapsed() >= Duration::from_secs(2),
        "gave up before the timeout"
    );
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["reason"], "image_pull_failed");
    let name = job_of(&id);
    assert!(
        kube.deletes()
            .contains(&("Job".into(), name.clone(), Some("Background".into()))),
        "{:?}",
        kube.deletes()
    );
    eventually("the Job's removal", T, || {
        kube.job(NS, &name).is_none().then_some(())
    })
    .await;
    wait_no_permits(&worker.ctx).await;
    worker.stop().await;
}

#[tokio::test]
async fn stopping_a_running_run_deletes_its_job_and_ends_stopped_with_its_log() {
    let (kube, p) = setup(vec![]).await;
    let worker = p.worker("w").await;
    let (id, pod) = running_run(&kube, &p).await;
    kube.append_log(NS, &pod, "before the stop\n");
    wait_log(&p, &id, &["before the stop"]).await;
    p.app
        .post(&format!("/api/v1/runs/{id}/stop"), &p.token, json!({}))
        .await
        .expect(200);
    let run = p.wait_terminal(&id, T).await;
    assert_eq!(run["status"], "stopped", "{run}");
    assert_eq!(run["reason"], "stopped_by_user");
    let name = job_of(&id);
    let deletes = kube.deletes();
    assert!(
        deletes
            .iter()
            .any(|(kind, n, _)| kind == "Job" && *n == name),
        "{deletes:?}"
    );
    assert!(
        deletes
            .iter()
            .all(|(_, _, policy)| policy.as_deref() == Some("Background")),
        "every delete names its propagation policy: {deletes:?}"
    );
    assert!(kube.job(NS, &name).is_none());
    let (lines, complete) = p.log(&id).await;
    assert_eq!(lines, ["before the stop"]);
    assert!(complete);
    wait_no_permits(&worker.ctx).await;
    worker.stop().await;
}

#[tokio::test]
async fn a_log_past_its_cap_ends_the_run_output_limit_exceeded_with_the_log_cut() {
    let (kube, p) = setup(vec![("runs.log_max_bytes", "64".into())]).await;
    let worker = p.worker("w").await;
    let (id, pod) = running_run(&kube, &p).await;
    kube.append_log(NS, &pod, "first line\n");
    wait_log(&p, &id, &["first line"]).await;
    kube.append_log(NS, &pod, &format!("{}\n", "x".repeat(200)));
    let run = p.wait_terminal(&id, T).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["reason"], "output_limit_exceeded");
    let name = job_of(&id);
    assert!(
        kube.deletes()
            .contains(&("Job".into(), name, Some("Background".into())))
    );
    let download = p
        .app
        .get(&format!("/api/v1/runs/{id}/log/download"), &p.token)
        .await;
    let url = download.header("location").unwrap().to_owned();
    let log = reqwest::get(url).await.unwrap().bytes().await.unwrap();
    assert_eq!(log.len(), 64, "cut at the cap");
    assert!(log.starts_with(b"first line\nxxx"));
    wait_no_permits(&worker.ctx).await;
    worker.stop().await;
}

#[tokio::test]
async fn a_pod_printing_megabytes_without_a_newline_is_cut_at_the_cap_in_split_lines() {
    let cap = 1024 * 1024;
    let (kube, p) = setup(vec![("runs.log_max_bytes", cap.to_string())]).await;
    let worker = p.worker("w").await;
    let (id, pod) = running_run(&kube, &p).await;
    // 8 MiB and still no end of line: the worker must neither wait for one nor hold it.
    let mib = "x".repeat(1024 * 1024);
    for _ in 0..8 {
        kube.append_log(NS, &pod, &mib);
    }
    let run = p.wait_terminal(&id, T).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["reason"], "output_limit_exceeded");
    let name = job_of(&id);
    assert!(
        kube.deletes()
            .contains(&("Job".into(), name, Some("Background".into())))
    );
    // The live log got the first MiB in lines of 64 KiB, as the local executor splits them.
    let run_id: Uuid = id.parse().unwrap();
    let live = worker.ctx.supervisor.live_log();
    let len = live.len(run_id).await.unwrap();
    let lines = live.range(run_id, 1, len).await.unwrap();
    assert_eq!(lines.len(), 16);
    assert!(
        lines
            .iter()
            .all(|l| l.len() == 64 * 1024 && l.bytes().all(|b| b == b'x'))
    );
    let download = p
        .app
        .get(&format!("/api/v1/runs/{id}/log/download"), &p.token)
        .await;
    let url = download.header("location").unwrap().to_owned();
    let log = reqwest::get(url).await.unwrap().bytes().await.unwrap();
    assert_eq!(log.len(), cap, "cut at the cap");
    wait_no_permits(&worker.ctx).await;
    worker.stop().await;
}

/// `n` bytes that do not compress (a gzip of them is as large).
fn incompressible(n: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(n + 16);
    while bytes.len() < n {
        bytes.extend_from_slice(Uuid::new_v4().as_bytes());
    }
    bytes.truncate(n);
    bytes
}

/// A gzipped tar holding one file `name` with `content`.
fn archive_of(name: &str, content: &[u8]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, name, content).unwrap();
    let tar = builder.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    gz.finish().unwrap()
}

#[tokio::test]
async fn an_oversized_outputs_archive_is_refused_whole_with_the_reason() {
    // Outputs of 1 KiB at most: archives past about 8 MiB are refused.
    let (kube, p) = setup(vec![
        ("runs.output_max_bytes", "1024".into()),
        ("runs.output_max_files", "10".into()),
    ])
    .await;
    let worker = p.worker("w").await;
    let limit = kubernetes::outputs::archive_limit(10, 1024);
    for (archive, why) in [
        // Too large to download.
        (
            archive_of("noise.bin", &incompressible(limit as usize + 1024 * 1024)),
            format!("the outputs archive is larger than {limit} bytes"),
        ),
        // Small to download, a bomb to unpack.
        (
            archive_of("zeros.bin", &vec![0u8; 64 * 1024 * 1024]),
            format!("the outputs archive unpacks to more than {limit} bytes"),
        ),
    ] {
        let id = p.submit_python("print('hi')\n", json!({})).await;
        let job = job_for(&kube, &id).await;
        let pod = pod_for(&kube, &id).await;
        wait_status(&p, &id, "pending").await;
        kube.set_pod_running(NS, &pod);
        wait_status(&p, &id, "running").await;
        let outputs_url = env_of(&containers(&job)[1], "OUTPUTS_URL");
        let put = reqwest::Client::new()
            .put(outputs_url)
            .body(archive)
            .send()
            .await
            .unwrap();
        assert!(put.status().is_success(), "{put:?}");
        kube.set_pod_succeeded(NS, &pod);

        let run = p.wait_terminal(&id, T).await;
        assert_eq!(run["status"], "failed", "{run}");
        assert_eq!(run["exit_code"], 0, "the program's own exit code stays");
        assert_eq!(run["reason"], "output_limit_exceeded");
        let detail = run["events"].as_array().unwrap().last().unwrap()["detail"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(detail.contains(&why), "{detail}");
        // Nothing partial: no output listed or stored, and the archive is gone.
        let outputs = p
            .app
            .get(&format!("/api/v1/runs/{id}/outputs"), &p.token)
            .await
            .expect(200);
        assert_eq!(outputs["total"], 0, "{outputs}");
        let stored = p.app.objects(&format!("runs/{id}/output/")).await;
        assert!(stored.is_empty(), "{stored:?}");
        assert!(
            p.app
                .objects(&format!("runs/{id}/outputs.tar.gz"))
                .await
                .is_empty()
        );
    }
    wait_no_permits(&worker.ctx).await;
    worker.stop().await;
}

#[tokio::test]
async fn a_job_that_exists_already_counts_as_launched() {
    let (kube, p) = setup(vec![]).await;
    let id = p.submit_python("print('hi')\n", json!({})).await;
    // Another launch of this very run got as far as creating the Job.
    let run = coderun_shared::runs::get(&p.app.db, id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    let settings = p.settings();
    let job = job::build(&run, &settings.kubernetes, &job::sample_urls(&run));
    let client = kubernetes::client(&settings.kubernetes).await.unwrap();
    Api::<Job>::namespaced(client, NS)
        .create(&PostParams::default(), &job)
        .await
        .unwrap();

    let worker = p.worker("w").await;
    let run = wait_status(&p, &id, "pending").await;
    assert_eq!(
        Platform::phases(&run),
        ["queued", "dispatched", "pending"],
        "launched through the 409"
    );
    assert_eq!(kube.job_creates(), 2, "the worker's create was refused");
    assert_eq!(kube.jobs(NS).len(), 1);
    let pod = pod_for(&kube, &id).await;
    kube.set_pod_running(NS, &pod);
    kube.set_pod_succeeded(NS, &pod);
    let run = p.wait_terminal(&id, T).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    wait_no_permits(&worker.ctx).await;
    worker.stop().await;
}

#[tokio::test]
async fn a_create_that_fails_is_retried_and_the_run_still_succeeds() {
    let (kube, p) = setup(vec![]).await;
    kube.inject(Fault::Status {
        method: "POST",
        path_contains: "/jobs".into(),
        status: 500,
        times: 1,
    });
    let worker = p.worker("w").await;
    let id = p.submit_python("print('hi')\n", json!({})).await;
    let pod = pod_for(&kube, &id).await;
    assert_eq!(kube.job_creates(), 2, "one refused create, one that landed");
    kube.set_pod_running(NS, &pod);
    wait_status(&p, &id, "running").await;
    kube.set_pod_succeeded(NS, &pod);
    let run = p.wait_terminal(&id, T).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(kube.jobs(NS).len(), 1);
    wait_no_permits(&worker.ctx).await;
    worker.stop().await;
}

#[tokio::test]
async fn the_watcher_recovers_from_an_expired_history_and_records_later_phases() {
    let (kube, p) = setup(vec![]).await;
    let worker = p.worker("w").await;
    let (id, pod) = running_run(&kube, &p).await;
    let lists = |kube: &StandIn| {
        kube.requests()
            .iter()
            .filter(|r| r.starts_with("GET /apis/batch/v1/namespaces/coderun-jobs/jobs?"))
            .filter(|r| !r.contains("watch=true"))
            .count()
    };
    let before = lists(&kube);
    kube.expire_history();
    // Let the watchers notice and re-list before the pod moves on.
    eventually("a re-list", T, || (lists(&kube) > before).then_some(())).await;
    kube.append_log(NS, &pod, "after the re-list\n");
    kube.set_pod_succeeded(NS, &pod);
    let run = p.wait_terminal(&id, T).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let (lines, _) = p.log(&id).await;
    assert_eq!(lines, ["after the re-list"]);
    worker.stop().await;
}

#[tokio::test]
async fn a_slow_api_server_slows_runs_down_but_breaks_nothing() {
    let (kube, p) = setup(vec![]).await;
    let worker = p.worker("w").await;
    kube.inject(Fault::Delay {
        method: "*",
        path_contains: String::new(),
        delay: Duration::from_millis(400),
        times: 40,
    });
    kube.inject(Fault::Delay {
        method: "POST",
        path_contains: "/jobs".into(),
        delay: Duration::from_secs(2),
        times: 1,
    });
    let id = p.submit_python("print('hi')\n", json!({})).await;
    let pod = pod_for(&kube, &id).await;
    kube.set_pod_running(NS, &pod);
    kube.append_log(NS, &pod, "slowly\n");
    wait_status(&p, &id, "running").await;
    kube.set_pod_succeeded(NS, &pod);
    let run = p.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let (lines, _) = p.log(&id).await;
    assert_eq!(lines, ["slowly"]);
    assert_eq!(kube.job_creates(), 1);
    worker.stop().await;
}

#[tokio::test]
async fn job_creates_go_through_the_client_side_rate_limit() {
    const RUNS: usize = 5;
    const RATE: f64 = 2.0;
    let (kube, p) = setup(vec![("kubernetes.creates_per_second", RATE.to_string())]).await;
    let mut ids = Vec::new();
    for _ in 0..RUNS {
        ids.push(p.submit_python("print('hi')\n", json!({})).await);
    }
    let worker = p.worker("w").await;
    eventually("the first Job", T, || {
        (!kube.jobs(NS).is_empty()).then_some(())
    })
    .await;
    let first = Instant::now();
    eventually("every Job", T, || {
        (kube.jobs(NS).len() == RUNS).then_some(())
    })
    .await;
    let spread = first.elapsed();
    let least = Duration::from_secs_f64((RUNS - 1) as f64 / RATE);
    assert!(
        spread + Duration::from_millis(100) >= least,
        "{RUNS} creates took {spread:?}, less than {least:?} at {RATE} per second"
    );
    assert_eq!(kube.job_creates(), RUNS);
    worker.stop().await;
}

#[tokio::test]
async fn a_run_whose_worker_is_killed_is_adopted_by_another_and_ends_exactly_once() {
    let (kube, p) = setup(vec![]).await;
    let env = kubernetes_env(kube.kubeconfig());
    let extra: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut first = p.worker_process(&format!("wa-{}", Uuid::new_v4().simple()), &extra);
    let (id, pod) = running_run(&kube, &p).await;
    kube.append_log(NS, &pod, "line 1\n");
    wait_log(&p, &id, &["line 1"]).await;

    first.kill9();
    let second = p.worker("wb").await;
    kube.append_log(NS, &pod, "line 2\n");
    // The second worker follows the log once the first one's heartbeat has expired.
    wait_log(&p, &id, &["line 1", "line 2"]).await;
    kube.set_pod_succeeded(NS, &pod);
    let run = p.wait_terminal(&id, T).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(
        Platform::phases(&run),
        ["queued", "dispatched", "pending", "running", "succeeded"],
        "every phase exactly once"
    );
    assert_eq!(kube.job_creates(), 1, "never launched twice");
    assert_eq!(kube.jobs(NS).len(), 1);
    let (lines, complete) = p.log(&id).await;
    assert_eq!(lines, ["line 1", "line 2"]);
    assert!(complete);
    wait_no_permits(&second.ctx).await;
    second.stop().await;
}

#[tokio::test]
async fn a_run_whose_job_vanished_while_no_worker_watched_ends_executor_lost() {
    let (kube, p) = setup(vec![]).await;
    let first = p.worker("w1").await;
    let (id, _pod) = running_run(&kube, &p).await;
    first.stop().await;
    let client = kubernetes::client(&p.settings().kubernetes).await.unwrap();
    Api::<Job>::namespaced(client, NS)
        .delete(&job_of(&id), &DeleteParams::background())
        .await
        .unwrap();

    let second = p.worker("w2").await;
    let run = p.wait_terminal(&id, T).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["reason"], "executor_lost");
    wait_no_permits(&second.ctx).await;
    second.stop().await;
}

#[tokio::test]
async fn a_worker_whose_kubeconfig_is_unusable_refuses_to_start() {
    let (_kube, p) = setup(vec![]).await;
    let mut settings = p.settings();
    settings.kubernetes.kubeconfig = "/nonexistent/kubeconfig".into();
    let error = coderun_worker::Context::build(settings)
        .await
        .err()
        .expect("no worker without a cluster");
    assert!(
        error.to_string().contains("kubernetes.kubeconfig"),
        "{error}"
    );
}

#[tokio::test]
async fn print_job_prints_the_job_of_each_configured_spec_or_of_a_stored_run_as_yaml() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_coderun-worker"))
        .arg("print-job")
        .env_clear()
        .env("CODERUN__LOCAL_STACK", "true")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let yaml = String::from_utf8(output.stdout).unwrap();
    let jobs: Vec<Job> = serde_saphyr::from_multiple(&yaml).unwrap();
    let specs =
        coderun_shared::config::Settings::with_overrides([("local_stack", "true".to_owned())])
            .unwrap()
            .specs;
    assert_eq!(jobs.len(), specs.len(), "{yaml}");
    let mut memory: Vec<String> = jobs
        .iter()
        .map(|job| {
            assert!(
                job.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("run-"))
            );
            assert_eq!(job.spec.as_ref().unwrap().backoff_limit, Some(0));
            let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
            let limits = pod.containers[0].resources.clone().unwrap().limits.unwrap();
            limits["memory"].0.clone()
        })
        .collect();
    let mut expected: Vec<String> = specs
        .values()
        .map(|spec| format!("{}Mi", spec.memory_mib))
        .collect();
    memory.sort();
    expected.sort();
    assert_eq!(
        memory, expected,
        "one Job per spec, each with its spec's memory"
    );

    let (kube, p) = setup(vec![]).await;
    let id = p.submit_python("print('hi')\n", json!({})).await;
    let env = p.worker_env("printer", &[]);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_coderun-worker"))
        .args(["print-job", "--run-id", &id])
        .env_clear()
        .envs(env)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let yaml = String::from_utf8(output.stdout).unwrap();
    let job: Job = serde_saphyr::from_str(&yaml).unwrap();
    assert_eq!(job.metadata.name, Some(job_of(&id)));
    assert!(env_of(&containers(&job)[0], "CODE_URL").contains("X-Amz-Signature"));
    let secret = p.settings().storage.secret_key.expose_secret().to_owned();
    assert!(!yaml.contains(&secret));
    // Printing creates nothing.
    assert_eq!(kube.job_creates(), 0);
}

/// The step's run id in a pipeline run's grid, once it has one.
async fn pipeline_step_run(p: &Platform, pipeline_run: &str, step: &str) -> String {
    let deadline = Instant::now() + T;
    loop {
        let run = p
            .app
            .get(&format!("/api/v1/pipeline-runs/{pipeline_run}"), &p.token)
            .await
            .expect(200);
        let found = run["stages"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["steps"].as_array().unwrap().iter())
            .find(|s| s["name"] == step)
            .and_then(|s| s["run_id"].as_str().map(str::to_owned));
        if let Some(id) = found {
            return id;
        }
        assert!(Instant::now() < deadline, "step {step} has no run: {run}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_two_stage_pipeline_passes_outputs_through_the_init_container() {
    let (kube, p) = setup(vec![]).await;
    let worker = p.worker("w").await;
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let task = p.app.task(&p.token, "step", "python").await;
        tasks.push(task["id"].as_str().unwrap().to_owned());
    }
    let pipeline = p
        .app
        .post(
            "/api/v1/pipelines",
            &p.token,
            json!({
                "name": "two stages",
                "params": {"ALPHA": "0.5"},
                "stages": [
                    {"name": "one", "steps": [{"name": "first", "task_id": tasks[0]}]},
                    {"name": "two", "steps": [{"name": "second", "task_id": tasks[1]}]}
                ]
            }),
        )
        .await
        .expect(201);
    let id = pipeline["id"].as_str().unwrap();
    let run = p
        .app
        .post(&format!("/api/v1/pipelines/{id}/runs"), &p.token, json!({}))
        .await
        .expect(202);
    let pipeline_run = run["id"].as_str().unwrap().to_owned();

    // The first step: its pod uploads its outputs and succeeds.
    let first = pipeline_step_run(&p, &pipeline_run, "first").await;
    let job = job_for(&kube, &first).await;
    let main = &job
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    assert_eq!(env_of(main, "PARAM_ALPHA"), "0.5");
    assert_eq!(env_of(main, "INPUT_DIR"), job::INPUT_DIR);
    let pod = pod_for(&kube, &first).await;
    wait_status(&p, &first, "pending").await;
    kube.set_pod_running(NS, &pod);
    wait_status(&p, &first, "running").await;
    let outputs_url = env_of(&containers(&job)[1], "OUTPUTS_URL");
    let archive = outputs_archive(&[("data.txt", "from first"), ("sub/m.txt", "m")]);
    let put = reqwest::Client::new()
        .put(outputs_url)
        .body(archive)
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{put:?}");
    kube.set_pod_succeeded(NS, &pod);
    assert_eq!(p.wait_terminal(&first, T).await["status"], "succeeded");

    // The second step's init container fetches exactly the first step's outputs, through
    // presigned URLs, into $INPUT_DIR, which the program's container mounts read-only.
    let second = pipeline_step_run(&p, &pipeline_run, "second").await;
    let job = job_for(&kube, &second).await;
    let fetch = &containers(&job)[0];
    assert_eq!(env_of(fetch, "INPUT_DIR"), job::INPUT_DIR);
    let args = fetch.command.clone().unwrap();
    let at = args
        .iter()
        .position(|a| a == "--inputs")
        .expect("an inputs marker");
    let inputs = &args[at + 1..];
    assert_eq!(inputs.len(), 4, "{inputs:?}");
    assert_eq!(inputs[0], "first/data.txt");
    assert_eq!(inputs[2], "first/sub/m.txt");
    let fetched = reqwest::get(&inputs[1]).await.unwrap();
    assert!(fetched.status().is_success());
    assert_eq!(fetched.text().await.unwrap(), "from first");
    assert!(args[2].contains("--inputs"));
    let pod_spec = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let main = &pod_spec.containers[0];
    let input_mount = main
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == job::INPUT_DIR)
        .expect("the program mounts $INPUT_DIR");
    assert_eq!(input_mount.read_only, Some(true));
    assert!(
        pod_spec
            .volumes
            .iter()
            .flatten()
            .any(|v| v.name == input_mount.name && v.empty_dir.is_some())
    );
    let pod = pod_for(&kube, &second).await;
    wait_status(&p, &second, "pending").await;
    kube.set_pod_running(NS, &pod);
    wait_status(&p, &second, "running").await;
    kube.set_pod_succeeded(NS, &pod);
    assert_eq!(p.wait_terminal(&second, T).await["status"], "succeeded");
    let deadline = Instant::now() + T;
    loop {
        let run = p
            .app
            .get(&format!("/api/v1/pipeline-runs/{pipeline_run}"), &p.token)
            .await
            .expect(200);
        if run["status"] == "succeeded" {
            break;
        }
        assert!(Instant::now() < deadline, "{run}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_no_permits(&worker.ctx).await;
    worker.stop().await;
}
