-- The sweep deletes status-callback events past `webhooks.keep_days` (shared/src/webhooks.rs,
-- `prune`): it finds them by age.
CREATE INDEX webhook_events_by_age ON webhook_events (created_at);
