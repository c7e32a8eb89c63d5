// Whether the server answers: a failed request raises the banner, the next answer lowers it.
// While it is down a probe retries, so the banner goes away by itself.

class Connection {
  down = $state(false);
  #probe: ReturnType<typeof setInterval> | null = null;
  #listeners = new Set<() => void>();

  report(ok: boolean): void {
    if (ok && this.down) {
      this.down = false;
      if (this.#probe) clearInterval(this.#probe);
      this.#probe = null;
      for (const l of this.#listeners) l();
    } else if (!ok && !this.down) {
      this.down = true;
      this.#probe = setInterval(() => {
        fetch('/healthz', { cache: 'no-store' })
          .then((r) => this.report(r.ok))
          .catch(() => {});
      }, 1000);
    }
  }

  /** Calls `listener` each time the server answers again after an outage. */
  onBack(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }
}

export const connection = new Connection();
