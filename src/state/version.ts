// A context's version: the HLC timestamp of the write that made it and the node that stamped it,
// `<wall>.<logical>@<node>`. Unique across sidecars that share an L2, ordered by time, and
// readable in an ETag. Replication will carry a causal context beside it; this stays the ETag.
import { formatTimestamp, scanTimestamp, scanned, type HlcTimestamp } from './hlc.js';

export type Version = string;

/** Node ids may hold characters an ETag cannot: keep the ones it can. */
export function versionNodeTag(nodeId: string): string {
  return nodeId.replace(/[^A-Za-z0-9._-]/g, '_') || '_';
}

export function makeVersion(t: HlcTimestamp, nodeTag: string): Version {
  return `${formatTimestamp(t)}@${nodeTag}`;
}

export function versionTimestamp(version: Version): HlcTimestamp | undefined {
  return scanVersion(version) ? { wall: scanned.wall, logical: scanned.logical } : undefined;
}

/** scanTimestamp of the version's timestamp part (before any `@`). */
function scanVersion(version: Version): boolean {
  const at = version.indexOf('@');
  return scanTimestamp(version, at < 0 ? version.length : at);
}

/** Orders versions by timestamp, then node tag: the last-writer-wins order. Allocates nothing. */
export function compareVersions(a: Version, b: Version): number {
  if (scanVersion(a)) {
    const wall = scanned.wall;
    const logical = scanned.logical;
    if (scanVersion(b)) {
      const byTime = wall - scanned.wall || logical - scanned.logical;
      if (byTime !== 0) return byTime;
    }
  }
  return a < b ? -1 : a > b ? 1 : 0;
}

export function etagOf(version: Version): string {
  return `"${version}"`;
}
