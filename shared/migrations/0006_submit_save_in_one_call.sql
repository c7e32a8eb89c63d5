-- Submitting a run and saving a file, each in one round trip to Postgres.
--
-- Each is a function rather than one statement: under READ COMMITTED every statement of a
-- PL/pgSQL function takes a fresh snapshot, so what is counted after a lock is granted sees
-- everything committed before it (one statement would count with the snapshot it started
-- with, before it waited for the lock, and the limits would not be exact). Called alone, each
-- is its own transaction: no BEGIN and COMMIT round trips.

-- Admits a new run: under the owner's row lock (which serialises the owner's submits and
-- retries) checks that the task has no active run, that the owner is under `p_max_active`
-- active runs, and (when `p_quota` > 0) that the bytes the owner's kept runs hold plus
-- `p_adding` fit `p_quota`; then holds the snapshot against the sweep (a shared lock the
-- sweep's delete waits for) and inserts the run `queued` with its first event. Refusals
-- insert nothing and come back as `outcome`: `task_busy`, `too_many_active`, `over_quota`
-- (with `used`) or `snapshot_gone` (the snapshot is not stored: store it, then call again).
-- A task or owner deleted meanwhile fails the insert's foreign key; a reused
-- Idempotency-Key fails its unique index.
CREATE FUNCTION admit_run(
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
    IF EXISTS (SELECT 1 FROM runs r WHERE r.task_id = p_task_id AND r.status = ANY (p_active)) THEN
        RETURN QUERY SELECT 'task_busy'::text, 0::bigint, NULL::timestamptz, NULL::timestamptz;
        RETURN;
    END IF;
    IF (SELECT count(*) FROM runs r WHERE r.owner_id = p_owner_id AND r.status = ANY (p_active))
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
    -- A shared lock: concurrent submits of the same code do not wait for each other, while
    -- the sweep's FOR UPDATE (before it deletes) waits for this transaction, then sees the run.
    PERFORM 1 FROM snapshots s WHERE s.sha256 = p_code_sha256 AND s.stored FOR KEY SHARE;
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

-- Replaces the content of an existing file: locks the task row (which serialises every change
-- to the task's files), checks the actor owns the task, and the task's limits with the new
-- size, then writes the file and the task's totals. `outcome`: `saved`; `no_task`; `not_owner`
-- (with `owner_id`: the caller tells a reader from a stranger); `absent` (no such file: a new
-- file needs the path rules, checked by the caller on the whole file set); `too_many_files`;
-- `too_large`. Only `saved` writes anything.
CREATE FUNCTION replace_file(
    p_task_id uuid, p_actor uuid, p_path text, p_content text, p_max_files integer,
    p_max_bytes bigint
) RETURNS TABLE (outcome text, owner_id uuid, main_file text, updated_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    v_owner uuid;
    v_main text;
    v_old bigint;
    v_total bigint;
    v_count integer;
    v_size bigint := octet_length(p_content);
    v_at timestamptz;
BEGIN
    SELECT t.owner_id, t.main_file INTO v_owner, v_main FROM tasks t WHERE t.id = p_task_id
        FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'no_task'::text, NULL::uuid, NULL::text, NULL::timestamptz;
        RETURN;
    END IF;
    IF v_owner <> p_actor THEN
        RETURN QUERY SELECT 'not_owner'::text, v_owner, NULL::text, NULL::timestamptz;
        RETURN;
    END IF;
    SELECT coalesce(sum(f.size), 0), count(*),
           max(f.size) FILTER (WHERE f.path = p_path)
      INTO v_total, v_count, v_old
      FROM task_files f WHERE f.task_id = p_task_id;
    IF v_old IS NULL THEN
        RETURN QUERY SELECT 'absent'::text, v_owner, v_main, NULL::timestamptz;
        RETURN;
    END IF;
    IF v_count > p_max_files THEN
        RETURN QUERY SELECT 'too_many_files'::text, v_owner, v_main, NULL::timestamptz;
        RETURN;
    END IF;
    IF v_total - v_old + v_size > p_max_bytes THEN
        RETURN QUERY SELECT 'too_large'::text, v_owner, v_main, NULL::timestamptz;
        RETURN;
    END IF;
    UPDATE task_files f SET content = p_content, size = v_size, updated_at = now()
     WHERE f.task_id = p_task_id AND f.path = p_path
     RETURNING f.updated_at INTO v_at;
    UPDATE tasks t SET total_size = v_total - v_old + v_size, file_count = v_count,
           updated_at = now()
     WHERE t.id = p_task_id;
    RETURN QUERY SELECT 'saved'::text, v_owner, v_main, v_at;
END
$$;
