//! Pipelines end to end: HTTP start, the real stream, semaphore, worker and local sandbox; the
//! next stage queued by the end of the last, outputs passed on read-only, parameters as
//! `PARAM_<NAME>`, and a worker killed between a step's end and the next stage's enqueue.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Platform, platform};

const T: Duration = Duration::from_secs(90);

/// A Python task of the demo user whose main.py is `code`; its id.
async fn task(p: &Platform, code: &str) -> String {
    let task = p.app.task(&p.token, "step", "python").await;
    let id = task["id"].as_str().unwrap().to_owned();
    p.app
        .put_text(&format!("/api/v1/tasks/{id}/files/main.py"), &p.token, code)
        .await
        .expect(200);
    id
}

async fn wait_pipeline(p: &Platform, id: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let run = p
            .app
            .get(&format!("/api/v1/pipeline-runs/{id}"), &p.token)
            .await
            .expect(200);
        if ["succeeded", "failed", "stopped"].contains(&run["status"].as_str().unwrap()) {
            return run;
        }
        assert!(Instant::now() < deadline, "pipeline run still going: {run}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn step_run(run: &Value, name: &str) -> String {
    run["stages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["steps"].as_array().unwrap().iter())
        .find(|s| s["name"] == name)
        .and_then(|s| s["run_id"].as_str())
        .unwrap_or_else(|| panic!("step {name} has no run: {run}"))
        .to_owned()
}

const PREP: &str = "import os\n\
    open(os.path.join(os.environ['OUTPUT_DIR'], 'data.txt'), 'w').write('seed=' + os.environ['PARAM_SEED'])\n\
    os.makedirs(os.path.join(os.environ['OUTPUT_DIR'], 'sub'))\n\
    open(os.path.join(os.environ['OUTPUT_DIR'], 'sub', 'more.txt'), 'w').write('more')\n\
    print('prep', os.environ['PARAM_SEED'])\n";

const TRAIN: &str = "import os\n\
    inp = os.environ['INPUT_DIR']\n\
    data = open(os.path.join(inp, 'prep', 'data.txt')).read()\n\
    more = open(os.path.join(inp, 'prep', 'sub', 'more.txt')).read()\n\
    try:\n    open(os.path.join(inp, 'prep', 'data.txt'), 'a').write('x')\n    print('writable')\n\
    except OSError:\n    print('read-only')\n\
    open(os.path.join(os.environ['OUTPUT_DIR'], 'model.txt'), 'w').write(os.environ['PARAM_MODEL'] + ':' + data)\n\
    print(sorted(os.listdir(inp)), more)\n";

const REPORT: &str = "import os\n\
    inp = os.environ['INPUT_DIR']\n\
    for step in sorted(os.listdir(inp)):\n\
    \x20   path = os.path.join(inp, step, 'model.txt')\n\
    \x20   if os.path.exists(path):\n\
    \x20       print(step, open(path).read())\n\
    print(sorted(os.listdir(inp)))\n";

#[tokio::test]
async fn a_three_stage_pipeline_passes_outputs_and_parameters_from_step_to_step() {
    let p = platform(vec![]).await;
    let worker = p.worker("w").await;
    let (prep, train, report) = (
        task(&p, PREP).await,
        task(&p, TRAIN).await,
        task(&p, REPORT).await,
    );
    let pipeline = p
        .app
        .post(
            "/api/v1/pipelines",
            &p.token,
            json!({
                "name": "three stages",
                "params": {"SEED": "1", "MODEL": "linear"},
                "stages": [
                    {"name": "prepare", "steps": [{"name": "prep", "task_id": prep}]},
                    {"name": "train", "steps": [
                        {"name": "a", "task_id": train, "params": {"MODEL": "tree"}},
                        {"name": "b", "task_id": train, "params": {"MODEL": "forest"}}
                    ]},
                    {"name": "evaluate", "steps": [{"name": "report", "task_id": report}]}
                ]
            }),
        )
        .await
        .expect(201);
    let id = pipeline["id"].as_str().unwrap();
    let run = p
        .app
        .post(
            &format!("/api/v1/pipelines/{id}/runs"),
            &p.token,
            json!({"params": {"SEED": "42"}}),
        )
        .await
        .expect(202);
    let run = wait_pipeline(&p, run["id"].as_str().unwrap(), T).await;
    assert_eq!(run["status"], "succeeded", "{run}");

    assert_eq!(p.log(&step_run(&run, "prep")).await.0, ["prep 42"]);
    for step in ["a", "b"] {
        assert_eq!(
            p.log(&step_run(&run, step)).await.0,
            ["read-only", "['prep'] more"],
            "step {step} sees only the earlier stage's outputs, read-only"
        );
    }
    assert_eq!(
        p.log(&step_run(&run, "report")).await.0,
        ["a tree:seed=42", "b forest:seed=42", "['a', 'b', 'prep']"]
    );
    // The steps' runs are ordinary runs: every phase, in order.
    let report_run = p.run(&step_run(&run, "report")).await;
    assert_eq!(
        Platform::phases(&report_run),
        ["queued", "dispatched", "pending", "running", "succeeded"]
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_worker_killed_between_a_steps_end_and_the_next_enqueue_advances_exactly_once() {
    let p = platform(vec![]).await;
    let (first, second) = (
        task(&p, "print('first')\n").await,
        task(&p, "print('second')\n").await,
    );
    let pipeline = p
        .app
        .post(
            "/api/v1/pipelines",
            &p.token,
            json!({
                "name": "two stages",
                "stages": [
                    {"name": "one", "steps": [{"name": "first", "task_id": first}]},
                    {"name": "two", "steps": [{"name": "second", "task_id": second}]}
                ]
            }),
        )
        .await
        .expect(201);
    let mut victim = p.worker_process(
        "victim-advance",
        &[("CODERUN__WORKER__CRASH_AT", "after_step_end")],
    );
    let id = pipeline["id"].as_str().unwrap();
    let run = p
        .app
        .post(&format!("/api/v1/pipelines/{id}/runs"), &p.token, json!({}))
        .await
        .expect(202);
    let run_id = run["id"].as_str().unwrap().to_owned();
    assert!(
        victim.wait_exit(T).is_some(),
        "the victim crashes at its crash point"
    );
    // The step's end and the next stage's run were committed together; the entry was not
    // added.
    let after_crash = p
        .app
        .get(&format!("/api/v1/pipeline-runs/{run_id}"), &p.token)
        .await
        .expect(200);
    assert_eq!(
        p.run(&step_run(&after_crash, "first")).await["status"],
        "succeeded"
    );
    let second_run = step_run(&after_crash, "second");
    assert_eq!(p.run(&second_run).await["status"], "queued");

    let survivor = p.worker("survivor").await;
    let done = wait_pipeline(&p, &run_id, T).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        step_run(&done, "second"),
        second_run,
        "the next stage started once"
    );
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM runs WHERE pipeline_run_id = $1")
        .bind(run_id.parse::<uuid::Uuid>().unwrap())
        .fetch_one(&p.app.db)
        .await
        .unwrap();
    assert_eq!(count, 2, "one run per step, however often it was advanced");
    let second = p.run(&second_run).await;
    assert_eq!(
        Platform::phases(&second),
        ["queued", "dispatched", "pending", "running", "succeeded"]
    );
    assert_eq!(p.log(&second_run).await.0, ["second"]);
    survivor.stop().await;
}

#[tokio::test]
async fn a_worker_killed_while_a_step_executes_leaves_a_second_attempt_that_advances_once() {
    let p = platform(vec![]).await;
    let (first, second) = (
        task(
            &p,
            "import os\nprint('attempt', os.environ['RUN_ATTEMPT'])\n",
        )
        .await,
        task(&p, "print('second')\n").await,
    );
    let pipeline = p
        .app
        .post(
            "/api/v1/pipelines",
            &p.token,
            json!({
                "name": "two stages",
                "stages": [
                    {"name": "one", "steps": [{"name": "first", "task_id": first}]},
                    {"name": "two", "steps": [{"name": "second", "task_id": second}]}
                ]
            }),
        )
        .await
        .expect(201);
    let mut victim = p.worker_process(
        "victim-step",
        &[("CODERUN__WORKER__CRASH_AT", "after_launch")],
    );
    let id = pipeline["id"].as_str().unwrap();
    let run = p
        .app
        .post(&format!("/api/v1/pipelines/{id}/runs"), &p.token, json!({}))
        .await
        .expect(202);
    let run_id = run["id"].as_str().unwrap().to_owned();
    assert!(
        victim.wait_exit(T).is_some(),
        "the victim crashes at its crash point"
    );
    let survivor = p.worker("survivor").await;
    let done = wait_pipeline(&p, &run_id, T).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(p.log(&step_run(&done, "first")).await.0, ["attempt 2"]);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM runs WHERE pipeline_run_id = $1")
        .bind(run_id.parse::<uuid::Uuid>().unwrap())
        .fetch_one(&p.app.db)
        .await
        .unwrap();
    assert_eq!(count, 2, "one run per step");
    let second = p.run(&step_run(&done, "second")).await;
    assert_eq!(
        Platform::phases(&second),
        ["queued", "dispatched", "pending", "running", "succeeded"]
    );
    survivor.stop().await;
}
