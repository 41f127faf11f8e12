// A second independent FHIR client, fhir-kit-client (JavaScript), against the real server:
// capabilities, search and paging to the end, create / read / update / delete, a transaction with a
// conditional reference, $everything through operation() (which POSTs), history.
// Usage: node tests/js_client/check.mjs BASE_URL PATIENT_JSON MRD_JSON EXPECTED_MRD_COUNT
// Prints one JSON object with what it saw; exits 1 with the error on any failure.
import { Client } from 'fhir-kit-client';
import { readFileSync } from 'node:fs';

const [baseUrl, patientFile, mrdFile, expected] = process.argv.slice(2);
const client = new Client({ baseUrl, customHeaders: { Accept: 'application/fhir+json' } });
const out = {};

function check(condition, message) {
  if (!condition) throw new Error(message);
}

try {
  const cs = await client.capabilityStatement();
  out.fhirVersion = cs.fhirVersion;

  // search, then nextPage() to the end
  let bundle = await client.search({ resourceType: 'Observation', searchParams: { code: 'mrd', _count: 7 } });
  const ids = new Set();
  let pages = 0;
  while (bundle) {
    pages += 1;
    for (const e of bundle.entry || []) ids.add(e.resource.id);
    bundle = bundle.link.some((l) => l.relation === 'next') ? await client.nextPage({ bundle }) : null;
  }
  out.mrdCount = ids.size;
  out.pages = pages;
  check(ids.size === Number(expected), `paged ${ids.size} MRD results, expected ${expected}`);

  // create, read, update, delete
  const patient = JSON.parse(readFileSync(patientFile, 'utf8'));
  delete patient.id;
  patient.identifier[0].value = 'fhir-kit-1';
  const created = await client.create({ resourceType: 'Patient', body: patient });
  check(created.meta.versionId === '1', 'created version 1');
  const read = await client.read({ resourceType: 'Patient', id: created.id });
  read.gender = 'other';
  const updated = await client.update({ resourceType: 'Patient', id: created.id, body: read });
  check(updated.meta.versionId === '2' && updated.gender === 'other', 'updated to version 2');

  // a transaction whose Observation refers to the Patient by a conditional reference
  const mrd = JSON.parse(readFileSync(mrdFile, 'utf8'));
  delete mrd.id;
  delete mrd.partOf;
  mrd.subject = { reference: `Patient?identifier=${patient.identifier[0].system}|fhir-kit-1` };
  const tx = await client.transaction({ body: { resourceType: 'Bundle', type: 'transaction',
    entry: [{ resource: mrd, request: { method: 'POST', url: 'Observation' } }] } });
  check(tx.type === 'transaction-response' && tx.entry[0].response.status.startsWith('201'), 'transaction created');
  const obsId = tx.entry[0].resource.id;
  check(tx.entry[0].resource.subject.reference === `Patient/${created.id}`, 'conditional reference resolved');

  // $everything by operation() (a POST), with _type through a Parameters body
  const everything = await client.operation({ name: 'everything', resourceType: 'Patient', id: created.id,
    input: { resourceType: 'Parameters', parameter: [{ name: '_type', valueString: 'Observation,Patient' }] } });
  out.everything = (everything.entry || []).map((e) => e.resource.resourceType).sort();
  check(JSON.stringify(out.everything) === JSON.stringify(['Observation', 'Patient']), `$everything: ${out.everything}`);

  const history = await client.history({ resourceType: 'Patient', id: created.id });
  out.history = history.entry.length;
  check(history.entry.length === 2, 'two versions in history');

  await client.delete({ resourceType: 'Observation', id: obsId });
  await client.delete({ resourceType: 'Patient', id: created.id });
  try {
    await client.read({ resourceType: 'Patient', id: created.id });
    throw new Error('a deleted Patient was still readable');
  } catch (err) {
    check(err.response && err.response.status === 410, `read after delete: ${err.message}`);
  }
  out.ok = true;
  console.log(JSON.stringify(out));
} catch (err) {
  console.log(JSON.stringify({ ...out, ok: false, error: String(err && (err.stack || err.message || err)),
    response: err && err.response ? err.response.data : undefined }));
  process.exit(1);
}
