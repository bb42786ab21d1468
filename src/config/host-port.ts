// Network addresses as the config writes them: `host:port`, `10.0.0.7:15006`, or `[fd00::7]:15006`.
// An IPv6 address carries brackets, as in a URL, so its colons never blur into the port's; every
// place that splits, dials or compares an address goes through these functions. IPv6 addresses
// are kept in their canonical text (lower case, longest zero run compressed), so the same
// endpoint written two ways is still one endpoint to the registry and the member set.
import { isIP } from 'node:net';

export interface HostPort {
  /** Host name or IP address, without brackets. */
  host: string;
  port: number;
}

const HOST_NAME = /^[^\s:/[\]@?#%]+$/;
const PORT = /^\d{1,5}$/;

/** An IPv6 address in its canonical text; the address as given otherwise. */
export function canonicalHost(host: string): string {
  return isIP(host) === 6 ? new URL(`http://[${host}]/`).hostname.slice(1, -1) : host;
}

/** `host:port` for dialling or advertising: an IPv6 host is bracketed. */
export function formatHostPort(host: string, port: number): string {
  return isIP(host) === 6 ? `[${canonicalHost(host)}]:${port}` : `${host}:${port}`;
}

/**
 * Splits `host:port` or `[v6]:port`. Returns a message instead when the text is not one: an
 * unbracketed IPv6 address, a zone id (`%eth0`, which URLs cannot carry), a port above 65535.
 */
export function parseHostPort(value: string, options: { ipOnly?: boolean } = {}): HostPort | string {
  let host: string;
  let port: string;
  if (value.startsWith('[')) {
    const close = value.indexOf(']');
    if (close === -1 || value[close + 1] !== ':') return `expected [ipv6]:port, got "${value}"`;
    host = value.slice(1, close);
    port = value.slice(close + 2);
    if (isIP(host) !== 6 || host.includes('%')) return `"${host}" in brackets is not an IPv6 address (zone ids are not supported)`;
  } else {
    const colon = value.lastIndexOf(':');
    if (colon === -1) return `expected host:port, got "${value}"`;
    host = value.slice(0, colon);
    port = value.slice(colon + 1);
    if (host.includes(':')) {
      if (isIP(host) === 6 && PORT.test(port)) return `write an IPv6 address in brackets: [${host}]:${port}`;
      return isIP(value) === 6 ? `an IPv6 address needs brackets and a port: [${value}]:<port>` : `expected host:port, got "${value}"`;
    }
    if (!HOST_NAME.test(host)) return `expected host:port, got "${value}"`;
    if (options.ipOnly && isIP(host) !== 4) return `"${host}" is not an IP address (expected ip:port or [ipv6]:port)`;
  }
  if (!PORT.test(port) || Number(port) > 65_535) return `"${port}" is not a port (0-65535)`;
  return { host: canonicalHost(host), port: Number(port) };
}

/** `host:port` in canonical text (bracketed, compressed IPv6), or a message saying why it is not one. */
export function normalizeHostPort(value: string, options: { ipOnly?: boolean } = {}): string | { error: string } {
  const parsed = parseHostPort(value, options);
  return typeof parsed === 'string' ? { error: parsed } : formatHostPort(parsed.host, parsed.port);
}

/**
 * The address other sidecars reach this one on, from `inbound.advertise`: a `host:port` as written,
 * or a bare IP address (what the downward API's status.podIP gives) completed with the inbound
 * port the listener is bound to. Without it: 127.0.0.1 at that port.
 */
export function advertisedAddress(advertise: string | undefined, inboundPort: number): string {
  if (advertise === undefined) return `127.0.0.1:${inboundPort}`;
  return isIP(advertise) !== 0 ? formatHostPort(advertise, inboundPort) : advertise;
}
