//! The run lifecycle (`coderun_shared::lifecycle`) called directly, without HTTP, against the
//! harness's real Postgres, Redis and S3: its steps keep their order (nothing stored before the
//! checks pass, the snapshot before the row, the row before the stream entry), retry reuses the
//! snapshot, stop wins, and an `Idempotency-Key` replays its run.

use coderun_shared::domain::Role;
use coderun_shared::lifecycle::{
    Access, Actor, Error, Lifecycle, Submission, access, submit::Request,
};
use coderun_shared::objects::RunObjects;
use coderun_shared::runs::{self, Change, RunStatus};
use coderun_shared::storage::Storage;
use coderun_tests::app::{TestApp, spawn_app};
use fred::interfaces::{ClientLike, EventInterface, KeysInterface, PubsubInterface};
use uuid::Uuid;

/// A new user with `role` (created through the API, as any user is) and one python task.
async fn actor_with_task(app: &TestApp, role: Role) -> (Actor, Uuid) {
    let name = match role {
        Role::Student => "student",
        Role::Teacher => "teacher",
        Role::Admin => "admin",
    };
    let (id, token) = app.user(name).await;
    let task = app.task(&token, "Lab", "python").await;
    let actor = Actor {
        id: id.parse().unwrap(),
        role,
    };
    (actor, task["id"].as_str().unwrap().parse().unwrap())
}

fn defaults(app: &TestApp) -> Submission {
    Submission::check(&app.state.settings, Request::default()).unwrap()
}

/// The run ids the stream holds, oldest first.
async fn enqueued(app: &TestApp) -> Vec<Uuid> {
    app.stream_entries()
        .await
        .into_iter()
        .map(|(_, fields)| fields["run_id"].parse().unwrap())
        .collect()
}

async fn run_count(app: &TestApp) -> usize {
    app.snapshot().await["runs"].as_array().unwrap().len()
}

#[tokio::test]
async fn a_submission_is_snapshotted_then_committed_then_enqueued() {
    let app = spawn_app().await;
    let (actor, task_id) = actor_with_task(&app, Role::Student).await;
    let lifecycle = app.state.lifecycle();

    let accepted = lifecycle
        .submit(&actor, task_id, defaults(&app), None)
        .await
        .unwrap();
    assert!(!accepted.replayed);
    let run = accepted.run;
    assert_eq!(run.status, RunStatus::Queued);
    assert_eq!(run.snapshot_of, run.id);
    assert_eq!(
        app.objects("snapshots/").await,
        vec![RunObjects::snapshot(&run.code_sha256)],
        "the row names the snapshot the bucket holds"
    );
    assert_eq!(enqueued(&app).await, vec![run.id]);
    let events = runs::events(&app.db, run.id).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].phase, RunStatus::Queued);
    assert_eq!(events[0].detail, "submitted");
}

#[tokio::test]
async fn a_snapshot_that_cannot_be_stored_commits_no_run_and_enqueues_nothing() {
    let app = spawn_app().await;
    let (actor, task_id) = actor_with_task(&app, Role::Student).await;
    // The same bucket under an access key the server does not know: every upload is refused.
    let mut settings = app.state.settings.storage.clone();
    settings.access_key = format!("unknown-{}", Uuid::new_v4().simple());
    let refusing = Storage::new(&settings);
    let lifecycle = Lifecycle {
        storage: &refusing,
        ..app.state.lifecycle()
    };

    let refused = lifecycle
        .submit(&actor, task_id, defaults(&app), None)
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::Snapshot(_)), "{refused:?}");
    assert_eq!(run_count(&app).await, 0, "no row without its snapshot");
    assert!(enqueued(&app).await.is_empty());
    assert!(app.objects("").await.is_empty());
}

#[tokio::test]
async fn a_committed_run_survives_a_stream_entry_that_could_not_be_added() {
    let app = spawn_app().await;
    let (actor, task_id) = actor_with_task(&app, Role::Student).await;
    // A value of the wrong type at the stream's key: every XADD to it fails.
    let stream = app.state.keys.stream();
    let _: () = app
        .state
        .redis
        .set(&stream, "not a stream", None, None, false)
        .await
        .unwrap();

    let run = app
        .state
        .lifecycle()
        .submit(&actor, task_id, defaults(&app), None)
        .await
        .expect("the run is accepted: its row is committed")
        .run;
    let stored = runs::get(&app.db, run.id).await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::Queued);
    assert!(
        runs::active(&app.db)
            .await
            .unwrap()
            .iter()
            .any(|r| r.id == run.id),
        "the reconciler finds it among the active runs and enqueues it"
    );
    let left: String = app.state.redis.get(&stream).await.unwrap();
    assert_eq!(left, "not a stream");
}

#[tokio::test]
async fn a_refused_submission_stores_nothing_anywhere() {
    let app = spawn_app().await;
    let (actor, task_id) = actor_with_task(&app, Role::Student).await;
    let lifecycle = app.state.lifecycle();
    let first = lifecycle
        .submit(&actor, task_id, defaults(&app), None)
        .await
        .unwrap()
        .run;
    let before = app.stored().await;

    let busy = lifecycle
        .submit(&actor, task_id, defaults(&app), None)
        .await
        .unwrap_err();
    assert!(
        matches!(busy, Error::Run(runs::Error::TaskBusy)),
        "{busy:?}"
    );
    let unknown_dataset = Submission::check(
        &app.state.settings,
        Request {
            datasets: Some(vec!["nope".into()]),
            ..Request::default()
        },
    )
    .unwrap();
    let refused = lifecycle
        .submit(&actor, task_id, unknown_dataset, None)
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::Invalid(_)), "{refused:?}");
    assert_eq!(app.stored().await, before, "nothing stored after {first:?}");
}

#[tokio::test]
async fn checking_a_submission_refuses_what_the_settings_do_not_offer() {
    let app = spawn_app().await;
    let settings = &app.state.settings;
    for (request, refusal) in [
        (
            Request {
                spec: Some("huge".into()),
                ..Request::default()
            },
            "unknown spec `huge`",
        ),
        (
            Request {
                remarks: Some("x".repeat(2001)),
                ..Request::default()
            },
            "remarks must be at most 2000",
        ),
        (
            Request {
                datasets: Some(vec!["a".into(), "a".into()]),
                ..Request::default()
            },
            "dataset `a` is named twice",
        ),
        (
            Request {
                command: Some("  ".into()),
                ..Request::default()
            },
            "command must be",
        ),
    ] {
        let error = Submission::check(settings, request).unwrap_err();
        assert!(
            matches!(&error, Error::Invalid(m) if m.starts_with(refusal)),
            "{error:?} does not start with {refusal:?}"
        );
    }
}

#[tokio::test]
async fn a_retry_reuses_the_snapshot_and_only_follows_a_finished_run() {
    let app = spawn_app().await;
    let (actor, task_id) = actor_with_task(&app, Role::Student).await;
    let lifecycle = app.state.lifecycle();
    let original = lifecycle
        .submit(&actor, task_id, defaults(&app), None)
        .await
        .unwrap()
        .run;

    let early = lifecycle
        .retry(&actor, original.id, None)
        .await
        .unwrap_err();
    assert!(
        matches!(early, Error::Run(runs::Error::NotFinished)),
        "{early:?}"
    );

    lifecycle.stop(&actor, original.id).await.unwrap();
    let retry = lifecycle
        .retry(&actor, original.id, None)
        .await
        .unwrap()
        .run;
    assert_eq!(retry.retry_of, Some(original.id));
    assert_eq!(retry.snapshot_of, original.snapshot_of);
    assert_eq!(retry.code_sha256, original.code_sha256);
    assert_eq!(retry.command, original.command);
    assert_eq!(enqueued(&app).await, vec![original.id, retry.id]);
    assert_eq!(
        app.objects("snapshots/").await.len(),
        1,
        "nothing uploaded again"
    );
    let events = runs::events(&app.db, retry.id).await.unwrap();
    assert_eq!(events[0].detail, format!("retry of {}", original.id));
}

#[tokio::test]
async fn stop_cancels_a_queued_run_and_announces_a_launched_one() {
    let app = spawn_app().await;
    let (actor, task_id) = actor_with_task(&app, Role::Student).await;
    let lifecycle = app.state.lifecycle();
    let subscriber = app.state.redis.clone_new();
    subscriber.init().await.unwrap();
    subscriber.subscribe(app.state.keys.stops()).await.unwrap();
    let mut announcements = subscriber.message_rx();

    let queued = lifecycle
        .submit(&actor, task_id, defaults(&app), None)
        .await
        .unwrap()
        .run;
    let canceled = lifecycle.stop(&actor, queued.id).await.unwrap();
    assert_eq!(canceled.status, RunStatus::Canceled);
    assert_eq!(canceled.reason, Some(runs::Reason::StoppedByUser));

    let launched = lifecycle
        .submit(&actor, task_id, defaults(&app), None)
        .await
        .unwrap()
        .run;
    for phase in [RunStatus::Dispatched, RunStatus::Running] {
        runs::transition(&app.db, launched.id, phase, &Change::by("worker:test"))
            .await
            .unwrap();
    }
    let stopping = lifecycle.stop(&actor, launched.id).await.unwrap();
    assert_eq!(stopping.status, RunStatus::Stopping);
    let message = tokio::time::timeout(std::time::Duration::from_secs(5), announcements.recv())
        .await
        .expect("the stop is announced")
        .unwrap();
    assert_eq!(
        message.value.as_string().as_deref(),
        Some(launched.id.to_string().as_str()),
        "only the launched run is announced: a canceled run has no execution to stop"
    );
    let again = lifecycle.stop(&actor, launched.id).await.unwrap();
    assert_eq!(
        again.status,
        RunStatus::Stopping,
        "stopping twice changes nothing"
    );
    subscriber.quit().await.ok();
}

#[tokio::test]
async fn an_idempotency_key_replays_its_run_and_refuses_another_request() {
    let app = spawn_app().await;
    let (actor, task_id) = actor_with_task(&app, Role::Student).await;
    let lifecycle = app.state.lifecycle();
    let key = || Some("key-1".to_owned());

    let first = lifecycle
        .submit(&actor, task_id, defaults(&app), key())
        .await
        .unwrap();
    let again = lifecycle
        .submit(&actor, task_id, defaults(&app), key())
        .await
        .unwrap();
    assert!(!first.replayed);
    assert!(again.replayed);
    assert_eq!(again.run.id, first.run.id);
    assert_eq!(
        enqueued(&app).await,
        vec![first.run.id],
        "a replay enqueues nothing"
    );

    let other = Submission::check(
        &app.state.settings,
        Request {
            remarks: Some("another request".into()),
            ..Request::default()
        },
    )
    .unwrap();
    let reused = lifecycle
        .submit(&actor, task_id, other, key())
        .await
        .unwrap_err();
    assert!(matches!(reused, Error::IdempotencyKeyReused), "{reused:?}");
    assert_eq!(run_count(&app).await, 1);
}

#[tokio::test]
async fn staff_read_others_runs_but_change_nothing_and_strangers_see_nothing() {
    let app = spawn_app().await;
    let (owner, task_id) = actor_with_task(&app, Role::Student).await;
    let (teacher, _) = actor_with_task(&app, Role::Teacher).await;
    let (stranger, _) = actor_with_task(&app, Role::Student).await;
    let lifecycle = app.state.lifecycle();
    let run = lifecycle
        .submit(&owner, task_id, defaults(&app), None)
        .await
        .unwrap()
        .run;

    assert!(
        access::run(&app.db, &teacher, run.id, Access::Read)
            .await
            .is_ok()
    );
    assert!(matches!(
        lifecycle.stop(&teacher, run.id).await,
        Err(Error::Forbidden(_))
    ));
    assert!(matches!(
        lifecycle
            .submit(&teacher, task_id, defaults(&app), None)
            .await,
        Err(Error::Forbidden(_))
    ));
    assert!(matches!(
        access::run(&app.db, &stranger, run.id, Access::Read).await,
        Err(Error::NotFound("run"))
    ));
    assert!(matches!(
        lifecycle.retry(&stranger, run.id, None).await,
        Err(Error::NotFound("run"))
    ));
    assert_eq!(
        runs::get(&app.db, run.id).await.unwrap().unwrap().status,
        RunStatus::Queued,
        "nobody but the owner changed it"
    );
}

/// `count` more python tasks of the actor's (their default files, so one shared snapshot).
async fn more_tasks(app: &TestApp, actor: &Actor, count: usize) -> Vec<Uuid> {
    let token = app.state.auth.issue(actor.id, actor.role).unwrap().0;
    let mut ids = Vec::new();
    for i in 0..count {
        let task = app.task(&token, &format!("Lab {i}"), "python").await;
        ids.push(task["id"].as_str().unwrap().parse().unwrap());
    }
    ids
}

/// Submits every task at once through `lifecycle`; the results in task order.
async fn submit_all(
    app: &TestApp,
    lifecycle: Lifecycle<'_>,
    actor: &Actor,
    tasks: &[Uuid],
) -> Vec<Result<runs::Run, Error>> {
    let submits = tasks.iter().map(|task| async move {
        lifecycle
            .submit(actor, *task, defaults(app), None)
            .await
            .map(|a| a.run)
    });
    futures::future::join_all(submits).await
}

#[tokio::test]
async fn concurrent_submits_of_one_user_never_exceed_the_active_cap() {
    let app = spawn_app().await;
    let (actor, first) = actor_with_task(&app, Role::Student).await;
    let mut tasks = more_tasks(&app, &actor, 11).await;
    tasks.push(first);
    let mut settings = (*app.state.settings).clone();
    settings.runs.max_active_per_user = 3;
    let lifecycle = Lifecycle {
        settings: &settings,
        ..app.state.lifecycle()
    };

    let results = submit_all(&app, lifecycle, &actor, &tasks).await;
    let accepted: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(accepted.len(), 3, "{results:?}");
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            matches!(refused, Error::Run(runs::Error::TooManyActive { max: 3 })),
            "{refused:?}"
        );
    }
    assert_eq!(run_count(&app).await, 3);
    assert_eq!(enqueued(&app).await.len(), 3, "one entry per accepted run");
}

/// PL/pgSQL prepares each statement of a function once per connection and, after a few calls,
/// may keep a generic plan, made without the parameters' values. Every such plan of
/// `admit_run` must find the task's and the owner's active runs through an index: reading the
/// whole table would make each submission cost as much as the history of every run
/// (migration 0012).
#[tokio::test]
async fn admitting_a_run_reads_runs_through_indexes_even_in_generic_plans() {
    let app = spawn_app().await;
    let (actor, first) = actor_with_task(&app, Role::Student).await;
    let mut tasks = more_tasks(&app, &actor, 2).await;
    tasks.push(first);
    // One connection that plans as that cached plan does, and reads a whole table only where
    // no index serves.
    let generic = one_connection(
        &app,
        &[
            "SET plan_cache_mode = force_generic_plan",
            "SET enable_seqscan = off",
        ],
    )
    .await;
    let lifecycle = Lifecycle {
        db: &generic,
        ..app.state.lifecycle()
    };
    let before = reads_of_runs(&generic).await["seq"];
    for task in &tasks {
        lifecycle
            .submit(&actor, *task, defaults(&app), None)
            .await
            .unwrap();
    }
    // The first task is busy now: refused through the same checks.
    let busy = lifecycle
        .submit(&actor, first, defaults(&app), None)
        .await
        .unwrap_err();
    assert!(
        matches!(busy, Error::Run(runs::Error::TaskBusy)),
        "{busy:?}"
    );
    assert_eq!(reads_of_runs(&generic).await["seq"], before);
}

/// A burst the statistics have not seen yet (autovacuum analyses `runs` a minute later at the
/// soonest): they still say hardly any run is active. A submission's checks must go through
/// the task's and the owner's own entries, never through the index of every active run nor the
/// whole table, or each submission of a burst reads every run queued before it.
#[tokio::test]
async fn admitting_after_a_burst_the_statistics_missed_reads_only_its_own_entries() {
    let app = spawn_app().await;
    let (actor, task) = actor_with_task(&app, Role::Student).await;
    let (other, _) = actor_with_task(&app, Role::Student).await;
    let db = &app.state.db;
    // A history of finished runs, analysed: "hardly any run is active" …
    runs_of_new_tasks(db, other.id, "Done", "canceled").await;
    sqlx::query("ANALYZE runs").execute(db).await.unwrap();
    // … then a burst of queued runs that the statistics have not seen.
    runs_of_new_tasks(db, other.id, "Burst", "queued").await;
    // One connection, so that its reads can be counted.
    let one = one_connection(&app, &[]).await;
    let lifecycle = Lifecycle {
        db: &one,
        ..app.state.lifecycle()
    };
    let before = reads_of_runs(&one).await;
    lifecycle
        .submit(&actor, task, defaults(&app), None)
        .await
        .unwrap();
    let after = reads_of_runs(&one).await;
    let own = [
        "runs_pkey",
        "runs_task_created",
        "runs_owner_active",
        "runs_owner_kept",
        "runs_one_active_per_task",
    ];
    for (how, count) in &after {
        if !own.contains(&how.as_str()) {
            assert_eq!(
                before.get(how),
                Some(count),
                "{how}: {before:?} -> {after:?}"
            );
        }
    }
}

/// 3,000 new tasks of `owner`'s, each with one run in `status`, written straight to the table.
async fn runs_of_new_tasks(db: &sqlx::PgPool, owner: Uuid, name: &str, status: &str) {
    sqlx::query(
        "WITH t AS (
             INSERT INTO tasks (id, owner_id, name, language)
             SELECT gen_random_uuid(), $1, $2 || ' ' || g, 'python'
             FROM generate_series(1, 3000) g
             RETURNING id)
         INSERT INTO runs (id, task_id, owner_id, status, command, language, image, spec_name,
                           spec, snapshot_of, code_sha256)
         SELECT gen_random_uuid(), t.id, $1, $3, 'true', 'python', 'python', 'default', '{}',
                t.id, 'none' FROM t",
    )
    .bind(owner)
    .bind(name)
    .bind(status)
    .execute(db)
    .await
    .unwrap();
}

/// A pool of one connection to the app's database (so that its reads can be counted), which
/// runs `settings` when it connects.
async fn one_connection(app: &TestApp, settings: &'static [&'static str]) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                for setting in settings {
                    sqlx::query(*setting).execute(&mut *conn).await?;
                }
                Ok(())
            })
        })
        .connect_with((*app.state.db.connect_options()).clone())
        .await
        .unwrap()
}

/// Per index of `runs` (and `seq` for the whole table), how many scans the connection of `pool`
/// (one) has made.
async fn reads_of_runs(pool: &sqlx::PgPool) -> std::collections::BTreeMap<String, i64> {
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query_as(
        "SELECT indexrelname::text, idx_scan FROM pg_stat_user_indexes WHERE relname = 'runs'
         UNION ALL SELECT 'seq', seq_scan FROM pg_stat_user_tables WHERE relname = 'runs'",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

/// The partial indexes on active runs, and `admit_run`'s count that relies on them, name exactly
/// the statuses the code calls active: "one active run per task" means what the code means,
/// and the checks that pass `RunStatus::ACTIVE` can use the indexes.
#[tokio::test]
async fn the_active_run_indexes_name_exactly_the_active_statuses() {
    let app = spawn_app().await;
    let mut active = RunStatus::names(&RunStatus::ACTIVE);
    active.sort_unstable();
    let predicates: Vec<(String, String)> = sqlx::query_as(
        "SELECT indexrelid::regclass::text, pg_get_expr(indpred, indrelid) FROM pg_index
         WHERE indexrelid::regclass::text IN
               ('runs_one_active_per_task', 'runs_owner_active', 'runs_active_datasets')",
    )
    .fetch_all(&app.state.db)
    .await
    .unwrap();
    assert_eq!(predicates.len(), 3);
    for (index, predicate) in predicates {
        let mut named: Vec<String> = predicate
            .split('\'')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        named.sort_unstable();
        assert_eq!(named, active, "{index}: {predicate}");
    }
    // The owner's active count names them too, so that a generic plan can use its index.
    let listed = format!(
        "IN ({})",
        RunStatus::names(&RunStatus::ACTIVE)
            .iter()
            .map(|s| format!("'{s}'"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let source: String =
        sqlx::query_scalar("SELECT prosrc FROM pg_proc WHERE proname = 'admit_run'")
            .fetch_one(&app.state.db)
            .await
            .unwrap();
    assert!(source.contains(&listed), "{source}");
}

#[tokio::test]
async fn concurrent_submits_of_one_user_meet_the_quota_exactly() {
    let app = spawn_app().await;
    // Another user's run of the same code names the snapshot and its size.
    let (other, other_task) = actor_with_task(&app, Role::Student).await;
    let probe = app
        .state
        .lifecycle()
        .submit(&other, other_task, defaults(&app), None)
        .await
        .unwrap()
        .run;
    let snapshot: i64 = sqlx::query_scalar("SELECT size FROM snapshots WHERE sha256 = $1")
        .bind(&probe.code_sha256)
        .fetch_one(&app.db)
        .await
        .unwrap();
    let (actor, first) = actor_with_task(&app, Role::Student).await;
    let mut tasks = more_tasks(&app, &actor, 7).await;
    tasks.push(first);
    let task_bytes: i64 = sqlx::query_scalar("SELECT total_size FROM tasks WHERE id = $1")
        .bind(first)
        .fetch_one(&app.db)
        .await
        .unwrap();
    // Room for the first run's task, but not for a second beside the first one's snapshot:
    // whichever commits first is the only one, however the submits interleave.
    let mut settings = (*app.state.settings).clone();
    settings.runs.storage_quota_bytes = (task_bytes + snapshot - 1) as u64;
    let lifecycle = Lifecycle {
        settings: &settings,
        ..app.state.lifecycle()
    };

    let results = submit_all(&app, lifecycle, &actor, &tasks).await;
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(accepted, 1, "{results:?}");
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            matches!(refused, Error::QuotaExceeded { used, .. } if *used == snapshot as u64),
            "{refused:?}"
        );
    }
}

#[tokio::test]
async fn a_submit_racing_the_deletion_of_its_task_is_a_run_of_it_or_not_found() {
    let app = spawn_app().await;
    let (actor, first) = actor_with_task(&app, Role::Student).await;
    let token = app.state.auth.issue(actor.id, actor.role).unwrap().0;
    let mut tasks = more_tasks(&app, &actor, 11).await;
    tasks.push(first);
    let lifecycle = app.state.lifecycle();
    let races = tasks.iter().map(|task| {
        let (app, token, actor) = (&app, token.clone(), actor);
        async move {
            let uri = format!("/api/v1/tasks/{task}");
            let (submitted, deleted) = tokio::join!(
                lifecycle.submit(&actor, *task, defaults(app), None),
                app.delete(&uri, &token)
            );
            match (submitted, deleted.status.as_u16()) {
                // The run committed first: the task with an active run is not deleted.
                (Ok(accepted), 409) => {
                    assert_eq!(accepted.run.task_id, *task);
                    1
                }
                // The task went first (or between the check and the commit): no run of it.
                (Ok(_), 204) => 0,
                (Err(Error::NotFound("task")), 204) => 0,
                (submitted, status) => panic!("{submitted:?} and {status}"),
            }
        }
    });
    let kept: usize = futures::future::join_all(races).await.into_iter().sum();
    // Exactly the runs of the tasks still there: none lost, none of a deleted task.
    assert_eq!(run_count(&app).await, kept);
}

#[tokio::test]
async fn a_snapshot_marked_by_the_sweep_is_stored_again_before_the_run_commits() {
    let app = spawn_app().await;
    let (actor, task_id) = actor_with_task(&app, Role::Student).await;
    let lifecycle = app.state.lifecycle();
    let first = lifecycle
        .submit(&actor, task_id, defaults(&app), None)
        .await
        .unwrap()
        .run;
    lifecycle.stop(&actor, first.id).await.unwrap();
    // The sweep's first step (the run no longer counts once purged), then its object gone.
    sqlx::query("UPDATE runs SET purged_at = now() WHERE id = $1")
        .bind(first.id)
        .execute(&app.db)
        .await
        .unwrap();
    sqlx::query("UPDATE snapshots SET stored = false WHERE sha256 = $1")
        .bind(&first.code_sha256)
        .execute(&app.db)
        .await
        .unwrap();
    app.state
        .storage
        .delete_keys(&[first.code_key()])
        .await
        .unwrap();

    let again = lifecycle
        .submit(&actor, task_id, defaults(&app), None)
        .await
        .unwrap()
        .run;
    assert_eq!(again.code_sha256, first.code_sha256);
    assert_eq!(app.objects("snapshots/").await, vec![again.code_key()]);
    let stored: bool = sqlx::query_scalar("SELECT stored FROM snapshots WHERE sha256 = $1")
        .bind(&again.code_sha256)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(stored);
}
