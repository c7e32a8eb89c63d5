-- A class's burst on a new installation no longer reads every queued run for every submission.
--
-- PostgreSQL plans with the statistics of the last ANALYZE. A burst on a new installation
-- queues thousands of runs in seconds, before autovacuum analyses `runs` again; the
-- statistics then say that hardly any run is active, and a partial index of active runs that
-- was (nearly) empty at that ANALYZE is priced as empty however much it has grown. Any plan
-- that could read such an index looked cheapest, and read through every queued run
-- (`admit_run`'s task check: 9–10 ms a call at the end of a 20,000-run burst). And the
-- generic plan PL/pgSQL may keep after five calls could not use the partial indexes at all
-- for `status = ANY (p_active)`, whose value it does not know: the owner's count read the
-- whole table. Now each statement has one index it can use:
-- - the task's check implies no partial index (only the task's own runs serve it);
-- - the owner's count names the active statuses as the indexes do, and
--   `runs_owner_active` is the one index of active runs it implies: the index of active runs
--   by status is gone (its "status = …" path was the trap). Its one reader, the
--   reconciler's list of active runs, reads `runs_owner_active` whole and sorts (active runs
--   are at most the queue and the capacity).

DROP INDEX runs_active_by_status;

CREATE OR REPLACE FUNCTION admit_run(
    p_id uuid, p_task_id uuid, p_owner_id uuid, p_command text, p_language text,
    p_image text, p_spec_name text, p_spec jsonb, p_datasets text[], p_remarks text,
    p_snapshot_of uuid, p_code_sha256 text, p_retry_of uuid, p_idempotency_key text,
    p_request_fingerprint text, p_detail text, p_active text[], p_max_active integer,
    p_quota bigint, p_adding bigint
) RETURNS TABLE (outcome text, used bigint, created_at timestamptz, event_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    v_used bigint := 0;
    v_created timestamptz;
    v_event timestamptz;
BEGIN
    PERFORM 1 FROM users u WHERE u.id = p_owner_id FOR NO KEY UPDATE;
    -- `status || ''`: the check implies no partial index of active runs, so it can only go
    -- through the task's own runs (`runs_task_created`).
    IF EXISTS (SELECT 1 FROM runs r WHERE r.task_id = p_task_id
                 AND (r.status || '') = ANY (p_active)) THEN
        RETURN QUERY SELECT 'task_busy'::text, 0::bigint, NULL::timestamptz, NULL::timestamptz;
        RETURN;
    END IF;
    -- The statuses written out as the partial indexes name them: every plan, a generic one
    -- too, can use `runs_owner_active`, the one index of active runs this count implies.
    IF (SELECT count(*) FROM runs r WHERE r.owner_id = p_owner_id AND r.status = ANY (p_active)
          AND r.status IN ('queued', 'dispatched', 'pending', 'running', 'stopping'))
        >= p_max_active THEN
        RETURN QUERY SELECT 'too_many_active'::text, 0::bigint, NULL::timestamptz, NULL::timestamptz;
        RETURN;
    END IF;
    IF p_quota > 0 THEN
        SELECT coalesce((SELECT sum(coalesce(r.log_bytes, 0)) FROM runs r
                         WHERE r.owner_id = p_owner_id AND r.purged_at IS NULL), 0)
             + coalesce((SELECT sum(o.size) FROM run_outputs o JOIN runs r ON r.id = o.run_id
                         WHERE r.owner_id = p_owner_id AND r.purged_at IS NULL), 0)
             + coalesce((SELECT sum(s.size) FROM snapshots s WHERE s.sha256 IN
                         (SELECT r.code_sha256 FROM runs r
                          WHERE r.owner_id = p_owner_id AND r.purged_at IS NULL)), 0)
          INTO v_used;
        IF v_used + p_adding > p_quota THEN
            RETURN QUERY SELECT 'over_quota'::text, v_used, NULL::timestamptz, NULL::timestamptz;
            RETURN;
        END IF;
    END IF;
    -- A shared advisory lock on the snapshot's content: concurrent submits of the same code
    -- do not wait for each other, while the sweep's exclusive one (before it deletes) waits for
    -- this transaction, then sees the run. Checked after the lock: a fresh statement.
    PERFORM pg_advisory_xact_lock_shared(1936613744, hashtext(p_code_sha256));
    PERFORM 1 FROM snapshots s WHERE s.sha256 = p_code_sha256 AND s.stored;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'snapshot_gone'::text, v_used, NULL::timestamptz, NULL::timestamptz;
        RETURN;
    END IF;
    INSERT INTO runs (id, task_id, owner_id, status, command, language, image, spec_name, spec,
        datasets, remarks, snapshot_of, code_sha256, retry_of, idempotency_key,
        request_fingerprint)
    VALUES (p_id, p_task_id, p_owner_id, 'queued', p_command, p_language, p_image, p_spec_name,
        p_spec, p_datasets, p_remarks, p_snapshot_of, p_code_sha256, p_retry_of,
        p_idempotency_key, p_request_fingerprint)
    RETURNING runs.created_at INTO v_created;
    INSERT INTO run_events (run_id, phase, source, detail)
    VALUES (p_id, 'queued', 'api', p_detail)
    RETURNING run_events.at INTO v_event;
    RETURN QUERY SELECT 'queued'::text, v_used, v_created, v_event;
END
$$;
