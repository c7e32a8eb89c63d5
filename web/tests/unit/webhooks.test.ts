import { describe, expect, it } from 'vitest';
import {
  attemptOutcome,
  attemptsLabel,
  checkRegistration,
  deliveryTone,
  endpointState,
  eventLabel,
  eventsLabel,
  isDeliveryActive,
  lastOutcome,
  subjectKind,
  WEBHOOK_EVENTS,
} from '../../src/lib/logic/webhooks';

describe('callback events', () => {
  it('names every event of the contract, in its order', () => {
    expect(WEBHOOK_EVENTS.map((e) => e.type)).toEqual(['run.status', 'pipeline_run.status', 'approval.requested']);
    expect(eventLabel('run.status')).toBe('Run status');
    expect(eventLabel('approval.requested')).toBe('Approval requested');
    expect(eventLabel('run.deleted')).toBe('run.deleted');
  });

  it('lists an endpoint’s events in the contract’s order, unknown ones last', () => {
    expect(eventsLabel(['approval.requested', 'run.status'])).toBe('Run status, Approval requested');
    expect(eventsLabel(['run.new', 'pipeline_run.status'])).toBe('Pipeline run status, run.new');
    expect(eventsLabel([])).toBe('');
  });
});

describe('deliveries', () => {
  it('gives each status a tone and keeps refreshing only while one is pending', () => {
    expect(deliveryTone('succeeded')).toBe('ok');
    expect(deliveryTone('failed')).toBe('bad');
    expect(deliveryTone('pending')).toBe('active');
    expect(deliveryTone('something new')).toBe('neutral');
    expect(isDeliveryActive({ status: 'pending' })).toBe(true);
    expect(isDeliveryActive({ status: 'failed' })).toBe(false);
    expect(isDeliveryActive({ status: 'succeeded' })).toBe(false);
  });

  it('says what an attempt came to: the status code, the error, or both', () => {
    expect(attemptOutcome({ status_code: 200, error: null })).toBe('HTTP 200');
    expect(attemptOutcome({ status_code: 404, error: 'answered 404; not retried' })).toBe('HTTP 404: answered 404; not retried');
    expect(attemptOutcome({ status_code: null, error: 'connection refused' })).toBe('connection refused');
    expect(attemptOutcome({ status_code: undefined, error: '  ' })).toBe('no answer');
    expect(attemptOutcome({})).toBe('no answer');
  });

  it('shows the latest attempt, or that none was made', () => {
    const at = '2026-01-01T00:00:00Z';
    expect(lastOutcome({ attempts: [] })).toBe('not tried yet');
    expect(
      lastOutcome({
        attempts: [
          { at, duration_ms: 3, status_code: 500, error: null },
          { at, duration_ms: 3, status_code: 204, error: null },
        ],
      }),
    ).toBe('HTTP 204');
    expect(attemptsLabel(1)).toBe('1 attempt');
    expect(attemptsLabel(0)).toBe('0 attempts');
    expect(attemptsLabel(3)).toBe('3 attempts');
  });

  it('names what an event is about', () => {
    expect(subjectKind('run.status')).toBe('run');
    expect(subjectKind('pipeline_run.status')).toBe('pipeline run');
    expect(subjectKind('approval.requested')).toBe('pipeline run');
    expect(subjectKind('other')).toBe('subject');
  });
});

describe('endpoints', () => {
  it('shows an active endpoint, and a disabled one with the server’s reason', () => {
    expect(endpointState({ disabled_at: null, disabled_reason: null })).toEqual({ disabled: false, text: 'Active' });
    expect(endpointState({})).toEqual({ disabled: false, text: 'Active' });
    expect(endpointState({ disabled_at: '2026-01-01T00:00:00Z', disabled_reason: 'disabled after 20 failed attempts in a row over at least 86400 s; the last: answered 500' })).toEqual({
      disabled: true,
      text: 'Disabled after 20 failed attempts in a row over at least 86400 s; the last: answered 500',
    });
    expect(endpointState({ disabled_at: '2026-01-01T00:00:00Z', disabled_reason: 'the key cannot be opened' })).toEqual({ disabled: true, text: 'Disabled: the key cannot be opened' });
    expect(endpointState({ disabled_at: '2026-01-01T00:00:00Z', disabled_reason: null })).toEqual({ disabled: true, text: 'Disabled' });
  });

  it('checks the registration form for what the page can tell, and leaves the rest to the server', () => {
    expect(checkRegistration('  https://example.org/hook ', ['approval.requested', 'run.status'])).toEqual({
      ok: true,
      url: 'https://example.org/hook',
      events: ['run.status', 'approval.requested'],
    });
    expect(checkRegistration('HTTP://10.0.0.1/x', ['run.status'])).toMatchObject({ ok: true });
    expect(checkRegistration('', ['run.status'])).toEqual({ ok: false, error: 'Enter the URL that should receive the callbacks.' });
    expect(checkRegistration('ftp://example.org', ['run.status'])).toEqual({ ok: false, error: 'The URL must start with http:// or https://.' });
    expect(checkRegistration('https://example.org', [])).toEqual({ ok: false, error: 'Choose at least one event.' });
    expect(checkRegistration('https://example.org', ['run.finished'])).toEqual({ ok: false, error: 'Choose at least one event.' });
  });
});
