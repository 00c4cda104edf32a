import cytoscape from 'cytoscape';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import './style.css';
import { api, ApiError, get, loggedIn, login, logout, whenLoggedOut, type ArrayInfo, type Binding, type EventRecord, type Graph, type Health, type Host, type IoReading, type Job, type Namespace, type Volume } from './api.js';
import { ask, bytes, flash, h, PagedTable } from './ui.js';

const main = document.getElementById('main')!;
const nav = document.getElementById('nav')!;
const who = document.getElementById('who')!;

const VIEWS = ['overview', 'hosts', 'volumes', 'jobs', 'events', 'topology'] as const;
type View = (typeof VIEWS)[number];
const TITLES: Record<View, string> = { overview: 'Overview', hosts: 'Hosts', volumes: 'Volumes', jobs: 'Jobs', events: 'Events', topology: 'Topology' };

/** What the open view does on a live update, and what it stops when left. */
let refresh: (() => Promise<void>) | null = null;
let leave: (() => void) | null = null;

// ---------- live updates: one event stream, refreshes batched ----------

const eventLog: EventRecord[] = [];
const EVENT_KEEP = 500;
let streamAbort: AbortController | null = null;
let refreshQueued = false;
let eventsListener: (() => void) | null = null;

/**
 * Events arrive one by one; a bulk change (1,000 volumes created) would
 * otherwise re-render the view 1,000 times. A burst is folded into at most
 * one refresh per second.
 */
function scheduleRefresh(): void {
  if (refreshQueued) return;
  refreshQueued = true;
  setTimeout(() => {
    refreshQueued = false;
    void refresh?.().catch(showError);
  }, 1000);
}

/**
 * Reads the event stream with fetch rather than EventSource: events are sent
 * under their own type names, which EventSource would only deliver to a
 * listener per name. Reconnects from the last id it saw.
 */
function openStream(): void {
  streamAbort?.abort();
  const ctl = new AbortController();
  streamAbort = ctl;
  void (async () => {
    while (!ctl.signal.aborted) {
      try {
        const since = eventLog.at(-1)?.id ?? 0;
        const res = await fetch(`/v1/events?stream=1&since=${since}`, { credentials: 'same-origin', signal: ctl.signal, headers: { accept: 'text/event-stream' } });
        if (res.status === 401) return;
        const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value;
          let cut: number;
          while ((cut = buf.indexOf('\n\n')) >= 0) {
            const block = buf.slice(0, cut);
            buf = buf.slice(cut + 2);
            const data = block
              .split('\n')
              .filter((l) => l.startsWith('data: '))
              .map((l) => l.slice(6))
              .join('\n');
            if (data) onEvent(JSON.parse(data) as EventRecord);
          }
        }
      } catch {
        /* dropped: try again below */
      }
      if (!ctl.signal.aborted) await new Promise((r) => setTimeout(r, 2000));
    }
  })();
}

function onEvent(e: EventRecord): void {
  if (eventLog.length && e.id <= eventLog.at(-1)!.id) return;
  eventLog.push(e);
  if (eventLog.length > EVENT_KEEP) eventLog.splice(0, eventLog.length - EVENT_KEEP);
  eventsListener?.();
  scheduleRefresh();
}

// ---------- shell ----------

function showError(e: unknown): void {
  if (e instanceof ApiError) flash(`${e.code}: ${e.message}`);
  else flash(String((e as Error)?.message ?? e));
}

/** Runs an action the admin confirmed; the API's own message is what the admin sees on failure. */
async function act(what: string, fn: () => Promise<unknown>): Promise<void> {
  try {
    await fn();
    flash(`${what}: done`, 'info');
  } catch (e) {
    showError(e);
  }
  await refresh?.().catch(showError);
}

function current(): View {
  const v = location.hash.replace(/^#\/?/, '') as View;
  return VIEWS.includes(v) ? v : 'overview';
}

async function route(): Promise<void> {
  leave?.();
  leave = null;
  refresh = null;
  const v = current();
  for (const a of nav.querySelectorAll('a')) {
    if (a.dataset.view === v) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  document.title = `${TITLES[v]} · blockgate console`;
  main.replaceChildren(h('h1', {}, TITLES[v]));
  main.dataset.view = v;
  main.dataset.ready = '0';
  try {
    await RENDER[v]();
    main.dataset.ready = '1';
  } catch (e) {
    showError(e);
  }
}

function showLogin(): void {
  streamAbort?.abort();
  streamAbort = null;
  leave?.();
  leave = null;
  refresh = null;
  nav.hidden = true;
  who.replaceChildren();
  const input = h('input', { id: 'token', name: 'token', type: 'password', autocomplete: 'current-password', required: true });
  const form = h(
    'form',
    { class: 'login', id: 'login' },
    h('h1', {}, 'Log in'),
    h('p', { class: 'muted' }, 'Paste the API token (DATA/api-token, or the one given with --api-token). It is exchanged for a session cookie and not kept by the page.'),
    h('label', { for: 'token' }, h('span', {}, 'API token'), input),
    h('button', { type: 'submit', class: 'primary' }, 'Log in'),
  );
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    void (async () => {
      try {
        await login(input.value);
        input.value = '';
        flash('');
        start();
      } catch (e) {
        showError(e);
      }
    })();
  });
  main.dataset.view = 'login';
  main.replaceChildren(form);
  input.focus();
}

function start(): void {
  nav.hidden = false;
  nav.replaceChildren(...VIEWS.map((v) => h('a', { href: `#${v}`, 'data-view': v }, TITLES[v])));
  who.replaceChildren(
    h('button', {
      type: 'button',
      id: 'logout',
      onclick: () =>
        void logout()
          .catch(() => undefined)
          .then(() => {
            flash('Logged out', 'info');
            location.hash = '';
            showLogin();
          }),
    }, 'Log out'),
  );
  openStream();
  void route();
}

window.addEventListener('hashchange', () => {
  if (!nav.hidden) void route();
});
whenLoggedOut(() => {
  if (!nav.hidden) {
    flash('The session has ended: log in again');
    showLogin();
  }
});

// ---------- overview ----------

const HISTORY = 120;

async function overview(): Promise<void> {
  const [health, { arrays }] = await Promise.all([get<Health>('/v1/health'), get<{ arrays: ArrayInfo[] }>('/v1/arrays')]);
  const cards = h('div', { class: 'cards' });
  const live = h('div', { class: 'cards', id: 'live' });
  const arrayBox = h('div', {});
  const top = h('div', {});
  const drawArrays = (list: ArrayInfo[], hl: Health): void => {
    const virtual = list.reduce((n, a) => n + a.size, 0);
    const used = list.reduce((n, a) => n + a.used, 0);
    const allocated = list.reduce((n, a) => n + (a.allocated ?? 0), 0);
    cards.replaceChildren(
      card('Health', h('span', { class: `status-${hl.status}`, id: 'health' }, hl.status), hl.reasons.length ? `${hl.reasons.length} reason(s)` : `appliance ${hl.appliance}`),
      card('Arrays', list.length, `${bytes(virtual)} virtual`),
      card('Given to volumes', bytes(used), `${bytes(virtual - used)} free`),
      card('Allocated on disk', bytes(allocated), 'bytes the array files hold'),
    );
    arrayBox.replaceChildren(
      h(
        'table',
        {},
        h('caption', { class: 'muted' }, 'Arrays: virtual size, given to volumes, free, held on the file system; overcommit is the virtual size over the room its file system really has (bytes held plus free); above 1× a full file system can refuse writes (limit: setting arrays.overcommit)'),
        h('thead', {}, h('tr', {}, ...['Array', 'State', 'Class', 'Virtual', 'Given', 'Free', 'Allocated', 'FS available', 'Overcommit', 'Volumes'].map((c) => h('th', { scope: 'col' }, c)))),
        h(
          'tbody',
          {},
          ...list.map((a) => {
            const room = (a.allocated ?? 0) + (a.fileSystem?.available ?? 0);
            const over = room > 0 ? a.size / room : 0;
            return h(
              'tr',
              {},
              h('th', { scope: 'row' }, a.name),
              h('td', { class: `status-${a.state === 'online' ? 'ok' : 'failed'}` }, a.state),
              h('td', {}, a.qualityClass),
              h('td', { class: 'num' }, bytes(a.size)),
              h('td', { class: 'num' }, bytes(a.used)),
              h('td', { class: 'num' }, bytes(a.free)),
              h('td', { class: 'num' }, bytes(a.allocated)),
              h('td', { class: 'num' }, bytes(a.fileSystem?.available)),
              h('td', { class: 'num' }, `${over.toFixed(2)}×`),
              h('td', { class: 'num' }, a.volumes.length),
            );
          }),
        ),
      ),
    );
  };
  drawArrays(arrays, health);

  const charts = h('div', { class: 'charts' });
  main.append(cards, h('h2', {}, 'Live I/O'), live, charts, h('h2', {}, 'Top volumes'), top, h('h2', {}, 'Arrays'), arrayBox);

  const xs: number[] = [];
  const series = { readIops: [] as number[], writeIops: [] as number[], readMBs: [] as number[], writeMBs: [] as number[], latency: [] as number[] };
  const width = Math.max(320, Math.min(560, main.clientWidth / 2 - 40));
  const mk = (title: string, labels: string[], stroke: string[]): uPlot =>
    new uPlot(
      { title, width, height: 200, series: [{}, ...labels.map((label, i) => ({ label, stroke: stroke[i], width: 2 }))], axes: [{}, { size: 60 }], scales: { x: { time: true } } },
      [[], ...labels.map(() => [])],
      h('div', { class: 'chart', role: 'img', 'aria-label': title }),
    );
  const iops = mk('IOPS', ['read', 'write'], ['#0b5cad', '#a4161a']);
  const tput = mk('Throughput (MB/s)', ['read', 'write'], ['#0b5cad', '#a4161a']);
  const lat = mk('Mean latency (ms)', ['all'], ['#136c2e']);
  charts.append(iops.root.parentElement!, tput.root.parentElement!, lat.root.parentElement!);

  let last: IoReading | null = null;
  const sumOps = (r: IoReading['total']): number => Object.values(r.ops).reduce((a, b) => a + b, 0);
  const sumLat = (r: IoReading['total']): number => Object.values(r.latencySeconds).reduce((a, b) => a + b, 0);
  const tick = async (): Promise<void> => {
    const r = await get<IoReading>('/v1/metrics/io');
    if (last) {
      const dt = Math.max(0.001, (r.at - last.at) / 1000);
      const p = last;
      const dOps = sumOps(r.total) - sumOps(p.total);
      xs.push(r.at / 1000);
      series.readIops.push((r.total.ops.read - p.total.ops.read) / dt);
      series.writeIops.push((r.total.ops.write - p.total.ops.write) / dt);
      series.readMBs.push((r.total.bytes.read - p.total.bytes.read) / dt / 1e6);
      series.writeMBs.push((r.total.bytes.write - p.total.bytes.write) / dt / 1e6);
      series.latency.push(dOps > 0 ? ((sumLat(r.total) - sumLat(p.total)) / dOps) * 1000 : 0);
      if (xs.length > HISTORY) for (const a of [xs, ...Object.values(series)]) a.shift();
      iops.setData([xs, series.readIops, series.writeIops]);
      tput.setData([xs, series.readMBs, series.writeMBs]);
      lat.setData([xs, series.latency]);
      const iopsNow = (dOps / dt).toFixed(0);
      const mbNow = ((Object.values(r.total.bytes).reduce((a, b) => a + b, 0) - Object.values(p.total.bytes).reduce((a, b) => a + b, 0)) / dt / 1e6).toFixed(1);
      const sessions = r.sessions.reduce((n, s) => n + s.sessions, 0);
      live.replaceChildren(
        card('IOPS now', h('span', { id: 'iops-now', 'data-value': iopsNow }, iopsNow), 'all hosts, all operations'),
        card('MB/s now', h('span', { id: 'mbs-now' }, mbNow), 'read + write'),
        card('Latency', `${series.latency.at(-1)!.toFixed(2)} ms`, 'mean over the last second'),
        card('Requests served', h('span', { id: 'ops-total', 'data-value': sumOps(r.total) }, sumOps(r.total)), `${sessions} open session(s)`),
      );
      const prev = new Map(p.volumes.map((v) => [`${v.host}/${v.volume}`, v]));
      const rates = r.volumes
        .map((v) => {
          const o = prev.get(`${v.host}/${v.volume}`);
          const ops = o ? (sumOps(v) - sumOps(o)) / dt : 0;
          const mb = o ? (Object.values(v.bytes).reduce((a, b) => a + b, 0) - Object.values(o.bytes).reduce((a, b) => a + b, 0)) / dt / 1e6 : 0;
          return { key: `${v.host} → ${v.volume}`, ops, mb, total: sumOps(v) };
        })
        .sort((a, b) => b.ops - a.ops || b.total - a.total)
        .slice(0, 10);
      top.replaceChildren(
        h(
          'table',
          { id: 'top-volumes' },
          h('caption', { class: 'muted' }, 'The ten busiest units over the last second'),
          h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Host → volume'), h('th', { scope: 'col', class: 'num' }, 'IOPS'), h('th', { scope: 'col', class: 'num' }, 'MB/s'), h('th', { scope: 'col', class: 'num' }, 'Requests'))),
          h('tbody', {}, ...rates.map((x) => h('tr', {}, h('th', { scope: 'row' }, x.key), h('td', { class: 'num' }, x.ops.toFixed(0)), h('td', { class: 'num' }, x.mb.toFixed(1)), h('td', { class: 'num' }, x.total)))),
        ),
      );
    }
    last = r;
  };
  await tick();
  const timer = setInterval(() => void tick().catch(showError), 1000);
  leave = () => clearInterval(timer);
  refresh = async () => {
    const [hl, a] = await Promise.all([get<Health>('/v1/health'), get<{ arrays: ArrayInfo[] }>('/v1/arrays')]);
    drawArrays(a.arrays, hl);
  };
}

function card(k: string, v: Node | string | number, note: string): HTMLElement {
  return h('div', { class: 'card' }, h('div', { class: 'k' }, k), h('div', { class: 'v' }, v), h('div', { class: 'muted' }, note));
}

// ---------- hosts ----------

async function hostsView(): Promise<void> {
  let selected: string | null = null;
  let sessions = new Map<string, number>();
  const detail = h('section', { class: 'detail', id: 'host-detail', 'aria-live': 'polite' }, h('p', { class: 'muted' }, 'Choose a host to see its namespace.'));
  const table = new PagedTable<Host>(
    'hosts',
    ['Host', 'Farm', 'Protocols', 'Units', 'Sessions', 'Listener', ''],
    (x) =>
      h(
        'tr',
        { 'data-host': x.name },
        h('th', { scope: 'row' }, x.name),
        h('td', {}, x.farm),
        h('td', {}, x.protocols.join(', ')),
        h('td', { class: 'num' }, x.units),
        h('td', { class: 'num', 'data-sessions': sessions.get(x.name) ?? 0 }, sessions.get(x.name) ?? 0),
        h('td', { class: 'mono' }, x.nbd.tcp ?? x.nbd.socket),
        h('td', {}, h('button', { type: 'button', 'aria-label': `Show host ${x.name}`, onclick: () => void show(x.name) }, 'Show')),
      ),
    (x) => `${x.name} ${x.farm} ${x.protocols.join(' ')}`,
  );
  const show = async (name: string): Promise<void> => {
    selected = name;
    const [ns, { bindings }] = await Promise.all([get<Namespace>(`/v1/hosts/${encodeURIComponent(name)}/namespace`), get<{ bindings: Binding[] }>(`/v1/bindings?host=${encodeURIComponent(name)}`)]);
    detail.replaceChildren(
      h('h2', {}, `Host ${name}: namespace`),
      h(
        'table',
        { id: 'units' },
        h('caption', { class: 'muted' }, 'Mapped units and where the host reaches them'),
        h('thead', {}, h('tr', {}, ...['Unit', 'Volume', 'Size', 'Protocol', 'Access', 'URIs'].map((c) => h('th', { scope: 'col' }, c)))),
        h(
          'tbody',
          {},
          ...ns.units.map((u) =>
            h('tr', { 'data-unit': `${u.target}/${u.lun}` }, h('th', { scope: 'row' }, `${u.target}/${u.lun}`), h('td', {}, u.volume), h('td', { class: 'num' }, bytes(u.size)), h('td', {}, u.protocol), h('td', {}, u.readOnly ? 'read-only' : 'read-write'), h('td', { class: 'mono' }, u.uris.join('\n'))),
          ),
        ),
      ),
      h('h2', {}, 'Bindings'),
      bindingTable(bindings),
    );
  };
  main.append(table.el, detail);
  refresh = async () => {
    const [{ hosts }, io] = await Promise.all([get<{ hosts: Host[] }>('/v1/hosts'), get<IoReading>('/v1/metrics/io').catch(() => null)]);
    sessions = new Map();
    for (const s of io?.sessions ?? []) sessions.set(s.host, (sessions.get(s.host) ?? 0) + s.sessions);
    table.set(hosts);
    if (selected) await show(selected);
  };
  await refresh();
  // Sessions come and go without an event of their own: they are read again every few seconds.
  const timer = setInterval(() => void refresh?.().catch(showError), 3000);
  leave = () => clearInterval(timer);
}

function bindingTable(bindings: Binding[]): HTMLElement {
  return h(
    'table',
    { class: 'bindings' },
    h('thead', {}, h('tr', {}, ...['Binding', 'Host', 'Unit', 'Volume', 'Protocol', 'Mapped', 'Actions'].map((c) => h('th', { scope: 'col' }, c)))),
    h(
      'tbody',
      {},
      ...bindings.map((b) =>
        h(
          'tr',
          { 'data-binding': b.id },
          h('th', { scope: 'row' }, `#${b.id}`),
          h('td', {}, b.host),
          h('td', {}, `${b.target}/${b.lun}`),
          h('td', {}, b.volume),
          h('td', {}, String(b.protocol ?? '')),
          h('td', {}, b.mapped ? 'mapped' : 'not mapped'),
          h(
            'td',
            {},
            b.mapped
              ? h('button', { type: 'button', onclick: () => void bindingStep(b, 'unmap') }, 'Unmap')
              : [h('button', { type: 'button', onclick: () => void bindingStep(b, 'map') }, 'Map'), h('button', { type: 'button', class: 'danger', onclick: () => void bindingStep(b, 'unbind') }, 'Unbind')],
          ),
        ),
      ),
    ),
  );
}

async function bindingStep(b: Binding, step: 'map' | 'unmap' | 'unbind'): Promise<void> {
  const what: Record<typeof step, string> = {
    map: `Map volume ${b.volume} as unit ${b.target}/${b.lun} of host ${b.host}?`,
    unmap: `Unmap unit ${b.target}/${b.lun} (volume ${b.volume}) from host ${b.host}? Its sessions end after a flush.`,
    unbind: `Unbind volume ${b.volume} from host ${b.host}?`,
  };
  if (!(await ask(what[step], [], step[0]!.toUpperCase() + step.slice(1)))) return;
  await act(`${step} ${b.volume}`, () => (step === 'unbind' ? api('DELETE', `/v1/bindings/${b.id}`) : api('POST', `/v1/bindings/${b.id}/${step}`)));
}

// ---------- volumes ----------

const vol = (name: string, rest = ''): string => `/v1/volumes/${encodeURIComponent(name)}${rest}`;

/** Each operation the state machine may allow, as the action its button runs. */
const VOLUME_ACTIONS: Record<string, (v: Volume) => Promise<void>> = {
  configure: async (v) => {
    if (await ask(`Configure volume ${v.name}?`)) await act(`configure ${v.name}`, () => api('POST', vol(v.name, '/configure')));
  },
  bind: async (v) => {
    const { hosts } = await get<{ hosts: Host[] }>('/v1/hosts');
    const a = await ask(`Bind volume ${v.name} to a host`, [
      { name: 'host', label: 'Host', type: 'select', options: hosts.map((x) => x.name) },
      { name: 'target', label: 'Target', type: 'number', value: '0' },
      { name: 'lun', label: 'LUN', type: 'number', value: '1' },
      { name: 'map', label: 'Map it too', type: 'select', options: ['yes', 'no'], value: 'yes' },
    ], 'Bind');
    if (a) await act(`bind ${v.name}`, () => api('POST', '/v1/bindings', { volume: v.name, host: a.host, target: Number(a.target), lun: Number(a.lun), map: a.map === 'yes' }));
  },
  map: (v) => pickBinding(v, 'map', (b) => !b.mapped),
  unmap: (v) => pickBinding(v, 'unmap', (b) => b.mapped),
  unbind: (v) => pickBinding(v, 'unbind', (b) => !b.mapped),
  scrub: async (v) => {
    const a = await ask(`Scrub volume ${v.name}: every byte is overwritten and verified`, [{ name: 'pattern', label: 'Pattern byte', type: 'number', value: '0' }], 'Scrub');
    if (a) await act(`scrub ${v.name}`, () => api('POST', vol(v.name, '/scrub'), { pattern: Number(a.pattern) }));
  },
  snap: async (v) => {
    const a = await ask(`Snapshot volume ${v.name} (copy-on-write, point in time)`, [{ name: 'snapshot', label: 'Snapshot name', value: `${v.name}-snap` }], 'Snapshot');
    if (a) await act(`snapshot ${v.name}`, () => api('POST', vol(v.name, '/snap'), { snapshot: a.snapshot }));
  },
  copy: async (v) => {
    const a = await ask(`Copy volume ${v.name} onto other volumes`, [{ name: 'targets', label: 'Target volumes (comma separated)' }], 'Copy');
    if (a) await act(`copy ${v.name}`, () => api('POST', vol(v.name, '/copy'), { targets: a.targets.split(',').map((s) => s.trim()).filter(Boolean) }));
  },
  resize: async (v) => {
    const a = await ask(`Grow volume ${v.name} (now ${bytes(v.size)})`, [{ name: 'size', label: 'New size (e.g. 2G)' }], 'Resize');
    if (a) await act(`resize ${v.name}`, () => api('POST', vol(v.name, '/resize'), { size: /^\d+$/.test(a.size) ? Number(a.size) : a.size }));
  },
  break: async (v) => {
    if (await ask(`Break volume ${v.name} (→ unconfigured)?`, [], 'Break')) await act(`break ${v.name}`, () => api('POST', vol(v.name, '/break')));
  },
  deallocate: async (v) => {
    if (await ask(`De-allocate volume ${v.name}: its space goes back to the arrays`, [], 'De-allocate')) await act(`deallocate ${v.name}`, () => api('POST', vol(v.name, '/deallocate')));
  },
};

async function pickBinding(v: Volume, step: 'map' | 'unmap' | 'unbind', fits: (b: Binding) => boolean): Promise<void> {
  const { bindings } = await get<{ bindings: Binding[] }>(`/v1/bindings?volume=${encodeURIComponent(v.name)}`);
  const choice = bindings.filter(fits);
  if (choice.length === 0) return flash(`volume ${v.name} has no binding to ${step}`);
  if (choice.length === 1) return bindingStep(choice[0]!, step);
  const a = await ask(`Which binding of ${v.name}?`, [{ name: 'b', label: 'Binding', type: 'select', options: choice.map((b) => `#${b.id} ${b.host} ${b.target}/${b.lun}`) }], 'Next');
  if (a) await bindingStep(choice.find((b) => a.b.startsWith(`#${b.id} `))!, step);
}

async function setCachePolicy(v: Volume): Promise<void> {
  const a = await ask(`Cache policy of ${v.name}`, [{ name: 'policy', label: 'Policy', type: 'select', options: ['write-back', 'write-through', 'none'], value: v.cachePolicy }], 'Set');
  if (a) await act(`cache policy of ${v.name}`, () => api('PATCH', vol(v.name), { cachePolicy: a.policy }));
}

async function volumesView(): Promise<void> {
  const table = new PagedTable<Volume>(
    'volumes',
    ['Volume', 'State', 'Size', 'Allocated', 'Serial', 'NAA', 'Cache', 'Job', 'Operations allowed now'],
    (v) =>
      h(
        'tr',
        { 'data-volume': v.name, 'data-state': v.state },
        h('th', { scope: 'row' }, v.name, v.snapshotOf ? h('span', { class: 'muted' }, ` (snapshot of ${v.snapshotOf})`) : null),
        h('td', { class: v.health === 'ok' ? '' : 'status-failed' }, v.state),
        h('td', { class: 'num' }, bytes(v.size)),
        h('td', { class: 'num' }, bytes(v.allocated)),
        h('td', { class: 'mono' }, v.serial),
        h('td', { class: 'mono' }, v.naa),
        h('td', {}, h('button', { type: 'button', 'aria-label': `Cache policy of ${v.name}: ${v.cachePolicy}`, onclick: () => void setCachePolicy(v) }, v.cachePolicy)),
        h('td', {}, v.job === null ? '' : h('a', { href: '#jobs' }, `#${v.job}`)),
        h(
          'td',
          {},
          ...v.allowed.filter((op) => VOLUME_ACTIONS[op]).map((op) => h('button', { type: 'button', 'data-op': op, 'aria-label': `${op} ${v.name}`, onclick: () => void VOLUME_ACTIONS[op]!(v).catch(showError) }, op)),
        ),
      ),
    (v) => `${v.name} ${v.state} ${v.serial} ${v.naa} ${v.cachePolicy}`,
  );
  const create = h('button', {
    type: 'button',
    class: 'primary',
    id: 'create-volume',
    onclick: () =>
      void (async () => {
        const a = await ask('Create a volume', [
          { name: 'name', label: 'Name' },
          { name: 'size', label: 'Size (e.g. 64M, 1G)', value: '64M' },
          { name: 'provisioning', label: 'Provisioning', type: 'select', options: ['thin', 'thick'], value: 'thin' },
        ], 'Create');
        if (a) await act(`create ${a.name}`, () => api('POST', '/v1/volumes', { name: a.name, size: /^\d+$/.test(a.size) ? Number(a.size) : a.size, provisioning: a.provisioning }));
      })(),
  }, 'Create volume');
  main.append(h('div', { class: 'toolbar' }, create), table.el);
  refresh = async () => table.set((await get<{ volumes: Volume[] }>('/v1/volumes')).volumes);
  await refresh();
}

// ---------- jobs ----------

async function jobsView(): Promise<void> {
  const table = new PagedTable<Job>(
    'jobs',
    ['Job', 'Kind', 'Subject', 'State', 'Progress', 'Error', ''],
    (j) => {
      const pct = Math.round(j.progress.fraction * 100);
      const subject = (j.params as { volume?: string; name?: string } | null)?.volume ?? (j.params as { name?: string } | null)?.name ?? '';
      return h(
        'tr',
        { 'data-job': j.id, 'data-state': j.state, 'data-kind': j.kind },
        h('th', { scope: 'row' }, `#${j.id}`),
        h('td', {}, j.kind),
        h('td', {}, String(subject)),
        h('td', {}, j.state),
        h('td', {}, h('progress', { max: 100, value: pct, 'aria-label': `job ${j.id} progress` }), ' ', h('span', { 'data-percent': pct }, `${pct} %`), h('span', { class: 'muted' }, ` ${bytes(j.progress.done)} of ${bytes(j.progress.total)}`)),
        h('td', {}, j.error ?? ''),
        h('td', {}, j.state === 'queued' || j.state === 'running' ? h('button', { type: 'button', class: 'danger', onclick: () => void cancelJob(j) }, 'Cancel') : ''),
      );
    },
    (j) => `${j.id} ${j.kind} ${j.state} ${JSON.stringify(j.params)}`,
  );
  main.append(table.el);
  let busy = false;
  refresh = async () => {
    const { jobs } = await get<{ jobs: Job[] }>('/v1/jobs?limit=1000');
    busy = jobs.some((j) => j.state === 'running' || j.state === 'queued');
    table.set(jobs);
  };
  await refresh();
  // Progress moves without events: poll while something runs.
  const timer = setInterval(() => {
    if (busy) void refresh?.().catch(showError);
  }, 1000);
  leave = () => clearInterval(timer);
}

async function cancelJob(j: Job): Promise<void> {
  if (await ask(`Cancel job #${j.id} (${j.kind})?`, [], 'Cancel job')) await act(`cancel job ${j.id}`, () => api('POST', `/v1/jobs/${j.id}/cancel`));
}

// ---------- events ----------

async function eventsView(): Promise<void> {
  const list = h('ul', { class: 'events', id: 'event-list', 'aria-label': 'Events, newest first' });
  let drawn = -1;
  const draw = (): void => {
    const newest = eventLog.at(-1)?.id ?? 0;
    if (newest === drawn) return;
    drawn = newest;
    list.replaceChildren(
      ...eventLog
        .slice(-200)
        .reverse()
        .map((e) => h('li', { 'data-event': e.id }, h('span', { class: 'muted' }, new Date(e.at).toLocaleTimeString(), ' '), h('strong', {}, e.type), ' ', e.subject ?? '', ' ', h('span', { class: 'mono muted' }, JSON.stringify(e.data)))),
    );
  };
  main.append(h('p', { class: 'muted' }, 'Live from the appliance’s event stream (server-sent events); the newest 200 are shown.'), list);
  draw();
  // Redrawn at most twice a second however fast events come.
  let pending = false;
  eventsListener = () => {
    if (pending) return;
    pending = true;
    setTimeout(() => {
      pending = false;
      draw();
    }, 500);
  };
  leave = () => (eventsListener = null);
}

// ---------- topology ----------

const KIND_COLOURS: Record<string, string> = { farm: '#6b7280', host: '#0b5cad', vm: '#7c3aed', unit: '#0e7490', binding: '#0891b2', volume: '#136c2e', extent: '#8a5a00', array: '#a4161a', file: '#4b5563', snapshot: '#65a30d' };
/** Beyond this a whole-appliance drawing is a hairball: the admin picks a host (or volume) to centre on. */
const MAX_NODES = 400;

async function topologyView(): Promise<void> {
  const { hosts } = await get<{ hosts: Host[] }>('/v1/hosts');
  const select = h('select', { id: 'root' }, h('option', { value: '' }, 'whole appliance'), ...hosts.map((x) => h('option', { value: `host/${x.name}` }, `host ${x.name}`)));
  const note = h('p', { class: 'muted', id: 'graph-note' });
  const box = h('div', { id: 'cy', role: 'img', 'aria-label': 'Resource graph: host, unit, volume, extents, arrays' });
  main.append(h('div', { class: 'toolbar' }, h('label', { for: 'root' }, h('span', {}, 'Centre on'), select)), note, box);
  let cy: cytoscape.Core | null = null;
  const draw = async (): Promise<void> => {
    const root = select.value;
    const g = await get<Graph>(root ? `/v1/graph?root=${encodeURIComponent(root)}` : '/v1/graph');
    let nodes = g.nodes;
    if (nodes.length > MAX_NODES) {
      nodes = nodes.slice(0, MAX_NODES);
      note.textContent = `${g.nodes.length} nodes: the first ${MAX_NODES} are drawn; centre on a host to see all of its part.`;
    } else note.textContent = `${g.nodes.length} nodes, ${g.edges.length} edges`;
    const ids = new Set(nodes.map((n) => n.id));
    cy?.destroy();
    cy = cytoscape({
      container: box,
      elements: [
        ...nodes.map((n) => ({ data: { id: n.id, label: `${n.kind} ${n.name}`, kind: n.kind } })),
        ...g.edges.filter((e) => ids.has(e.from) && ids.has(e.to)).map((e, i) => ({ data: { id: `e${i}`, source: e.from, target: e.to, rel: e.rel } })),
      ],
      style: [
        { selector: 'node', style: { label: 'data(label)', 'font-size': 10, 'background-color': (n: cytoscape.NodeSingular) => KIND_COLOURS[n.data('kind') as string] ?? '#333', color: '#111', 'text-valign': 'bottom' } },
        { selector: 'edge', style: { width: 1, 'line-color': '#9ca3af', 'target-arrow-color': '#9ca3af', 'target-arrow-shape': 'triangle', 'curve-style': 'bezier' } },
      ],
      layout: { name: 'breadthfirst', directed: true, spacingFactor: 0.9 },
    });
    box.dataset.nodes = String(nodes.length);
  };
  select.addEventListener('change', () => void draw().catch(showError));
  await draw();
  refresh = draw;
  leave = () => cy?.destroy();
}

const RENDER: Record<View, () => Promise<void>> = { overview, hosts: hostsView, volumes: volumesView, jobs: jobsView, events: eventsView, topology: topologyView };

void (async () => {
  if (await loggedIn()) start();
  else showLogin();
})();
