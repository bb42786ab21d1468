// Ports for the benchmark's sidecars. Not from the kernel's ephemeral range (bind to port 0): the
// sidecars' own outgoing connections draw their local ports from that range, and one took a port
// picked this way before the sidecar meant to listen on it started (EADDRINUSE, 2026-12-08). These
// come from below it, counting up from BENCH_REPL_PORT_BASE, each checked free when handed out.
import { createServer } from 'node:net';

let next = Number(process.env.BENCH_REPL_PORT_BASE ?? 19600);

function canListen(port) {
  return new Promise((ok) => {
    const server = createServer()
      .once('error', () => ok(false))
      .listen(port, '127.0.0.1', () => server.close(() => ok(true)));
  });
}

export async function freePort() {
  for (;;) {
    const port = next++;
    if (port >= 32768) throw new Error('no free port below the ephemeral range (BENCH_REPL_PORT_BASE too high?)');
    if (await canListen(port)) return port;
  }
}
