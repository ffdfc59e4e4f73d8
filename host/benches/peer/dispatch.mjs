// The dispatch benchmark's peer: the seed's send side as the product page describes it.
// Alerts are queued on BullMQ (Redis, no durability: this machine's Redis keeps nothing on
// disk) with a jobId per record, one worker at concurrency 32 renders each from a template
// and POSTs it form-encoded, with HTTP Basic auth, to the same Twilio stand-in the host's
// bench uses. Timed like the host's: from the first alert queued to the last accepted.
//
// Run by `cargo bench -p ml-connector --bench dispatch_peer`, which starts the stand-in,
// passes its address and key here, and counts what the stand-in created.

import http from 'node:http';
import { Queue, Worker } from 'bullmq';

const env = (name, fallback) => process.env[name] ?? fallback;
const alerts = Number(env('PEER_ALERTS', '20000'));
const concurrency = Number(env('PEER_CONCURRENCY', '32'));
const base = env('PEER_TWILIO_BASE');
const account = env('PEER_ACCOUNT_SID');
const auth = 'Basic ' + Buffer.from(`${env('PEER_KEY_SID')}:${env('PEER_KEY_SECRET')}`).toString('base64');
const connection = { host: env('PEER_REDIS_HOST', '127.0.0.1'), port: Number(env('PEER_REDIS_PORT', '6379')) };
const name = `ml-connector-peer-${process.pid}`;
const target = new URL(`${base}/2010-04-01/Accounts/${account}/Messages.json`);
// Node's own HTTP client with keep-alive, as axios (under the `twilio` library) uses it:
// three times the requests per second of Node 20's `fetch` on this machine.
const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
const post = (body) =>
  new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: target.hostname,
        port: target.port,
        path: target.pathname,
        method: 'POST',
        agent,
        headers: {
          authorization: auth,
          'content-type': 'application/x-www-form-urlencoded',
          'content-length': Buffer.byteLength(body),
        },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c) => (text += c));
        res.on('end', () => resolve({ status: res.statusCode, answer: JSON.parse(text) }));
      },
    );
    req.on('error', reject);
    req.end(body);
  });

// The template: the same facts the host's default plugin words, in a string.
const render = (a) =>
  `${a.supplierName}: invoice ${a.key} for ${a.amount} ${a.currency} (due ${a.dueDate}) is held: ${a.reason}. ` +
  `Reply 1 to approve, 2 to reject, 3 to call me. Ref ${a.reference}`;

const queue = new Queue(name, { connection });
let accepted = 0;
let failed = 0;
let finished;
const allDone = new Promise((resolve) => (finished = resolve));
const worker = new Worker(
  name,
  async (job) => {
    const a = job.data;
    const body = new URLSearchParams({
      To: a.to,
      From: '+13125550100',
      Body: render(a),
      StatusCallback: `http://127.0.0.1:9/twilio/t0/messages/status?delivery=${job.id}`,
    });
    const { status, answer } = await post(body.toString());
    if (status !== 201) throw new Error(`Twilio answered ${status}: ${answer.message}`);
    return answer.sid;
  },
  { connection, concurrency },
);
const settle = () => {
  if (accepted + failed === alerts) finished();
};
worker.on('completed', () => {
  accepted += 1;
  settle();
});
worker.on('failed', (_job, err) => {
  failed += 1;
  if (failed === 1) console.error(`first failure: ${err.message}`);
  settle();
});

const started = performance.now();
const chunk = 1000;
for (let i = 0; i < alerts; i += chunk) {
  const jobs = [];
  for (let n = i; n < Math.min(i + chunk, alerts); n++) {
    const key = `SI-0${String(n).padStart(7, '0')}`;
    jobs.push({
      name: 'send',
      // The seed's de-duplication: one job per record, episode and recipient.
      opts: { jobId: `t0/supplier_invoice/${key}/1/ap_clerk/sms/0` },
      data: {
        key,
        to: `+1312${String(n % 10_000_000).padStart(7, '0')}`,
        supplierName: 'Windy City Machining',
        amount: '12500.00',
        currency: 'USD',
        dueDate: '2026-12-20',
        reason: 'price 10.40 invoiced against 9.80 ordered on line 1',
        reference: 'K7QM2X',
      },
    });
  }
  await queue.addBulk(jobs);
}
const queued = performance.now();
await allDone;
const elapsed = (performance.now() - started) / 1000;
console.log(
  JSON.stringify({
    alerts,
    accepted,
    failed,
    concurrency,
    queued_s: (queued - started) / 1000,
    elapsed_s: elapsed,
    per_second: alerts / elapsed,
  }),
);
await worker.close();
await queue.obliterate({ force: true });
await queue.close();
