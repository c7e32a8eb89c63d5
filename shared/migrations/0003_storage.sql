-- Storage that does not grow without limit: snapshots stored once by content, runs whose
-- objects were purged by the retention, and the background removal of deleted runs' objects.

-- One row per snapshot object `snapshots/{sha256}.tar.gz`. A submit claims the row (bumping
-- `last_used_at`) before it uploads, and the run's insert checks it again, so the sweep that
-- deletes unreferenced snapshots (only those unused for a grace period, under a row lock)
-- never removes one a submit is about to use.
CREATE TABLE snapshots (
    sha256       text PRIMARY KEY,
    -- Bytes of the .tar.gz: what a run's snapshot counts against its owner's quota.
    size         bigint NOT NULL,
    -- The object is in the bucket (false while the first upload is under way, or failed).
    stored       boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX snapshots_unused ON snapshots (last_used_at);

-- A run whose log, outputs and snapshot reference were removed by the retention; the row
-- stays, with this note.
ALTER TABLE runs ADD COLUMN purged_at timestamptz;
CREATE INDEX runs_by_snapshot ON runs (code_sha256) WHERE purged_at IS NULL;
CREATE INDEX runs_owner_kept ON runs (owner_id) WHERE purged_at IS NULL;
CREATE INDEX runs_finished_kept ON runs (finished_at) WHERE purged_at IS NULL AND finished_at IS NOT NULL;

-- Objects below `runs/{run_id}/` of deleted runs, removed by the workers in the background
-- (retried with a growing delay until the bucket answers). Filled by a trigger, so every way a
-- run row goes (its task deleted, its owner deleted) leaves a record in the same transaction.
CREATE TABLE object_sweeps (
    id         bigserial PRIMARY KEY,
    run_id     uuid NOT NULL,
    attempts   integer NOT NULL DEFAULT 0,
    not_before timestamptz NOT NULL DEFAULT now(),
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX object_sweeps_due ON object_sweeps (not_before);

CREATE FUNCTION runs_record_object_sweep() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO object_sweeps (run_id) VALUES (OLD.id);
    RETURN OLD;
END
$$;

CREATE TRIGGER runs_deleted_sweep_objects AFTER DELETE ON runs
    FOR EACH ROW EXECUTE FUNCTION runs_record_object_sweep();
