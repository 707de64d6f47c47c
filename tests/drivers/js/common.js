// Shared by the JavaScript driver tests: the proxy's connection string
// (tests/it/drivers_external.rs starts pgsidecar in transaction mode with
// `[pool] size = 2` in front of a fresh database) and unique table names.
'use strict';
const crypto = require('node:crypto');

function dsn(t) {
  const value = process.env.PGSIDECAR_DSN;
  if (!value) {
    t.skip('PGSIDECAR_DSN is not set: run these through `cargo test --test it drivers_external`');
    return null;
  }
  return value;
}

function tableName() {
  return 't_' + crypto.randomBytes(6).toString('hex');
}

module.exports = { dsn, tableName };
