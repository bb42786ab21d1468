// The two parts of undici the proxy uses. undici's entry point also loads fetch, WebSocket,
// EventSource, the HTTP cache and the mock agents, ~8 MB of resident memory a sidecar would carry
// for nothing; these modules are the same classes the entry point re-exports.
import { createRequire } from 'node:module';
import type { Pool as UndiciPool, buildConnector as undiciBuildConnector } from 'undici';

const require = createRequire(import.meta.url);

export const Pool = require('undici/lib/dispatcher/pool.js') as typeof UndiciPool;
export type Pool = UndiciPool;
export const buildConnector = require('undici/lib/core/connect.js') as typeof undiciBuildConnector;
/** Opens one upstream connection for a pool. */
export type Connector = undiciBuildConnector.connector;
