-- A save no longer writes new entries into the task's indexes.
--
-- Every save bumps its task's `updated_at` and totals. With `updated_at` in an index no such
-- update could be a heap-only (HOT) update: each save wrote a new tuple into both of the
-- task's indexes (its primary key and the owner's list by change), left two dead ones
-- behind, and logged all of it (none of 110,477 updates of `tasks` during one files bench
-- was HOT). An owner's tasks are few, and the list sorts them; the list of everyone's tasks
-- could never use an index led by the owner anyway. Now:
-- - the owner's index holds the owner only, so no column a save writes is indexed;
-- - `tasks` leaves a tenth of each page free, room for the new version on the same page;
-- - `replace_file` reads the task's totals from the task row it locks (every writer keeps
--   them equal to its files in the same transaction) and the replaced file's size by its
--   key, instead of summing all of the task's files on each save.

DROP INDEX tasks_owner_updated;

CREATE INDEX tasks_by_owner ON tasks (owner_id);

ALTER TABLE tasks SET (fillfactor = 90);

CREATE OR REPLACE FUNCTION replace_file(
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
    SELECT t.owner_id, t.main_file, t.total_size, t.file_count
      INTO v_owner, v_main, v_total, v_count
      FROM tasks t WHERE t.id = p_task_id
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'no_task'::text, NULL::uuid, NULL::text, NULL::timestamptz;
        RETURN;
    END IF;
    IF v_owner <> p_actor THEN
        RETURN QUERY SELECT 'not_owner'::text, v_owner, NULL::text, NULL::timestamptz;
        RETURN;
    END IF;
    SELECT f.size INTO v_old FROM task_files f WHERE f.task_id = p_task_id AND f.path = p_path;
    IF NOT FOUND THEN
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
    UPDATE tasks t SET total_size = v_total - v_old + v_size, updated_at = now()
     WHERE t.id = p_task_id;
    RETURN QUERY SELECT 'saved'::text, v_owner, v_main, v_at;
END
$$;
