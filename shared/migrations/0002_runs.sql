-- Runs and their phase history.

CREATE TABLE runs (
    id            uuid PRIMARY KEY,
    task_id       uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    owner_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    status        text NOT NULL CHECK (status IN ('queued', 'dispatched', 'pending', 'running',
                      'succeeded', 'failed', 'stopping', 'stopped', 'canceled')),
    reason        text,
    exit_code     integer,
    command       text NOT NULL,
    language      text NOT NULL,
    image         text NOT NULL,
    spec_name     text NOT NULL,
    spec          jsonb NOT NULL,
    datasets      text[] NOT NULL DEFAULT '{}',
    remarks       text NOT NULL DEFAULT '',
    -- The run whose code snapshot (runs/{snapshot_of}/code.tar.gz) this run executes: itself,
    -- or for a retry the run it retries.
    snapshot_of   uuid NOT NULL,
    code_sha256   text NOT NULL,
    retry_of      uuid REFERENCES runs (id) ON DELETE SET NULL,
    -- Which worker (consumer name) launched it, and on which executor.
    worker        text,
    executor      text,
    log_bytes     bigint,
    log_truncated boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    queued_at     timestamptz NOT NULL DEFAULT now(),
    dispatched_at timestamptz,
    started_at    timestamptz,
    finished_at   timestamptz
);

-- At most one active run per task, whatever races the API has.
CREATE UNIQUE INDEX runs_one_active_per_task ON runs (task_id)
    WHERE status IN ('queued', 'dispatched', 'pending', 'running', 'stopping');
CREATE INDEX runs_task_created ON runs (task_id, created_at DESC, id);
CREATE INDEX runs_owner_active ON runs (owner_id)
    WHERE status IN ('queued', 'dispatched', 'pending', 'running', 'stopping');
CREATE INDEX runs_active_by_status ON runs (status, queued_at)
    WHERE status IN ('queued', 'dispatched', 'pending', 'running', 'stopping');

CREATE TABLE run_events (
    id     bigserial PRIMARY KEY,
    run_id uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    phase  text NOT NULL,
    at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- Who observed the transition: `api`, `worker:<name>`, `reconciler:<name>` …
    source text NOT NULL,
    detail text NOT NULL DEFAULT ''
);
CREATE INDEX run_events_by_run ON run_events (run_id, id);

-- Files the program left in $OUTPUT_DIR, stored at runs/{run_id}/output/{path}.
CREATE TABLE run_outputs (
    run_id uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    path   text COLLATE "C" NOT NULL,
    size   bigint NOT NULL,
    PRIMARY KEY (run_id, path)
);
