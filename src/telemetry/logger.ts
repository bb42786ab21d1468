// JSON logs with pino. The process log and the access log are one stream, told apart by `kind`.
import pino, { type Logger } from 'pino';

export type { Logger };

export interface LoggerOptions {
  level: string;
  /** Name of the component, e.g. the node id. */
  name?: string;
  /** Where to write; default stdout. Tests pass a stream to read lines back. */
  destination?: pino.DestinationStream;
}

export function createLogger({ level, name, destination }: LoggerOptions): Logger {
  // An asynchronous destination keeps the access log off the request's critical path;
  // `flushLogger` drains the buffer before the process exits.
  const dest = destination ?? pino.destination({ dest: 1, sync: false });
  return pino({ level, name, base: undefined, timestamp: pino.stdTimeFunctions.isoTime }, dest);
}

export function flushLogger(logger: Logger): void {
  try {
    logger.flush();
  } catch {
    // A destination that is not ready yet has nothing buffered.
  }
}

/** One line per proxied request, as Envoy's access log. */
export interface AccessRecord {
  direction: 'inbound' | 'outbound';
  method: string;
  authority: string;
  path: string;
  status: number;
  duration_ms: number;
  upstream: string | undefined;
  attempts: number;
  error: string | undefined;
  peer?: string | undefined;
}
