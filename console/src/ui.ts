/** Small DOM helpers: every value reaches the page as text, never as markup. */

type Child = Node | string | number | null | undefined | false;
type Attrs = Record<string, string | number | boolean | ((e: Event) => void) | undefined>;

export function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Attrs = {}, ...children: (Child | Child[])[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === false) continue;
    if (typeof v === 'function') el.addEventListener(k.replace(/^on/, ''), v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

export function bytes(n: number | null | undefined): string {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v >= 100 || i === 0 ? v.toFixed(0) : v.toFixed(1)} ${units[i]}`;
}

export function flash(message: string, kind: 'error' | 'info' = 'error'): void {
  const f = document.getElementById('flash')!;
  f.className = kind === 'info' ? 'info' : '';
  f.textContent = message;
}

export interface Field {
  name: string;
  label: string;
  type?: 'text' | 'number' | 'select';
  value?: string;
  options?: string[];
  required?: boolean;
}

/**
 * The confirmation every action goes through: a modal dialog saying what will
 * happen, with the action's parameters; resolves to the values, or null when
 * cancelled.
 */
export function ask(title: string, fields: Field[] = [], confirm = 'Confirm'): Promise<Record<string, string> | null> {
  const dialog = document.getElementById('ask') as HTMLDialogElement;
  const form = document.getElementById('ask-form') as HTMLFormElement;
  document.getElementById('ask-title')!.textContent = title;
  document.getElementById('ask-ok')!.textContent = confirm;
  const box = document.getElementById('ask-fields')!;
  box.replaceChildren(
    ...fields.map((f) => {
      const id = `ask-${f.name}`;
      const input =
        f.type === 'select'
          ? h('select', { id, name: f.name }, ...(f.options ?? []).map((o) => h('option', { value: o, selected: o === f.value }, o)))
          : h('input', { id, name: f.name, type: f.type ?? 'text', value: f.value ?? '', required: f.required ?? true, autocomplete: 'off' });
      return h('label', { for: id }, h('span', {}, f.label), input);
    }),
  );
  return new Promise((resolve) => {
    const done = (): void => {
      dialog.removeEventListener('close', done);
      if (dialog.returnValue !== 'ok') return resolve(null);
      const values: Record<string, string> = {};
      for (const f of fields) values[f.name] = (form.elements.namedItem(f.name) as HTMLInputElement).value;
      resolve(values);
    };
    dialog.returnValue = '';
    dialog.addEventListener('close', done);
    dialog.showModal();
    (box.querySelector('input,select') as HTMLElement | null)?.focus();
  });
}

/**
 * A table that shows one page of rows at a time, so 1,000 volumes cost the
 * DOM no more than 50; a filter narrows the rows by their text.
 */
export class PagedTable<T> {
  page = 0;
  filter = '';
  readonly el = h('div', {});
  private rows: T[] = [];

  constructor(
    private readonly caption: string,
    private readonly head: string[],
    private readonly row: (r: T) => HTMLTableRowElement,
    private readonly text: (r: T) => string,
    private readonly pageSize = 50,
  ) {}

  set(rows: T[]): void {
    this.rows = rows;
    this.render();
  }

  render(): void {
    const f = this.filter.toLowerCase();
    const shown = f ? this.rows.filter((r) => this.text(r).toLowerCase().includes(f)) : this.rows;
    const pages = Math.max(1, Math.ceil(shown.length / this.pageSize));
    this.page = Math.min(this.page, pages - 1);
    const slice = shown.slice(this.page * this.pageSize, (this.page + 1) * this.pageSize);
    const filterId = `filter-${this.caption.replace(/\W+/g, '-').toLowerCase()}`;
    const input = h('input', { id: filterId, type: 'search', value: this.filter });
    input.addEventListener('input', () => {
      this.filter = input.value;
      this.page = 0;
      this.render();
      (document.getElementById(filterId) as HTMLInputElement | null)?.focus();
    });
    this.el.replaceChildren(
      h(
        'div',
        { class: 'pager' },
        h('label', { for: filterId }, h('span', {}, 'Filter'), input),
        h('button', { type: 'button', disabled: this.page === 0, onclick: () => this.go(-1) }, 'Previous'),
        h('span', { 'data-rows': shown.length }, `page ${this.page + 1} of ${pages} (${shown.length} ${this.caption})`),
        h('button', { type: 'button', disabled: this.page >= pages - 1, onclick: () => this.go(1) }, 'Next'),
      ),
      h('table', {}, h('caption', { class: 'muted' }, this.caption), h('thead', {}, h('tr', {}, ...this.head.map((c) => h('th', { scope: 'col' }, c)))), h('tbody', {}, ...slice.map(this.row))),
    );
  }

  private go(d: number): void {
    this.page += d;
    this.render();
  }
}
