import t from 'tap';
import { conformance } from '../helpers/conformance.js';

// libiscsi's iscsi-test-cu against a thick unit (LBPME=0, no UNMAP), beside tgt's thick LUN; see test/helpers/conformance.ts.
t.test('iscsi-test-cu, every ALL suite against a thick unit, no test tgt passes (thick LUN) may fail', (t) => conformance(t, 'thick'));
