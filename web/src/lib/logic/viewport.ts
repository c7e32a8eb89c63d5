// Which log lines to render: only the visible ones (plus a margin), so a log of tens of
// thousands of lines costs the page the same as a short one.

export function visibleRange(scrollTop: number, viewportHeight: number, lineHeight: number, total: number, overscan = 20): { start: number; end: number } {
  const first = Math.floor(scrollTop / lineHeight);
  const count = Math.ceil(viewportHeight / lineHeight);
  const start = Math.max(0, first - overscan);
  const end = Math.min(total, first + count + overscan);
  return { start, end: Math.max(start, end) };
}

/** True when the view is scrolled to (within a line of) the bottom. */
export function atBottom(scrollTop: number, viewportHeight: number, scrollHeight: number, lineHeight: number): boolean {
  return scrollTop + viewportHeight >= scrollHeight - lineHeight;
}
