// Configuration is parsed once, here, at the boundary: YAML file, then environment overrides,
// then the schema. Everything past this point trusts the typed result.
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { SidecarConfigSchema, type SidecarConfig } from './schema.js';

export const ENV_PREFIX = 'CTXMESH_';
/** Variables with the prefix that arm process features rather than set config (CTXMESH_FAULTS: the peer fault switch). */
const NOT_CONFIG = new Set(['CTXMESH_FAULTS']);

/** Invalid configuration: the CLI prints the message and exits with status 2. */
export class ConfigError extends Error {
  readonly code = 'invalid_config';
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

/** `['clusters', 0, 'lb']` → `clusters[0].lb`, the form users search their YAML for. */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const segment of path) {
    if (typeof segment === 'number') out += `[${segment}]`;
    else out += out ? `.${String(segment)}` : String(segment);
  }
  return out || '(root)';
}

export function parseWithSchema<S extends z.ZodType>(schema: S, raw: unknown, source: string): z.output<S> {
  const result = schema.safeParse(raw);
  if (result.success) return result.data;
  const lines = result.error.issues.map((issue) => `  ${formatPath(issue.path)}: ${issue.message}`);
  throw new ConfigError(`invalid config ${source}:\n${lines.join('\n')}`);
}

export function readYamlFile(file: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read config ${file}: ${(err as Error).message}`);
  }
  try {
    return parseYaml(text) ?? {};
  } catch (err) {
    throw new ConfigError(`invalid YAML in ${file}: ${(err as Error).message}`);
  }
}

/**
 * Environment overrides: `CTXMESH_ADMIN_PORT=16000`, `CTXMESH_NODE_ID=a`,
 * `CTXMESH_CLUSTERS_0_TIMEOUT=2s`. Config keys are camelCase, so `_` separates path segments
 * unambiguously; segments match keys case-insensitively. Values are read as YAML scalars or flow
 * collections (`[a, b]`), so numbers and lists keep their types.
 */
export function applyEnvOverrides(
  raw: unknown,
  schema: z.ZodType,
  env: NodeJS.ProcessEnv = process.env,
): unknown {
  const doc = (raw && typeof raw === 'object' ? raw : {}) as Record<string, unknown>;
  for (const [name, value] of Object.entries(env)) {
    if (!name.startsWith(ENV_PREFIX) || value === undefined || NOT_CONFIG.has(name)) continue;
    const segments = name.slice(ENV_PREFIX.length).split('_').filter(Boolean);
    const path = resolveEnvPath(schema, segments);
    if (!path) throw new ConfigError(`environment variable ${name} names no config field`);
    setPath(doc, path, envValue(value));
  }
  return doc;
}

/**
 * A variable's value read as YAML, or as the plain string when it is no YAML: `[fd00::1]:15010`
 * (an IPv6 host:port) would otherwise be a flow sequence followed by junk.
 */
function envValue(value: string): unknown {
  try {
    return parseYaml(value);
  } catch {
    return value;
  }
}

function resolveEnvPath(schema: z.ZodType, segments: string[]): (string | number)[] | null {
  const path: (string | number)[] = [];
  let node: z.ZodType | undefined = schema;
  for (const segment of segments) {
    node = unwrap(node);
    if (node instanceof z.ZodObject) {
      const key = Object.keys(node.shape).find((k) => k.toLowerCase() === segment.toLowerCase());
      if (!key) return null;
      path.push(key);
      node = node.shape[key] as z.ZodType;
    } else if (node instanceof z.ZodArray) {
      if (!/^\d+$/.test(segment)) return null;
      path.push(Number(segment));
      node = node.element as z.ZodType;
    } else {
      return null;
    }
  }
  return path.length ? path : null;
}

function unwrap(schema: z.ZodType | undefined): z.ZodType | undefined {
  let node = schema;
  while (
    node instanceof z.ZodDefault ||
    node instanceof z.ZodPrefault ||
    node instanceof z.ZodOptional ||
    node instanceof z.ZodNullable
  ) {
    node = node.unwrap() as z.ZodType;
  }
  return node;
}

function setPath(doc: Record<string, unknown>, path: (string | number)[], value: unknown): void {
  let node: Record<string | number, unknown> = doc;
  path.forEach((key, i) => {
    if (i === path.length - 1) {
      node[key] = value;
      return;
    }
    const next = node[key];
    if (next === null || typeof next !== 'object') node[key] = typeof path[i + 1] === 'number' ? [] : {};
    node = node[key] as Record<string | number, unknown>;
  });
}

export function loadSidecarConfig(file: string, env: NodeJS.ProcessEnv = process.env): SidecarConfig {
  const raw = applyEnvOverrides(readYamlFile(file), SidecarConfigSchema, env);
  const overridden = Object.keys(env).some((name) => name.startsWith(ENV_PREFIX));
  return parseWithSchema(SidecarConfigSchema, raw, overridden ? `${file} (with ${ENV_PREFIX}* overrides)` : file);
}
