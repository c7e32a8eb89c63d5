-- Pipelines: stages of steps, each step an ordinary run of one of the owner's tasks.
--
-- A pipeline's definition is versioned: an update writes a new `pipeline_versions` row and
-- bumps `pipelines.version`; a pipeline run keeps the version it started with. A pipeline run
-- resolves every step when it starts (snapshot, command, spec, datasets, merged parameters) into
-- `pipeline_steps`, so later edits of the tasks or the pipeline never change it.
--
-- Advancing is done here, in Postgres, by `advance_pipeline_run`, which a trigger calls in the
-- same transaction that records a step run's terminal status: the next stage's runs are
-- committed (as `queued`) together with the end of the stage before it, or not at all. The
-- stream entries are added after the commit; a lost one is re-enqueued by the reconciler like
-- any queued run's. Every change of a pipeline run's status goes through
-- `set_pipeline_run_status`.

CREATE TABLE pipelines (
    id         uuid PRIMARY KEY,
    owner_id   uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name       text NOT NULL,
    -- The newest version (`pipeline_versions`).
    version    integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pipelines_owner_updated ON pipelines (owner_id, updated_at DESC, id);

-- Every version of every pipeline: `definition` is `{params: {NAME: default}, stages: [...]}`,
-- checked by `shared/src/pipelines.rs` before it is stored.
CREATE TABLE pipeline_versions (
    pipeline_id uuid NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    version     integer NOT NULL,
    name        text NOT NULL,
    definition  jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline_id, version)
);

CREATE TABLE pipeline_runs (
    id          uuid PRIMARY KEY,
    pipeline_id uuid NOT NULL,
    version     integer NOT NULL,
    owner_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    status      text NOT NULL CHECK (status IN ('queued', 'running', 'awaiting_approval',
                    'succeeded', 'failed', 'stopped')),
    -- Why it failed or stopped (`step `x` failed`, `stage `y` rejected` …).
    reason      text,
    -- The run's own parameter values (merged with the defaults and overrides per step).
    params      jsonb NOT NULL DEFAULT '{}',
    -- The index (from 0) of the stage being run; the stage count once every stage is done.
    stage       integer NOT NULL DEFAULT 0,
    retry_of    uuid REFERENCES pipeline_runs (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    FOREIGN KEY (pipeline_id, version) REFERENCES pipeline_versions ON DELETE CASCADE
);
CREATE INDEX pipeline_runs_by_pipeline ON pipeline_runs (pipeline_id, created_at DESC, id);
CREATE INDEX pipeline_runs_active ON pipeline_runs (status)
    WHERE status IN ('queued', 'running', 'awaiting_approval');

CREATE TABLE pipeline_stages (
    pipeline_run_id uuid NOT NULL REFERENCES pipeline_runs (id) ON DELETE CASCADE,
    stage           integer NOT NULL,
    name            text NOT NULL,
    approval        boolean NOT NULL DEFAULT false,
    PRIMARY KEY (pipeline_run_id, stage)
);

-- One step of one pipeline run, resolved when the pipeline run started.
CREATE TABLE pipeline_steps (
    pipeline_run_id uuid NOT NULL REFERENCES pipeline_runs (id) ON DELETE CASCADE,
    stage           integer NOT NULL,
    name            text NOT NULL,
    task_id         uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    command         text NOT NULL,
    language        text NOT NULL,
    image           text NOT NULL,
    spec_name       text NOT NULL,
    spec            jsonb NOT NULL,
    datasets        text[] NOT NULL DEFAULT '{}',
    -- The merged parameters (defaults → run values → stage → step), `PARAM_<NAME>` for the
    -- program.
    params          jsonb NOT NULL DEFAULT '{}',
    code_sha256     text NOT NULL,
    allow_failure   boolean NOT NULL DEFAULT false,
    -- `waiting`: no run yet; `started`: `run_id` is its run; `reused`: `run_id` is the
    -- succeeded run of an earlier pipeline run (`reused_from`), a retry's; `canceled`: never
    -- started (the pipeline run failed, was rejected or stopped first).
    state           text NOT NULL DEFAULT 'waiting'
                        CHECK (state IN ('waiting', 'started', 'reused', 'canceled')),
    run_id          uuid REFERENCES runs (id) ON DELETE SET NULL,
    reused_from     uuid REFERENCES pipeline_runs (id) ON DELETE SET NULL,
    PRIMARY KEY (pipeline_run_id, name),
    FOREIGN KEY (pipeline_run_id, stage) REFERENCES pipeline_stages ON DELETE CASCADE
);
CREATE INDEX pipeline_steps_by_stage ON pipeline_steps (pipeline_run_id, stage);
CREATE INDEX pipeline_steps_code ON pipeline_steps (code_sha256);

-- Decisions on approval gates, who took them and when; one per gate.
CREATE TABLE pipeline_approvals (
    pipeline_run_id uuid NOT NULL REFERENCES pipeline_runs (id) ON DELETE CASCADE,
    stage           integer NOT NULL,
    decision        text NOT NULL CHECK (decision IN ('approved', 'rejected')),
    decided_by      uuid REFERENCES users (id) ON DELETE SET NULL,
    comment         text NOT NULL DEFAULT '',
    decided_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline_run_id, stage)
);

-- A run that is a pipeline step says which pipeline run and step.
ALTER TABLE runs ADD COLUMN pipeline_run_id uuid REFERENCES pipeline_runs (id) ON DELETE SET NULL;
ALTER TABLE runs ADD COLUMN pipeline_step text;
CREATE INDEX runs_by_pipeline_run ON runs (pipeline_run_id) WHERE pipeline_run_id IS NOT NULL;

-- The steps of a stage run in parallel and may name the same task: the one-active-run rule
-- guards a user's own submissions, not a pipeline's steps.
DROP INDEX runs_one_active_per_task;
CREATE UNIQUE INDEX runs_one_active_per_task ON runs (task_id)
    WHERE status IN ('queued', 'dispatched', 'pending', 'running', 'stopping')
      AND pipeline_run_id IS NULL;

-- The one place a pipeline run's status changes: a terminal status is final, and
-- `finished_at` is set with it. Returns whether the status changed. (A status callback, or an
-- approval request when the new status is `awaiting_approval`, is emitted from here.)
CREATE FUNCTION set_pipeline_run_status(p_id uuid, p_status text, p_reason text)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    UPDATE pipeline_runs SET status = p_status,
           reason = coalesce(p_reason, reason),
           finished_at = CASE WHEN p_status IN ('succeeded', 'failed', 'stopped')
                              THEN now() ELSE NULL END
     WHERE id = p_id AND status <> p_status
       AND status NOT IN ('succeeded', 'failed', 'stopped');
    RETURN FOUND;
END
$$;

-- Ends a pipeline run that will not go on: every step not started is canceled, and so is
-- every step run still queued (it never launches; its stream entry is skipped). Launched step
-- runs are left to the caller (stop) or to finish (a failed sibling).
CREATE FUNCTION end_pipeline_run(p_id uuid, p_status text, p_reason text, p_source text)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_changed boolean;
BEGIN
    v_changed := set_pipeline_run_status(p_id, p_status, p_reason);
    IF NOT v_changed THEN
        RETURN false;
    END IF;
    UPDATE pipeline_steps SET state = 'canceled' WHERE pipeline_run_id = p_id AND state = 'waiting';
    WITH canceled AS (
        UPDATE runs SET status = 'canceled', finished_at = now(),
               reason = CASE WHEN p_status = 'stopped' THEN 'stopped_by_user' ELSE reason END
         WHERE pipeline_run_id = p_id AND status = 'queued'
        RETURNING id
    )
    INSERT INTO run_events (run_id, phase, source, detail)
    SELECT id, 'canceled', p_source, 'the pipeline run ended: ' || p_reason FROM canceled;
    RETURN true;
END
$$;

-- Moves the pipeline run as far as its steps allow; idempotent (called again it starts
-- nothing twice), and serialised per pipeline run by its row lock. Stage by stage: a step
-- run that failed (and may not) fails the pipeline run; a stage whose steps all ended well
-- hands over to the next; a stage not started waits for its approval if it needs one
-- (`awaiting_approval`), else its steps' runs are inserted `queued`. Returns the ids of the
-- runs it queued, for the caller to enqueue after the commit.
CREATE FUNCTION advance_pipeline_run(p_id uuid, p_source text)
RETURNS SETOF uuid LANGUAGE plpgsql AS $$
DECLARE
    v_run pipeline_runs%ROWTYPE;
    v_stages integer;
    v_approval boolean;
    v_stage_name text;
    v_failed text;
    v_decision text;
    v_step pipeline_steps%ROWTYPE;
    v_id uuid;
BEGIN
    SELECT * INTO v_run FROM pipeline_runs WHERE id = p_id FOR UPDATE;
    IF NOT FOUND OR v_run.status NOT IN ('queued', 'running', 'awaiting_approval') THEN
        RETURN;
    END IF;
    SELECT count(*) INTO v_stages FROM pipeline_stages WHERE pipeline_run_id = p_id;
    LOOP
        -- A step of any started stage that ended badly (and may not) ends the pipeline run.
        SELECT s.name INTO v_failed
          FROM pipeline_steps s JOIN runs r ON r.id = s.run_id
         WHERE s.pipeline_run_id = p_id AND s.state = 'started' AND NOT s.allow_failure
           AND r.status IN ('failed', 'stopped', 'canceled')
         ORDER BY s.stage, s.name LIMIT 1;
        IF FOUND THEN
            PERFORM end_pipeline_run(p_id, 'failed', format('step `%s` failed', v_failed),
                                     p_source);
            RETURN;
        END IF;
        IF v_run.stage >= v_stages THEN
            PERFORM set_pipeline_run_status(p_id, 'succeeded', NULL);
            RETURN;
        END IF;
        SELECT approval, name INTO v_approval, v_stage_name
          FROM pipeline_stages WHERE pipeline_run_id = p_id AND stage = v_run.stage;
        IF EXISTS (SELECT 1 FROM pipeline_steps WHERE pipeline_run_id = p_id
                   AND stage = v_run.stage AND state = 'waiting') THEN
            IF v_approval THEN
                SELECT decision INTO v_decision FROM pipeline_approvals
                 WHERE pipeline_run_id = p_id AND stage = v_run.stage;
                IF v_decision IS NULL THEN
                    PERFORM set_pipeline_run_status(p_id, 'awaiting_approval', NULL);
                    RETURN;
                ELSIF v_decision = 'rejected' THEN
                    PERFORM end_pipeline_run(p_id, 'failed',
                        format('stage `%s` was rejected', v_stage_name), p_source);
                    RETURN;
                END IF;
            END IF;
            FOR v_step IN SELECT * FROM pipeline_steps WHERE pipeline_run_id = p_id
                          AND stage = v_run.stage AND state = 'waiting' ORDER BY name LOOP
                v_id := gen_random_uuid();
                INSERT INTO runs (id, task_id, owner_id, status, command, language, image,
                    spec_name, spec, datasets, remarks, snapshot_of, code_sha256,
                    pipeline_run_id, pipeline_step)
                VALUES (v_id, v_step.task_id, v_run.owner_id, 'queued', v_step.command,
                    v_step.language, v_step.image, v_step.spec_name, v_step.spec,
                    v_step.datasets,
                    format('pipeline run %s, stage `%s`, step `%s`', p_id, v_stage_name,
                           v_step.name),
                    v_id, v_step.code_sha256, p_id, v_step.name);
                INSERT INTO run_events (run_id, phase, source, detail)
                VALUES (v_id, 'queued', p_source,
                        format('step `%s` of pipeline run %s', v_step.name, p_id));
                UPDATE pipeline_steps SET state = 'started', run_id = v_id
                 WHERE pipeline_run_id = p_id AND name = v_step.name;
                RETURN NEXT v_id;
            END LOOP;
            PERFORM set_pipeline_run_status(p_id, 'running', NULL);
            RETURN;
        END IF;
        -- Every step of the stage has a run (or was reused): is one still going?
        IF EXISTS (SELECT 1 FROM pipeline_steps s JOIN runs r ON r.id = s.run_id
                   WHERE s.pipeline_run_id = p_id AND s.stage = v_run.stage
                     AND s.state = 'started'
                     AND r.status NOT IN ('succeeded', 'failed', 'stopped', 'canceled')) THEN
            PERFORM set_pipeline_run_status(p_id, 'running', NULL);
            RETURN;
        END IF;
        UPDATE pipeline_runs SET stage = stage + 1 WHERE id = p_id;
        v_run.stage := v_run.stage + 1;
    END LOOP;
END
$$;

-- A step run's terminal status moves its pipeline run on, in the same transaction.
CREATE FUNCTION pipeline_step_ended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM advance_pipeline_run(NEW.pipeline_run_id, 'pipeline');
    RETURN NULL;
END
$$;

CREATE TRIGGER runs_advance_pipeline AFTER UPDATE OF status ON runs
    FOR EACH ROW
    WHEN (NEW.pipeline_run_id IS NOT NULL AND OLD.status IS DISTINCT FROM NEW.status
          AND NEW.status IN ('succeeded', 'failed', 'stopped', 'canceled'))
    EXECUTE FUNCTION pipeline_step_ended();
