-- Status callbacks (issue 11): users' endpoints, an outbox of events written in the same
-- transaction as the change they describe, one delivery per event and endpoint, and every
-- attempt of a delivery.

CREATE TABLE webhook_endpoints (
    id                   uuid PRIMARY KEY,
    owner_id             uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    url                  text NOT NULL,
    events               text[] NOT NULL,
    -- The signing key behind `whsec_…` (see docs/decisions.md, "Status callbacks"): the worker
    -- needs it to sign, so it cannot be hashed; no API answer after the create shows it.
    secret               bytea NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    -- Failed attempts in a row, and when the first of them happened; a success resets both.
    consecutive_failures integer NOT NULL DEFAULT 0,
    failing_since        timestamptz,
    -- An endpoint that kept failing is disabled: it gets no new deliveries.
    disabled_at          timestamptz,
    disabled_reason      text
);
CREATE INDEX webhook_endpoints_by_owner ON webhook_endpoints (owner_id, created_at DESC, id);

-- Orders the events of one subject: the subject's row lock serializes its changes, so their
-- events draw increasing numbers (with gaps).
CREATE SEQUENCE webhook_event_sequence;

CREATE TABLE webhook_events (
    id         uuid PRIMARY KEY,
    owner_id   uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    type       text NOT NULL,
    subject    uuid NOT NULL,
    sequence   bigint NOT NULL,
    data       jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE webhook_deliveries (
    id              uuid PRIMARY KEY,
    endpoint_id     uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id        uuid NOT NULL REFERENCES webhook_events (id) ON DELETE CASCADE,
    status          text NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'succeeded', 'failed')),
    -- Attempts in the current schedule (a resend starts a new schedule).
    tries           integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- When its stream entry was added; NULL: the relay adds one once `next_attempt_at` is due.
    enqueued_at     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at     timestamptz
);
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id, created_at DESC, id);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_by_event ON webhook_deliveries (event_id);

CREATE TABLE webhook_attempts (
    id            bigserial PRIMARY KEY,
    delivery_id   uuid NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    at            timestamptz NOT NULL,
    status_code   integer,
    error         text,
    duration_ms   integer NOT NULL,
    -- When the next attempt is due, if the answer called for one.
    next_retry_at timestamptz
);
CREATE INDEX webhook_attempts_by_delivery ON webhook_attempts (delivery_id, id);

-- Records an event for every enabled endpoint of `p_owner` that wants `p_type`, in the
-- caller's transaction, and wakes the relay when it commits. Returns the deliveries created
-- (0, and nothing written, when no endpoint wants the event).
CREATE FUNCTION webhook_emit(p_owner uuid, p_type text, p_subject uuid, p_data jsonb)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_event uuid := gen_random_uuid();
    v_count integer;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoints e
                   WHERE e.owner_id = p_owner AND e.disabled_at IS NULL
                     AND p_type = ANY (e.events)) THEN
        RETURN 0;
    END IF;
    INSERT INTO webhook_events (id, owner_id, type, subject, sequence, data)
    VALUES (v_event, p_owner, p_type, p_subject, nextval('webhook_event_sequence'), p_data);
    INSERT INTO webhook_deliveries (id, endpoint_id, event_id)
    SELECT gen_random_uuid(), e.id, v_event
    FROM webhook_endpoints e
    WHERE e.owner_id = p_owner AND e.disabled_at IS NULL AND p_type = ANY (e.events);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    -- Delivered at commit (never for a rolled-back change); several in one transaction fold.
    PERFORM pg_notify('webhook_deliveries', '');
    RETURN v_count;
END $$;

-- Every status change of a run (its insert included) is a `run.status` event. The check for
-- an interested endpoint comes first, so a user without endpoints pays one index probe.
CREATE FUNCTION runs_emit_status() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_previous text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoints e
                   WHERE e.owner_id = NEW.owner_id AND e.disabled_at IS NULL
                     AND 'run.status' = ANY (e.events)) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        v_previous := OLD.status;
    END IF;
    PERFORM webhook_emit(NEW.owner_id, 'run.status', NEW.id, jsonb_build_object(
        'run', to_jsonb(NEW) - 'idempotency_key' - 'request_fingerprint',
        'previous_status', v_previous));
    RETURN NULL;
END $$;

CREATE TRIGGER runs_status_webhook_insert AFTER INSERT ON runs
    FOR EACH ROW EXECUTE FUNCTION runs_emit_status();
CREATE TRIGGER runs_status_webhook_update AFTER UPDATE OF status ON runs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION runs_emit_status();
