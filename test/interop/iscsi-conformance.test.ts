import t from 'tap';
import { conformance } from '../helpers/conformance.js';

// libiscsi's iscsi-test-cu against a thin unit (LBPME/LBPRZ, UNMAP), beside tgt's thin LUN; see test/helpers/conformance.ts.
t.test('iscsi-test-cu, every ALL suite against a thin unit, no test tgt passes (thin LUN) may fail', (t) => conformance(t, 'thin'));
