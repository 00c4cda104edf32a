/**
 * Login (RFC 7143 §6, §13): the security stage (CHAP one-way and mutual) and
 * operational parameter negotiation, as a pure state machine over key lists,
 * so every rule is testable without a socket. The target only answers keys,
 * except the two it must declare (MaxRecvDataSegmentLength, TargetPortalGroupTag).
 */
import crypto from 'node:crypto';
import { chapResponse, decodeChapValue, encodeChapValue, sameResponse, type ChapSecret } from './chap.js';
import { parseTargetIqn } from './naming.js';

/** Login status (class << 8 | detail). */
export const LOGIN_STATUS = {
  SUCCESS: 0x0000,
  INITIATOR_ERROR: 0x0200,
  AUTH_FAILED: 0x0201,
  UNSUPPORTED_VERSION: 0x0205,
  TOO_MANY_CONNECTIONS: 0x0206,
  MISSING_PARAMETER: 0x0207,
  SESSION_TYPE_UNSUPPORTED: 0x0209,
  SESSION_NOT_FOUND: 0x020a,
  INVALID_DURING_LOGIN: 0x020b,
  TARGET_ERROR: 0x0300,
  OUT_OF_RESOURCES: 0x0302,
} as const;

export const STAGE = { SECURITY: 0, OPERATIONAL: 1, FULL_FEATURE: 3 } as const;

/** What the appliance knows about an initiator: the host it acts for and its CHAP secrets. */
export interface InitiatorAccess {
  host: string;
  /** The initiator must prove this secret (one-way CHAP); null: no authentication. */
  chap: ChapSecret | null;
  /** Other secrets that also prove the host, told apart by CHAP_N (credentials issued to it at a migration). */
  otherChap?: readonly ChapSecret[];
  /** The target proves this secret when the initiator asks (mutual CHAP). */
  mutualChap: ChapSecret | null;
}

export interface LoginDirectory {
  /** The host an initiator name belongs to, when that host may use iSCSI. */
  initiator(name: string): InitiatorAccess | null;
  /** True when `host` has target number `target` (at least one unit on it). */
  hasTarget(host: string, target: number): boolean;
}

/** What the target offers; the negotiated values never exceed these. */
export interface TargetParams {
  maxRecvDataSegmentLength: number;
  maxBurstLength: number;
  firstBurstLength: number;
  maxOutstandingR2T: number;
}

export const DEFAULT_TARGET_PARAMS: TargetParams = {
  maxRecvDataSegmentLength: 256 * 1024,
  maxBurstLength: 1024 * 1024,
  firstBurstLength: 256 * 1024,
  maxOutstandingR2T: 4,
};

/** Operational parameters in force in full feature phase. */
export interface SessionParams {
  headerDigest: boolean;
  dataDigest: boolean;
  /** The initiator's MaxRecvDataSegmentLength: the largest data segment we may send. */
  sendDataSegmentLength: number;
  maxBurstLength: number;
  firstBurstLength: number;
  immediateData: boolean;
  initialR2T: boolean;
  maxOutstandingR2T: number;
  defaultTime2Wait: number;
  defaultTime2Retain: number;
}

export interface LoginRequest {
  transit: boolean;
  cont: boolean;
  csg: number;
  nsg: number;
  versionMax: number;
  versionMin: number;
  tsih: number;
  keys: [string, string][];
  /** The key text could not be parsed. */
  malformed: boolean;
}

export interface LoginReply {
  status: number;
  transit: boolean;
  csg: number;
  nsg: number;
  keys: [string, string][];
  /** Login finished: full feature phase starts after this reply. */
  done: boolean;
}

type ChapState = 'none' | 'want-algorithm' | 'want-response' | 'done';

const numRange = (v: string, lo: number, hi: number): number | null => {
  if (!/^(0x[0-9a-fA-F]{1,8}|\d{1,10})$/.test(v)) return null;
  const n = Number(v);
  return n >= lo && n <= hi ? n : null;
};
const bool = (v: string): boolean | null => (v === 'Yes' ? true : v === 'No' ? false : null);
const yesNo = (b: boolean): string => (b ? 'Yes' : 'No');

export class Login {
  initiatorName = '';
  sessionType: 'Normal' | 'Discovery' = 'Normal';
  targetName = '';
  access: InitiatorAccess | null = null;
  target = -1;
  readonly params: SessionParams;
  private started = false;
  private authenticated = false;
  private chapState: ChapState = 'none';
  private chapId = 0;
  private chapChallenge: Buffer = Buffer.alloc(0);
  private declaredMrdsl = false;
  private declaredTpgt = false;
  private stage: number = STAGE.SECURITY;
  private failed = false;

  constructor(
    private readonly dir: LoginDirectory,
    private readonly offer: TargetParams,
    private readonly tpgt: number,
  ) {
    this.params = {
      headerDigest: false,
      dataDigest: false,
      sendDataSegmentLength: 8192,
      maxBurstLength: Math.min(262144, offer.maxBurstLength),
      firstBurstLength: Math.min(65536, offer.firstBurstLength),
      immediateData: true,
      initialR2T: true,
      maxOutstandingR2T: 1,
      defaultTime2Wait: 2,
      defaultTime2Retain: 20,
    };
  }

  private fail(status: number, req: LoginRequest): LoginReply {
    this.failed = true;
    return { status, transit: false, csg: req.csg, nsg: 0, keys: [], done: false };
  }

  step(req: LoginRequest): LoginReply {
    if (this.failed) return this.fail(LOGIN_STATUS.INITIATOR_ERROR, req);
    if (req.versionMin > 0) return this.fail(LOGIN_STATUS.UNSUPPORTED_VERSION, req);
    if (req.malformed) return this.fail(LOGIN_STATUS.INITIATOR_ERROR, req);
    // Stages only move forward; 2 is reserved; full feature is never a current stage.
    if (req.csg === 2 || req.csg === STAGE.FULL_FEATURE || req.csg < this.stage) return this.fail(LOGIN_STATUS.INITIATOR_ERROR, req);
    if (req.transit && (req.nsg === 2 || req.nsg <= req.csg)) return this.fail(LOGIN_STATUS.INITIATOR_ERROR, req);
    if (req.cont && req.transit) return this.fail(LOGIN_STATUS.INITIATOR_ERROR, req);
    // Session reinstatement and adding connections need TSIH; we only create sessions.
    if (req.tsih !== 0) return this.fail(LOGIN_STATUS.SESSION_NOT_FOUND, req);
    this.stage = req.csg;

    const out: [string, string][] = [];
    const seen = new Set<string>();
    for (const [k, v] of req.keys) {
      if (seen.has(k)) return this.fail(LOGIN_STATUS.INITIATOR_ERROR, req);
      seen.add(k);
    }
    const get = (k: string): string | undefined => req.keys.find(([key]) => key === k)?.[1];

    if (!this.started) {
      this.started = true;
      const name = get('InitiatorName');
      if (!name) return this.fail(LOGIN_STATUS.MISSING_PARAMETER, req);
      this.initiatorName = name;
      const st = get('SessionType') ?? 'Normal';
      if (st !== 'Normal' && st !== 'Discovery') return this.fail(LOGIN_STATUS.SESSION_TYPE_UNSUPPORTED, req);
      this.sessionType = st;
      // An unknown initiator, a foreign or missing target: the same answer, so nothing is learnt.
      this.access = this.dir.initiator(name);
      if (!this.access) return this.fail(LOGIN_STATUS.AUTH_FAILED, req);
      if (st === 'Normal') {
        const tn = get('TargetName');
        if (!tn) return this.fail(LOGIN_STATUS.MISSING_PARAMETER, req);
        const t = parseTargetIqn(tn);
        if (!t || t.host !== this.access.host || !this.dir.hasTarget(t.host, t.target)) return this.fail(LOGIN_STATUS.AUTH_FAILED, req);
        this.targetName = tn;
        this.target = t.target;
      }
    } else if (get('InitiatorName') !== undefined && get('InitiatorName') !== this.initiatorName) {
      return this.fail(LOGIN_STATUS.INITIATOR_ERROR, req);
    }
    const access = this.access!;
    if (access.chap === null) this.authenticated = true;

    for (const [k, v] of req.keys) {
      switch (k) {
        case 'InitiatorName':
        case 'InitiatorAlias':
        case 'SessionType':
        case 'TargetName':
          break;
        case 'AuthMethod': {
          if (req.csg !== STAGE.SECURITY) return this.fail(LOGIN_STATUS.INITIATOR_ERROR, req);
          const offered = v.split(',');
          if (access.chap) {
            if (!offered.includes('CHAP')) return this.fail(LOGIN_STATUS.AUTH_FAILED, req);
            out.push(['AuthMethod', 'CHAP']);
            this.chapState = 'want-algorithm';
          } else {
            if (!offered.includes('None')) return this.fail(LOGIN_STATUS.AUTH_FAILED, req);
            out.push(['AuthMethod', 'None']);
          }
          break;
        }
        case 'CHAP_A': {
          if (this.chapState !== 'want-algorithm') return this.fail(LOGIN_STATUS.INITIATOR_ERROR, req);
          if (!v.split(',').includes('5')) return this.fail(LOGIN_STATUS.AUTH_FAILED, req);
          this.chapId = crypto.randomInt(256);
          this.chapChallenge = crypto.randomBytes(16);
          out.push(['CHAP_A', '5'], ['CHAP_I', String(this.chapId)], ['CHAP_C', encodeChapValue(this.chapChallenge)]);
          this.chapState = 'want-response';
          break;
        }
        case 'CHAP_N':
        case 'CHAP_R':
        case 'CHAP_I':
        case 'CHAP_C':
          if (this.chapState !== 'want-response') return this.fail(LOGIN_STATUS.INITIATOR_ERROR, req);
          break;
        case 'HeaderDigest':
        case 'DataDigest': {
          const pick = v.split(',').find((x) => x === 'CRC32C' || x === 'None');
          out.push([k, pick ?? 'Reject']);
          if (pick) this.params[k === 'HeaderDigest' ? 'headerDigest' : 'dataDigest'] = pick === 'CRC32C';
          break;
        }
        case 'MaxRecvDataSegmentLength': {
          // Declarative: what the initiator can receive. Our own is declared below.
          const n = numRange(v, 512, 16777215);
          if (n === null) return this.fail(LOGIN_STATUS.INITIATOR_ERROR, req);
          this.params.sendDataSegmentLength = n;
          break;
        }
        case 'MaxBurstLength':
        case 'FirstBurstLength': {
          const n = numRange(v, 512, 16777215);
          if (n === null) {
            out.push([k, 'Reject']);
            break;
          }
          const r = Math.min(n, k === 'MaxBurstLength' ? this.offer.maxBurstLength : this.offer.firstBurstLength);
          this.params[k === 'MaxBurstLength' ? 'maxBurstLength' : 'firstBurstLength'] = r;
          out.push([k, String(r)]);
          break;
        }
        case 'MaxOutstandingR2T': {
          const n = numRange(v, 1, 65535);
          if (n === null) {
            out.push([k, 'Reject']);
            break;
          }
          this.params.maxOutstandingR2T = Math.min(n, this.offer.maxOutstandingR2T);
          out.push([k, String(this.params.maxOutstandingR2T)]);
          break;
        }
        case 'InitialR2T': {
          // OR: we are happy without R2T for the first burst, so the initiator decides.
          const b = bool(v);
          if (b === null) out.push([k, 'Reject']);
          else {
            this.params.initialR2T = b;
            out.push([k, yesNo(b)]);
          }
          break;
        }
        case 'ImmediateData': {
          const b = bool(v);
          if (b === null) out.push([k, 'Reject']);
          else {
            this.params.immediateData = b;
            out.push([k, yesNo(b)]);
          }
          break;
        }
        case 'DataPDUInOrder':
        case 'DataSequenceInOrder': {
          // OR with our Yes: always Yes.
          out.push([k, bool(v) === null ? 'Reject' : 'Yes']);
          break;
        }
        case 'IFMarker':
        case 'OFMarker': {
          out.push([k, bool(v) === null ? 'Reject' : 'No']);
          break;
        }
        case 'ErrorRecoveryLevel': {
          out.push([k, numRange(v, 0, 2) === null ? 'Reject' : '0']);
          break;
        }
        case 'MaxConnections': {
          out.push([k, numRange(v, 1, 65535) === null ? 'Reject' : '1']);
          break;
        }
        case 'DefaultTime2Wait':
        case 'DefaultTime2Retain': {
          const n = numRange(v, 0, 3600);
          if (n === null) {
            out.push([k, 'Reject']);
            break;
          }
          // Time2Wait is a maximum function, Time2Retain a minimum one; with ERL 0 neither matters much.
          const r = k === 'DefaultTime2Wait' ? Math.max(n, 2) : Math.min(n, 20);
          this.params[k === 'DefaultTime2Wait' ? 'defaultTime2Wait' : 'defaultTime2Retain'] = r;
          out.push([k, String(r)]);
          break;
        }
        default:
          out.push([k, 'NotUnderstood']);
      }
    }

    if (this.chapState === 'want-response' && (get('CHAP_N') !== undefined || get('CHAP_R') !== undefined)) {
      const r = this.checkChap(get, out);
      if (r !== null) return this.fail(r, req);
    }

    // Operational keys before authentication, or asking to leave security without starting CHAP.
    if (!this.authenticated && (req.csg === STAGE.OPERATIONAL || (req.transit && this.chapState === 'none'))) {
      return this.fail(LOGIN_STATUS.AUTH_FAILED, req);
    }
    if (req.csg === STAGE.OPERATIONAL || req.nsg === STAGE.OPERATIONAL || req.nsg === STAGE.FULL_FEATURE) {
      if (!this.declaredMrdsl && (req.csg === STAGE.OPERATIONAL || req.transit)) {
        out.push(['MaxRecvDataSegmentLength', String(this.offer.maxRecvDataSegmentLength)]);
        this.declaredMrdsl = true;
      }
    }
    if (this.sessionType === 'Normal' && !this.declaredTpgt) {
      out.push(['TargetPortalGroupTag', String(this.tpgt)]);
      this.declaredTpgt = true;
    }
    this.params.firstBurstLength = Math.min(this.params.firstBurstLength, this.params.maxBurstLength);

    // Leave the security stage only once authenticated; C=1 asks for more text first.
    let transit = req.transit && !req.cont;
    if (req.csg === STAGE.SECURITY && !this.authenticated) transit = false;
    const done = transit && req.nsg === STAGE.FULL_FEATURE;
    if (transit) this.stage = req.nsg;
    return { status: LOGIN_STATUS.SUCCESS, transit, csg: req.csg, nsg: transit ? req.nsg : 0, keys: out, done };
  }

  /** Verifies CHAP_N/CHAP_R and answers a mutual challenge; returns a failure status or null. */
  private checkChap(get: (k: string) => string | undefined, out: [string, string][]): number | null {
    const access = this.access!;
    const n = get('CHAP_N');
    const secret = [access.chap!, ...(access.otherChap ?? [])].find((x) => x.username === n);
    const r = get('CHAP_R');
    const resp = r === undefined ? null : decodeChapValue(r);
    this.chapState = 'done';
    if (secret === undefined || resp === null) return LOGIN_STATUS.AUTH_FAILED;
    if (!sameResponse(resp, chapResponse(this.chapId, secret.secret, this.chapChallenge))) return LOGIN_STATUS.AUTH_FAILED;
    const mi = get('CHAP_I');
    const mc = get('CHAP_C');
    if (mi !== undefined || mc !== undefined) {
      const id = mi === undefined ? null : numRange(mi, 0, 255);
      const ch = mc === undefined ? null : decodeChapValue(mc);
      if (id === null || ch === null || ch.length === 0 || ch.length > 1024) return LOGIN_STATUS.AUTH_FAILED;
      // A reflected challenge would let an attacker use us as an oracle for our own response.
      if (ch.equals(this.chapChallenge) || access.mutualChap === null) return LOGIN_STATUS.AUTH_FAILED;
      out.push(['CHAP_N', access.mutualChap.username], ['CHAP_R', encodeChapValue(chapResponse(id, access.mutualChap.secret, ch))]);
    }
    this.authenticated = true;
    return null;
  }
}
