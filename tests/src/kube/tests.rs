//! The stand-in, exercised with the real kube client through its kubeconfig.

use std::time::{Duration, Instant};

use ::kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use ::kube::config::{KubeConfigOptions, Kubeconfig};
use ::kube::runtime::WatchStreamExt;
use ::kube::runtime::watcher::{self, Event};
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;

use super::{Fault, NAMESPACE, StandIn};

const NS: &str = NAMESPACE;

async fn client(s: &StandIn) -> ::kube::Client {
    let kubeconfig = Kubeconfig::read_from(s.kubeconfig()).expect("kubeconfig parses");
    let config = ::kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig loads");
    assert_eq!(config.default_namespace, NS);
    assert_eq!(
        config.cluster_url.to_string().trim_end_matches('/'),
        s.url()
    );
    ::kube::Client::try_from(config).expect("client")
}

/// A Job shaped like the executor's: restricted security context, init container, limits.
fn job(name: &str, run: &str) -> Job {
    let restricted = json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "runAsNonRoot": true,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"}
    });
    serde_json::from_value(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "coderun", "coderun.dev/run-id": run}},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": 60,
            "ttlSecondsAfterFinished": 300,
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/managed-by": "coderun", "coderun.dev/run-id": run}},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": false,
                    "enableServiceLinks": false,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
                    "initContainers": [{
                        "name": "fetch", "image": "curlimages/curl:8.10.1",
                        "args": ["-sSfo", "/work/code.tar.gz", "http://s3/presigned"],
                        "volumeMounts": [{"name": "work", "mountPath": "/work"}],
                        "securityContext": restricted
                    }],
                    "containers": [{
                        "name": "main", "image": "python:3.12-slim",
                        "resources": {"requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "256Mi", "ephemeral-storage": "1Gi"}},
                        "volumeMounts": [{"name": "work", "mountPath": "/work"}, {"name": "tmp", "mountPath": "/tmp"}],
                        "securityContext": restricted
                    }],
                    "volumes": [{"name": "work", "emptyDir": {"sizeLimit": "64Mi"}}, {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
                }
            }
        }
    }))
    .expect("job decodes")
}

fn api_err(e: ::kube::Error) -> Box<::kube::core::Status> {
    match e {
        ::kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn condition(job: &Job, type_: &str) -> Option<(String, String)> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .map(|c| {
            (
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(15), f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

#[tokio::test]
async fn create_makes_the_pod_and_a_second_create_already_exists() {
    let s = StandIn::start().await;
    let jobs: Api<Job> = Api::default_namespaced(client(&s).await);

    let created = jobs
        .create(&PostParams::default(), &job("run-a1", "a1"))
        .await
        .expect("create");
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    let rv: u64 = created
        .metadata
        .resource_version
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv > 0);
    let selector = created.spec.as_ref().unwrap().selector.as_ref().unwrap();
    assert_eq!(
        selector.match_labels.as_ref().unwrap()["batch.kubernetes.io/controller-uid"],
        created.metadata.uid.clone().unwrap()
    );

    let pod_name = s
        .pod_of_job(NS, "run-a1")
        .expect("the job controller made a pod");
    assert!(
        pod_name.starts_with("run-a1-") && pod_name.len() == "run-a1-".len() + 5,
        "{pod_name}"
    );
    let pods: Api<Pod> = Api::default_namespaced(client(&s).await);
    let pod = pods.get(&pod_name).await.expect("pod is served");
    let labels = pod.metadata.labels.clone().unwrap();
    assert_eq!(labels["coderun.dev/run-id"], "a1");
    assert_eq!(labels["job-name"], "run-a1");
    assert_eq!(labels["batch.kubernetes.io/job-name"], "run-a1");
    assert_eq!(
        labels["controller-uid"],
        created.metadata.uid.clone().unwrap()
    );
    let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("Job", "run-a1", Some(true))
    );
    let status = pod.status.clone().unwrap();
    assert_eq!(status.phase.as_deref(), Some("Pending"));
    assert_eq!(status.qos_class.as_deref(), Some("Burstable"));
    for cs in status
        .init_container_statuses
        .unwrap()
        .iter()
        .chain(status.container_statuses.unwrap().iter())
    {
        let waiting = cs.state.as_ref().unwrap().waiting.as_ref().unwrap();
        assert_eq!(waiting.reason.as_deref(), Some("ContainerCreating"));
    }
    // automountServiceAccountToken: false means no token volume was added.
    assert_eq!(
        pod.spec.as_ref().unwrap().volumes.as_ref().unwrap().len(),
        2
    );

    // The job controller recorded the start.
    let got = jobs.get("run-a1").await.unwrap();
    let st = got.status.unwrap();
    assert_eq!((st.active, st.ready), (Some(1), Some(0)));
    assert!(st.start_time.is_some());

    let err = api_err(
        jobs.create(&PostParams::default(), &job("run-a1", "a1"))
            .await
            .unwrap_err(),
    );
    assert!(err.is_already_exists(), "{err:?}");
    assert_eq!(err.code, 409);
    assert_eq!(s.job_creates(), 2);
    assert_eq!(s.pods(NS).len(), 1);

    assert!(jobs.get_opt("nope").await.unwrap().is_none());
    let err = api_err(jobs.get("nope").await.unwrap_err());
    assert!(err.is_not_found());
    assert_eq!(err.message, "jobs.batch \"nope\" not found");

    // dryRun validates but stores nothing.
    let dry = jobs
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &job("run-dry", "d"),
        )
        .await
        .unwrap();
    assert_eq!(dry.metadata.name.as_deref(), Some("run-dry"));
    assert!(s.job(NS, "run-dry").is_none());
    assert_eq!(s.job_creates(), 3);
}

#[tokio::test]
async fn invalid_jobs_are_refused_with_422() {
    let s = StandIn::start().await;
    let jobs: Api<Job> = Api::default_namespaced(client(&s).await);
    let create = |j: Job| {
        let jobs = jobs.clone();
        async move { api_err(jobs.create(&PostParams::default(), &j).await.unwrap_err()) }
    };

    let err = create(job("Run_A", "a")).await;
    assert!(err.is_invalid() && err.code == 422, "{err:?}");
    assert!(err.message.contains("metadata.name"), "{}", err.message);

    let err = create(job(&"r".repeat(64), "a")).await;
    assert!(
        err.is_invalid() && err.message.contains("no more than 63"),
        "{err:?}"
    );

    let err = create(job("run-b", &"x".repeat(64))).await;
    assert!(
        err.is_invalid() && err.message.contains("metadata.labels"),
        "{err:?}"
    );

    let err = create(job("run-b", "-bad")).await;
    assert!(err.is_invalid(), "{err:?}");

    let mut j = job("run-b", "b");
    j.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0]
        .image = None;
    let err = create(j).await;
    assert!(
        err.message
            .contains("spec.template.spec.containers[0].image: Required value"),
        "{}",
        err.message
    );

    let mut j = job("run-b", "b");
    j.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0]
        .name = String::new();
    let err = create(j).await;
    assert!(
        err.message
            .contains("spec.template.spec.containers[0].name: Required value"),
        "{}",
        err.message
    );

    let mut j = job("run-b", "b");
    j.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers
        .clear();
    let err = create(j).await;
    assert!(
        err.message
            .contains("spec.template.spec.containers: Required value"),
        "{}",
        err.message
    );

    let mut j = job("run-b", "b");
    j.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .restart_policy = Some("Always".into());
    let err = create(j).await;
    assert!(
        err.message.contains("Unsupported value: \"Always\""),
        "{}",
        err.message
    );

    let mut j = job("run-b", "b");
    j.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .restart_policy = None;
    assert!(
        create(j)
            .await
            .message
            .contains("spec.template.spec.restartPolicy: Required value")
    );

    let mut j = job("run-b", "b");
    j.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .volumes = None;
    assert!(
        create(j)
            .await
            .message
            .contains("volumeMounts[0].name: Not found")
    );

    let mut j = job("run-b", "b");
    let limits = j
        .spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0]
        .resources
        .as_mut()
        .unwrap();
    limits.requests.as_mut().unwrap().insert(
        "memory".into(),
        k8s_openapi::apimachinery::pkg::api::resource::Quantity("1Gi".into()),
    );
    assert!(
        create(j)
            .await
            .message
            .contains("must be less than or equal to memory limit")
    );

    assert_eq!(s.job_creates(), 11);
    assert!(s.jobs(NS).is_empty());
    assert!(s.pods(NS).is_empty());

    // Two errors at once are listed together, with causes.
    let mut j = job("Bad", "b");
    j.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .restart_policy = Some("Always".into());
    let err = create(j).await;
    assert!(
        err.message.starts_with("Job.batch \"Bad\" is invalid: ["),
        "{}",
        err.message
    );
    assert_eq!(err.details.unwrap().causes.len(), 2);
}

#[tokio::test]
async fn lists_honour_label_selectors() {
    let s = StandIn::start().await;
    let c = client(&s).await;
    let jobs: Api<Job> = Api::default_namespaced(c.clone());
    for (name, run) in [("run-l1", "l1"), ("run-l2", "l2"), ("run-l3", "l3")] {
        jobs.create(&PostParams::default(), &job(name, run))
            .await
            .unwrap();
    }
    let other: Api<Job> = Api::namespaced(c.clone(), "elsewhere");
    other
        .create(&PostParams::default(), &job("run-l1", "l1"))
        .await
        .unwrap();

    let names = |l: ::kube::core::ObjectList<Job>| {
        l.items
            .into_iter()
            .map(|j| j.metadata.name.unwrap())
            .collect::<Vec<_>>()
    };
    let all = jobs.list(&ListParams::default()).await.unwrap();
    let rv: u64 = all
        .metadata
        .resource_version
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(rv, s.resource_version());
    assert_eq!(names(all), ["run-l1", "run-l2", "run-l3"]);
    assert_eq!(
        names(
            jobs.list(&ListParams::default().labels("coderun.dev/run-id=l2"))
                .await
                .unwrap()
        ),
        ["run-l2"]
    );
    assert_eq!(
        names(
            jobs.list(
                &ListParams::default()
                    .labels("app.kubernetes.io/managed-by=coderun,coderun.dev/run-id!=l2")
            )
            .await
            .unwrap()
        ),
        ["run-l1", "run-l3"]
    );
    assert_eq!(
        names(
            jobs.list(&ListParams::default().labels("coderun.dev/run-id"))
                .await
                .unwrap()
        )
        .len(),
        3
    );
    assert!(
        names(
            jobs.list(&ListParams::default().labels("nothing"))
                .await
                .unwrap()
        )
        .is_empty()
    );
    assert_eq!(
        names(
            jobs.list(&ListParams::default().labels("coderun.dev/run-id in (l1,l3)"))
                .await
                .unwrap()
        ),
        ["run-l1", "run-l3"]
    );
    assert_eq!(
        names(
            jobs.list(&ListParams::default().fields("metadata.name=run-l3"))
                .await
                .unwrap()
        ),
        ["run-l3"]
    );
    let err = api_err(
        jobs.list(&ListParams::default().labels("bad key=x"))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 400);

    // Pages.
    let page = jobs.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(page.items.len(), 2);
    let token = page.metadata.continue_.clone().unwrap();
    let rest = jobs
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(rest), ["run-l3"]);

    let pods: Api<Pod> = Api::default_namespaced(c.clone());
    let p = pods
        .list(&ListParams::default().labels("job-name=run-l2"))
        .await
        .unwrap();
    assert_eq!(p.items.len(), 1);
    assert_eq!(
        Some(p.items[0].metadata.name.clone().unwrap()),
        s.pod_of_job(NS, "run-l2")
    );
    let everywhere: Api<Job> = Api::all(c);
    assert_eq!(
        everywhere
            .list(&ListParams::default().labels("coderun.dev/run-id=l1"))
            .await
            .unwrap()
            .items
            .len(),
        2
    );
}

#[tokio::test]
async fn watchers_follow_pod_and_job_to_completion() {
    let s = StandIn::start().await;
    let c = client(&s).await;
    let jobs: Api<Job> = Api::default_namespaced(c.clone());
    let pods: Api<Pod> = Api::default_namespaced(c.clone());
    // One job before the watch starts, which the selector excludes.
    jobs.create(&PostParams::default(), &job("run-other", "other"))
        .await
        .unwrap();

    let cfg = watcher::Config::default().labels("coderun.dev/run-id=w1");
    let mut job_events = watcher::watcher(jobs.clone(), cfg.clone())
        .default_backoff()
        .applied_objects()
        .boxed();
    let mut pod_events = watcher::watcher(pods.clone(), cfg)
        .default_backoff()
        .applied_objects()
        .boxed();

    jobs.create(&PostParams::default(), &job("run-w1", "w1"))
        .await
        .unwrap();
    let first = within("job added", job_events.try_next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.metadata.name.as_deref(), Some("run-w1"));
    let pod = within("pod added", pod_events.try_next())
        .await
        .unwrap()
        .unwrap();
    let pod_name = pod.metadata.name.clone().unwrap();
    assert_eq!(pod.status.unwrap().phase.as_deref(), Some("Pending"));

    s.set_pod_running(NS, &pod_name);
    let running = within("pod running", pod_events.try_next())
        .await
        .unwrap()
        .unwrap();
    let status = running.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert!(status.pod_ip.is_some());
    let init = &status.init_container_statuses.unwrap()[0];
    assert_eq!(
        init.state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code,
        0
    );
    assert!(
        status.container_statuses.unwrap()[0]
            .state
            .as_ref()
            .unwrap()
            .running
            .is_some()
    );

    s.set_pod_succeeded(NS, &pod_name);
    let done = within("pod succeeded", pod_events.try_next())
        .await
        .unwrap()
        .unwrap();
    let status = done.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Succeeded"));
    let t = status.container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));

    let complete = within("job complete", async {
        loop {
            let j = job_events.try_next().await.unwrap().unwrap();
            assert_eq!(
                j.metadata.name.as_deref(),
                Some("run-w1"),
                "the selector excludes other jobs"
            );
            if condition(&j, "Complete").is_some() {
                break j;
            }
        }
    })
    .await;
    let st = complete.status.clone().unwrap();
    assert_eq!((st.succeeded, st.active), (Some(1), Some(0)));
    assert!(st.completion_time.is_some());
    assert_eq!(
        condition(&complete, "Complete").unwrap().0,
        "CompletionsReached"
    );
    assert!(condition(&complete, "SuccessCriteriaMet").is_some());
}

#[tokio::test]
async fn watcher_relists_after_history_expires_and_keeps_working() {
    let s = StandIn::start().await;
    let c = client(&s).await;
    let jobs: Api<Job> = Api::default_namespaced(c);
    jobs.create(&PostParams::default(), &job("run-e0", "e"))
        .await
        .unwrap();
    let mut events = watcher::watcher(
        jobs.clone(),
        watcher::Config::default().labels("coderun.dev/run-id=e"),
    )
    .boxed();

    macro_rules! next {
        () => {
            within("watch event", events.next())
                .await
                .expect("stream continues")
        };
    }
    assert!(matches!(next!().unwrap(), Event::Init));
    assert!(
        matches!(next!().unwrap(), Event::InitApply(j) if j.metadata.name.as_deref() == Some("run-e0"))
    );
    assert!(matches!(next!().unwrap(), Event::InitDone));

    jobs.create(&PostParams::default(), &job("run-e1", "e"))
        .await
        .unwrap();
    // ADDED, then the job controller's status update.
    assert!(
        matches!(next!().unwrap(), Event::Apply(j) if j.metadata.name.as_deref() == Some("run-e1"))
    );
    assert!(
        matches!(next!().unwrap(), Event::Apply(j) if j.metadata.name.as_deref() == Some("run-e1"))
    );

    let lists_before = s
        .requests()
        .iter()
        .filter(|r| {
            r.starts_with("GET /apis/batch/v1/namespaces/coderun-jobs/jobs?")
                && !r.contains("watch=true")
        })
        .count();
    s.expire_history();
    // The gap: run-e0 goes while no watch is open, so it arrives as absence, not as Delete.
    jobs.delete("run-e0", &DeleteParams::background())
        .await
        .unwrap();

    // The resumed watch gets 410 Expired; the watcher reports it, then re-lists.
    let err = next!().unwrap_err();
    assert!(
        format!("{err:?}").contains("410") || format!("{err}").contains("Expired"),
        "{err:?}"
    );
    assert!(matches!(next!().unwrap(), Event::Init));
    assert!(
        matches!(next!().unwrap(), Event::InitApply(j) if j.metadata.name.as_deref() == Some("run-e1"))
    );
    assert!(matches!(next!().unwrap(), Event::InitDone));
    let lists_after = s
        .requests()
        .iter()
        .filter(|r| {
            r.starts_with("GET /apis/batch/v1/namespaces/coderun-jobs/jobs?")
                && !r.contains("watch=true")
        })
        .count();
    assert_eq!(lists_after, lists_before + 1);

    // And it still delivers later changes.
    let pod = s.pod_of_job(NS, "run-e1").unwrap();
    s.set_pod_failed(NS, &pod, 137, "OOMKilled");
    let failed = within("failed", async {
        loop {
            if let Event::Apply(j) = next!().unwrap()
                && condition(&j, "Failed").is_some()
            {
                break j;
            }
        }
    })
    .await;
    assert_eq!(
        condition(&failed, "Failed").unwrap().0,
        "BackoffLimitExceeded"
    );

    // A dropped connection without expiry: the watcher resumes and misses nothing.
    s.end_watches();
    jobs.create(&PostParams::default(), &job("run-e2", "e"))
        .await
        .unwrap();
    assert!(
        matches!(next!().unwrap(), Event::Apply(j) if j.metadata.name.as_deref() == Some("run-e2"))
    );
}

#[tokio::test]
async fn raw_watch_from_an_expired_version_gets_410_and_streaming_lists_work() {
    let s = StandIn::start().await;
    let c = client(&s).await;
    let jobs: Api<Job> = Api::default_namespaced(c);
    let created = jobs
        .create(&PostParams::default(), &job("run-r1", "r"))
        .await
        .unwrap();
    let old_rv = created.metadata.resource_version.unwrap();
    s.expire_history();
    let mut stream = jobs
        .watch(&::kube::api::WatchParams::default(), &old_rv)
        .await
        .unwrap()
        .boxed();
    match within("error event", stream.try_next()).await.unwrap() {
        Some(::kube::core::WatchEvent::Error(e)) => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"))
        }
        other => panic!("expected 410, got {other:?}"),
    }
    assert!(within("close", stream.try_next()).await.unwrap().is_none());

    // Streaming lists (sendInitialEvents + the initial-events-end bookmark).
    let mut events =
        watcher::watcher(jobs.clone(), watcher::Config::default().streaming_lists()).boxed();
    assert!(matches!(
        within("init", events.next()).await.unwrap().unwrap(),
        Event::Init
    ));
    assert!(matches!(
        within("apply", events.next()).await.unwrap().unwrap(),
        Event::InitApply(_)
    ));
    assert!(matches!(
        within("done", events.next()).await.unwrap().unwrap(),
        Event::InitDone
    ));
    let pod = s.pod_of_job(NS, "run-r1").unwrap();
    s.set_pod_running(NS, &pod);
    assert!(matches!(
        within("apply", events.next()).await.unwrap().unwrap(),
        Event::Apply(_)
    ));
}

#[tokio::test]
async fn logs_whole_and_followed_until_the_pod_ends() {
    let s = StandIn::start().await;
    let c = client(&s).await;
    let jobs: Api<Job> = Api::default_namespaced(c.clone());
    let pods: Api<Pod> = Api::default_namespaced(c);
    jobs.create(&PostParams::default(), &job("run-g1", "g1"))
        .await
        .unwrap();
    let pod = s.pod_of_job(NS, "run-g1").unwrap();
    let main = LogParams {
        container: Some("main".into()),
        ..Default::default()
    };

    let err = api_err(pods.logs(&pod, &main).await.unwrap_err());
    assert_eq!(err.code, 400);
    assert!(
        err.message
            .contains("is waiting to start: ContainerCreating"),
        "{}",
        err.message
    );
    // One main container: it is the default (init containers do not count).
    let err = api_err(pods.logs(&pod, &LogParams::default()).await.unwrap_err());
    assert!(
        err.message.contains("container \"main\" in pod"),
        "{}",
        err.message
    );
    let err = api_err(
        pods.logs(
            &pod,
            &LogParams {
                container: Some("nope".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err(),
    );
    assert!(
        err.message.contains("is not valid for pod"),
        "{}",
        err.message
    );

    s.set_pod_running(NS, &pod);
    s.append_log(NS, &pod, "one\n");
    s.append_container_log(NS, &pod, "fetch", "downloaded\n");
    assert_eq!(pods.logs(&pod, &main).await.unwrap(), "one\n");
    assert_eq!(
        pods.logs(&pod, &LogParams::default()).await.unwrap(),
        "one\n"
    );
    let init = LogParams {
        container: Some("fetch".into()),
        ..Default::default()
    };
    assert_eq!(pods.logs(&pod, &init).await.unwrap(), "downloaded\n");
    let limited = LogParams {
        limit_bytes: Some(2),
        ..main.clone()
    };
    assert_eq!(pods.logs(&pod, &limited).await.unwrap(), "on");

    let follow = LogParams {
        follow: true,
        ..main.clone()
    };
    let reader = pods.log_stream(&pod, &follow).await.unwrap();
    let collect =
        tokio::spawn(async move { reader.lines().try_collect::<Vec<String>>().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.append_log(NS, &pod, "two\n");
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.append_log(NS, &pod, "three\n");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !collect.is_finished(),
        "follow stays open while the container runs"
    );
    s.set_pod_succeeded(NS, &pod);
    let lines = within("follow ends with the pod", collect).await.unwrap();
    assert_eq!(lines, ["one", "two", "three"]);

    // After the pod ended, whole logs are still readable (until the TTL deletes it).
    assert_eq!(pods.logs(&pod, &main).await.unwrap(), "one\ntwo\nthree\n");
    s.run_ttl();
    assert!(s.job(NS, "run-g1").is_some(), "the TTL has not elapsed");
    assert_eq!(s.run_ttl_after(Duration::from_secs(301)), ["run-g1"]);
    assert!(s.job(NS, "run-g1").is_none());
    assert!(api_err(pods.logs(&pod, &main).await.unwrap_err()).is_not_found());
    assert!(s.deletes().is_empty(), "TTL deletions are not API requests");
}

#[tokio::test]
async fn delete_honours_the_propagation_policy() {
    let s = StandIn::start().await;
    let c = client(&s).await;
    let jobs: Api<Job> = Api::default_namespaced(c.clone());
    let pods: Api<Pod> = Api::default_namespaced(c);
    for name in ["run-d1", "run-d2", "run-d3"] {
        jobs.create(&PostParams::default(), &job(name, name))
            .await
            .unwrap();
    }
    let p1 = s.pod_of_job(NS, "run-d1").unwrap();
    let p2 = s.pod_of_job(NS, "run-d2").unwrap();
    let p3 = s.pod_of_job(NS, "run-d3").unwrap();

    let res = jobs
        .delete("run-d1", &DeleteParams::background())
        .await
        .unwrap();
    assert!(res.is_right(), "background deletion is immediate: a Status");
    assert!(s.job(NS, "run-d1").is_none());
    assert!(
        pods.get_opt(&p1).await.unwrap().is_none(),
        "background deletes the pods"
    );

    let res = jobs
        .delete("run-d2", &DeleteParams::default())
        .await
        .unwrap();
    assert!(res.is_left());
    assert!(s.job(NS, "run-d2").is_none());
    let orphan = pods.get(&p2).await.expect("no policy orphans the pods");
    assert!(orphan.metadata.owner_references.is_none());

    jobs.delete("run-d3", &DeleteParams::foreground())
        .await
        .unwrap();
    assert!(s.pod(NS, &p3).is_none());

    let err = api_err(
        jobs.delete("run-d3", &DeleteParams::background())
            .await
            .unwrap_err(),
    );
    assert!(err.is_not_found());
    pods.delete(&p2, &DeleteParams::background()).await.unwrap();
    assert!(s.pod(NS, &p2).is_none());

    assert_eq!(
        s.deletes(),
        [
            (
                "Job".to_string(),
                "run-d1".to_string(),
                Some("Background".to_string())
            ),
            ("Job".to_string(), "run-d2".to_string(), None),
            (
                "Job".to_string(),
                "run-d3".to_string(),
                Some("Foreground".to_string())
            ),
            (
                "Job".to_string(),
                "run-d3".to_string(),
                Some("Background".to_string())
            ),
            (
                "Pod".to_string(),
                p2.clone(),
                Some("Background".to_string())
            ),
        ]
    );
}

#[tokio::test]
async fn injected_faults_and_delays() {
    let s = StandIn::start().await;
    let jobs: Api<Job> = Api::default_namespaced(client(&s).await);

    s.inject(Fault::Status {
        method: "POST",
        path_contains: "/jobs".into(),
        status: 500,
        times: 1,
    });
    let err = api_err(
        jobs.create(&PostParams::default(), &job("run-f1", "f1"))
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (500, "InternalError"));
    assert!(
        s.job(NS, "run-f1").is_none(),
        "a refused create stores nothing"
    );
    jobs.create(&PostParams::default(), &job("run-f1", "f1"))
        .await
        .expect("the second try succeeds");
    assert_eq!(s.job_creates(), 2);

    // kube 5 retries 429, 503 and 504 itself (Config::default_retry, honouring Retry-After).
    s.inject(Fault::Status {
        method: "POST",
        path_contains: "/jobs".into(),
        status: 429,
        times: 1,
    });
    jobs.create(&PostParams::default(), &job("run-f2", "f2"))
        .await
        .expect("retried by kube");
    assert_eq!(s.job_creates(), 4);

    // A lost response: the Job was created though the client saw 503; kube's own retry then
    // meets AlreadyExists, which is what the caller gets.
    s.inject_after_commit("POST", "/jobs", 503, 1);
    let err = api_err(
        jobs.create(&PostParams::default(), &job("run-f3", "f3"))
            .await
            .unwrap_err(),
    );
    assert!(err.is_already_exists(), "{err:?}");
    assert!(s.job(NS, "run-f3").is_some());
    assert_eq!(s.job_creates(), 6);

    s.inject(Fault::Delay {
        method: "GET",
        path_contains: "/jobs/run-f1".into(),
        delay: Duration::from_millis(400),
        times: 1,
    });
    let started = Instant::now();
    jobs.get("run-f1").await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(400));
    let started = Instant::now();
    jobs.get("run-f1").await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "the delay was used up"
    );
}

#[tokio::test]
async fn failure_signals_look_like_a_cluster() {
    let s = StandIn::start().await;
    let c = client(&s).await;
    let jobs: Api<Job> = Api::default_namespaced(c.clone());
    let pods: Api<Pod> = Api::default_namespaced(c);

    // OOM.
    jobs.create(&PostParams::default(), &job("run-s1", "s1"))
        .await
        .unwrap();
    let p = s.pod_of_job(NS, "run-s1").unwrap();
    s.set_pod_running(NS, &p);
    s.set_pod_failed(NS, &p, 137, "OOMKilled");
    let t = pods
        .get(&p)
        .await
        .unwrap()
        .status
        .unwrap()
        .container_statuses
        .unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!((t.exit_code, t.reason.as_deref()), (137, Some("OOMKilled")));
    let j = jobs.get("run-s1").await.unwrap();
    assert_eq!(condition(&j, "Failed").unwrap().0, "BackoffLimitExceeded");
    assert_eq!(j.status.as_ref().unwrap().failed, Some(1));
    assert!(condition(&j, "FailureTarget").is_some());

    // Deadline: read from the Job; the pod is gone.
    jobs.create(&PostParams::default(), &job("run-s2", "s2"))
        .await
        .unwrap();
    let p = s.pod_of_job(NS, "run-s2").unwrap();
    s.set_pod_running(NS, &p);
    s.job_deadline_exceeded(NS, "run-s2");
    let j = jobs.get("run-s2").await.unwrap();
    assert_eq!(condition(&j, "Failed").unwrap().0, "DeadlineExceeded");
    assert!(pods.get_opt(&p).await.unwrap().is_none());

    // Eviction and disruption.
    jobs.create(&PostParams::default(), &job("run-s3", "s3"))
        .await
        .unwrap();
    let p = s.pod_of_job(NS, "run-s3").unwrap();
    s.set_pod_running(NS, &p);
    s.evict_pod(NS, &p);
    let st = pods.get(&p).await.unwrap().status.unwrap();
    assert_eq!(
        (st.phase.as_deref(), st.reason.as_deref()),
        (Some("Failed"), Some("Evicted"))
    );
    jobs.create(&PostParams::default(), &job("run-s4", "s4"))
        .await
        .unwrap();
    let p = s.pod_of_job(NS, "run-s4").unwrap();
    s.set_pod_running(NS, &p);
    s.disrupt_pod(NS, &p);
    let st = pods.get(&p).await.unwrap().status.unwrap();
    assert!(
        st.conditions
            .unwrap()
            .iter()
            .any(|c| c.type_ == "DisruptionTarget" && c.status == "True")
    );

    // Image pull: the pod stays Pending; the Job stays active.
    jobs.create(&PostParams::default(), &job("run-s5", "s5"))
        .await
        .unwrap();
    let p = s.pod_of_job(NS, "run-s5").unwrap();
    s.set_image_pull_failure(NS, &p, "ImagePullBackOff");
    let st = pods.get(&p).await.unwrap().status.unwrap();
    assert_eq!(st.phase.as_deref(), Some("Pending"));
    let w = st.container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .waiting
        .unwrap();
    assert_eq!(w.reason.as_deref(), Some("ImagePullBackOff"));
    let err = api_err(
        pods.logs(
            &p,
            &LogParams {
                container: Some("main".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err(),
    );
    assert!(
        err.message.contains("trying and failing to pull image"),
        "{}",
        err.message
    );
    assert!(condition(&jobs.get("run-s5").await.unwrap(), "Failed").is_none());

    // backoffLimit above zero: a failure makes a replacement pod.
    let mut j = job("run-s6", "s6");
    j.spec.as_mut().unwrap().backoff_limit = Some(1);
    jobs.create(&PostParams::default(), &j).await.unwrap();
    let first = s.pod_of_job(NS, "run-s6").unwrap();
    s.set_pod_failed(NS, &first, 1, "Error");
    let pods_of = s.pods_of_job(NS, "run-s6");
    assert_eq!(pods_of.len(), 2);
    assert_eq!(pods_of[0], first);
    assert!(condition(&s.job(NS, "run-s6").unwrap(), "Failed").is_none());
    s.set_pod_failed(NS, &pods_of[1], 1, "Error");
    assert!(condition(&s.job(NS, "run-s6").unwrap(), "Failed").is_some());
}

#[tokio::test]
async fn pod_security_restricted_and_auth_and_network_policies() {
    let s = StandIn::start().await;
    let c = client(&s).await;
    let jobs: Api<Job> = Api::default_namespaced(c.clone());
    s.enforce_pod_security_restricted(NS);
    jobs.create(&PostParams::default(), &job("run-p1", "p1"))
        .await
        .unwrap();
    assert!(
        s.pod_of_job(NS, "run-p1").is_some(),
        "the executor-shaped pod passes restricted"
    );
    let mut bad = job("run-p2", "p2");
    bad.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0]
        .security_context = None;
    jobs.create(&PostParams::default(), &bad).await.unwrap();
    assert!(s.pod_of_job(NS, "run-p2").is_none());
    let failures = s.pod_create_failures();
    assert_eq!(failures.len(), 1);
    assert!(
        failures[0].2.contains("allowPrivilegeEscalation != false"),
        "{}",
        failures[0].2
    );

    // No token: 401, as a cluster answers.
    let resp = reqwest::get(format!("{}/apis/batch/v1/namespaces/{NS}/jobs", s.url()))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["reason"], "Unauthorized");
    let unknown = api_err(
        c.request::<serde_json::Value>(
            http::Request::get("/apis/apps/v1/deployments")
                .body(vec![])
                .unwrap(),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(unknown.code, 404);

    // NetworkPolicy by server-side apply, twice (create, then update).
    let nps: Api<NetworkPolicy> = Api::default_namespaced(c);
    let np: NetworkPolicy = serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "coderun-deny-egress"},
        "spec": {"podSelector": {}, "policyTypes": ["Egress"]}
    }))
    .unwrap();
    let pp = PatchParams::apply("coderun").force();
    nps.patch("coderun-deny-egress", &pp, &Patch::Apply(&np))
        .await
        .unwrap();
    nps.patch("coderun-deny-egress", &pp, &Patch::Apply(&np))
        .await
        .unwrap();
    let stored = s.network_policies(NS);
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].spec.as_ref().unwrap().policy_types.as_deref(),
        Some(&["Egress".to_string()][..])
    );
    let err = api_err(nps.create(&PostParams::default(), &np).await.unwrap_err());
    assert!(err.is_already_exists());
}
