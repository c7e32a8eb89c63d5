// The editor, loaded only when a file is first opened so the app shell stays small. Language
// support is loaded on demand too, one language at a time.

import { EditorView, keymap, lineNumbers, highlightActiveLine, highlightActiveLineGutter, drawSelection, highlightSpecialChars } from '@codemirror/view';
import { EditorState, Compartment, type Extension } from '@codemirror/state';
import { defaultKeymap, history, historyKeymap, indentWithTab } from '@codemirror/commands';
import { HighlightStyle, syntaxHighlighting, indentOnInput, bracketMatching, StreamLanguage } from '@codemirror/language';
import { tags as t } from '@lezer/highlight';

export { EditorView, EditorState };

/** Token colours come from CSS variables, so both themes keep readable contrast. */
const highlight = HighlightStyle.define([
  { tag: [t.keyword, t.controlKeyword, t.operatorKeyword, t.definitionKeyword, t.moduleKeyword], color: 'var(--tok-keyword)' },
  { tag: [t.string, t.special(t.string), t.regexp], color: 'var(--tok-string)' },
  { tag: [t.comment, t.lineComment, t.blockComment], color: 'var(--tok-comment)', fontStyle: 'italic' },
  { tag: [t.number, t.bool, t.null, t.atom], color: 'var(--tok-number)' },
  { tag: [t.function(t.variableName), t.function(t.propertyName), t.definition(t.variableName)], color: 'var(--tok-function)' },
  { tag: [t.typeName, t.className], color: 'var(--tok-type)' },
]);

const theme = EditorView.theme({
  '&': { height: '100%', color: 'var(--fg)', backgroundColor: 'var(--bg)' },
  '.cm-scroller': { fontFamily: 'var(--mono)', lineHeight: '1.5' },
  '.cm-gutters': { backgroundColor: 'var(--bg-alt)', color: 'var(--fg-muted)', borderRight: '1px solid var(--border)' },
  '.cm-activeLine': { backgroundColor: 'var(--active-line)' },
  '.cm-activeLineGutter': { backgroundColor: 'var(--active-line)' },
  '&.cm-focused': { outline: '2px solid var(--focus)', outlineOffset: '-2px' },
  '.cm-cursor': { borderLeftColor: 'var(--fg)' },
  '&.cm-focused .cm-selectionBackground, .cm-selectionBackground, ::selection': { backgroundColor: 'var(--selection)' },
});

export async function languageSupport(mode: string | null): Promise<Extension> {
  switch (mode) {
    case 'python':
      return (await import('@codemirror/lang-python')).python();
    case 'java':
      return (await import('@codemirror/lang-java')).java();
    case 'r':
      return StreamLanguage.define((await import('@codemirror/legacy-modes/mode/r')).r);
    case 'scala':
      return StreamLanguage.define((await import('@codemirror/legacy-modes/mode/clike')).scala);
    default:
      return [];
  }
}

export interface EditorHandlers {
  change(content: string): void;
  save(): void;
  run(): void;
}

/** The editor's fixed extensions; the language and read-only state sit in compartments. */
export function baseExtensions(handlers: EditorHandlers, language: Compartment, readOnly: Compartment, label: Compartment): Extension[] {
  return [
    lineNumbers(),
    highlightActiveLineGutter(),
    highlightSpecialChars(),
    history(),
    drawSelection(),
    indentOnInput(),
    bracketMatching(),
    highlightActiveLine(),
    syntaxHighlighting(highlight),
    theme,
    language.of([]),
    readOnly.of([]),
    label.of([]),
    keymap.of([
      { key: 'Mod-s', preventDefault: true, run: () => (handlers.save(), true) },
      { key: 'Mod-Enter', preventDefault: true, run: () => (handlers.run(), true) },
      ...defaultKeymap,
      ...historyKeymap,
      // Tab indents; Escape then Tab moves focus out of the editor (CodeMirror's tab focus mode).
      indentWithTab,
    ]),
    EditorView.updateListener.of((u) => {
      if (u.docChanged) handlers.change(u.state.doc.toString());
    }),
  ];
}

export { Compartment };
export function readOnlyExtension(on: boolean): Extension {
  return [EditorState.readOnly.of(on), EditorView.editable.of(!on)];
}
export function labelExtension(label: string): Extension {
  return EditorView.contentAttributes.of({ 'aria-label': label });
}
