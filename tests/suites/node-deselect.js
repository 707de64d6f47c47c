// Preloaded (`node -r`) into each node-postgres test file by
// run-node-postgres.js. Ours, not node-postgres's: it leaves out the tests
// the runner names in PGSIDECAR_SKIP (a JSON array of {name, reason}) and
// records in PGSIDECAR_RESULTS (a file, one JSON line per event) which
// tests the file declared and which of them passed. It also gives each
// test 30 s instead of the suite's 5 s: on a loaded machine
// gh-issues/1105's 5,000 round trips take longer than 5 s, direct or not.
'use strict'
const fs = require('fs')
const path = require('path')

const Suite = require(path.join(__dirname, 'node-postgres/packages/pg/test/suite.js'))
const skip = new Map(JSON.parse(process.env.PGSIDECAR_SKIP || '[]').map((e) => [e.name, e.reason]))
const results = process.env.PGSIDECAR_RESULTS

function record(event) {
  if (results) fs.appendFileSync(results, JSON.stringify(event) + '\n')
}

const test = Suite.prototype.test
Suite.prototype.test = function (name, cb) {
  // Names compared trimmed: a list line cannot end in a space, a test name can.
  const reason = skip.get(String(name).trim())
  record({ declared: name, deselected: reason !== undefined })
  if (reason !== undefined) {
    // A test without an action is one the suite reports as skipped.
    return test.call(this, `${name} [deselected: ${reason}]`, undefined)
  }
  return test.call(this, name, cb)
}

const PER_TEST_MS = 30000

const run = Suite.prototype.run
Suite.prototype.run = function (t, cb) {
  t.timeout = Math.max(t.timeout, PER_TEST_MS)
  return run.call(this, t, (...args) => {
    if (t.action) record({ passed: t.name })
    cb(...args)
  })
}
