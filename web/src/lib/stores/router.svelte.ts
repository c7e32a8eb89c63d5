// The current address, kept in step with the browser's history.

import { parseRoute, type Route } from '../logic/routes';

class Router {
  location = $state(window.location.pathname + window.location.search);
  route: Route = $derived.by(() => {
    const u = new URL(this.location, window.location.origin);
    return parseRoute(u.pathname, u.search);
  });

  constructor() {
    window.addEventListener('popstate', () => {
      this.location = window.location.pathname + window.location.search;
    });
  }

  go(to: string, options: { replace?: boolean } = {}): void {
    if (to === this.location) return;
    if (options.replace) history.replaceState(null, '', to);
    else history.pushState(null, '', to);
    this.location = to;
  }
}

export const router = new Router();
