-- Status callbacks for pipeline runs: every status change of a pipeline run (its insert
-- included) is a `pipeline_run.status` event for its owner, and its move to
-- `awaiting_approval` is also an `approval.requested` event — for the owner, and for every
-- teacher or admin with an endpoint that wants it (they are the ones who approve). Written by
-- triggers, so every writer of a pipeline run's status (`set_pipeline_run_status`,
-- `end_pipeline_run`, the start's insert) emits in its own transaction, as runs do.

CREATE FUNCTION pipeline_runs_emit_status() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_previous text;
    v_data jsonb;
    v_stage text;
    v_staff uuid;
BEGIN
    -- Nobody listening (the common case): one index probe, no JSON built.
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoints e
                   WHERE e.disabled_at IS NULL
                     AND ((e.owner_id = NEW.owner_id
                           AND e.events && ARRAY['pipeline_run.status', 'approval.requested'])
                          OR (NEW.status = 'awaiting_approval'
                              AND 'approval.requested' = ANY (e.events)))) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        v_previous := OLD.status;
    END IF;
    v_data := jsonb_build_object('pipeline_run', to_jsonb(NEW), 'previous_status', v_previous);
    PERFORM webhook_emit(NEW.owner_id, 'pipeline_run.status', NEW.id, v_data);
    IF NEW.status = 'awaiting_approval' THEN
        SELECT s.name INTO v_stage FROM pipeline_stages s
         WHERE s.pipeline_run_id = NEW.id AND s.stage = NEW.stage;
        v_data := jsonb_build_object('pipeline_run', to_jsonb(NEW), 'stage', v_stage,
                                     'stage_index', NEW.stage);
        PERFORM webhook_emit(NEW.owner_id, 'approval.requested', NEW.id, v_data);
        FOR v_staff IN
            SELECT DISTINCT e.owner_id FROM webhook_endpoints e JOIN users u ON u.id = e.owner_id
             WHERE e.disabled_at IS NULL AND 'approval.requested' = ANY (e.events)
               AND u.role IN ('teacher', 'admin') AND e.owner_id <> NEW.owner_id
        LOOP
            PERFORM webhook_emit(v_staff, 'approval.requested', NEW.id, v_data);
        END LOOP;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER pipeline_runs_status_webhook_insert AFTER INSERT ON pipeline_runs
    FOR EACH ROW EXECUTE FUNCTION pipeline_runs_emit_status();
CREATE TRIGGER pipeline_runs_status_webhook_update AFTER UPDATE OF status ON pipeline_runs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION pipeline_runs_emit_status();
