// `ctxmesh inject`: the webhook's patch, applied locally to the pods of a manifest. Workloads
// carry their pod at spec.template, which becomes the patch's base path.
import { parseAllDocuments, stringify } from 'yaml';
import { applyJsonPatch } from './json-patch.js';
import { buildPatch, type Decision } from './patch.js';
import { INJECT_LABEL, type InjectionTemplate, type Json } from './template.js';

/** Where each kind keeps its pod; kinds not listed pass through unchanged. */
const POD_PATHS: Record<string, string[]> = {
  Pod: [],
  Deployment: ['spec', 'template'],
  StatefulSet: ['spec', 'template'],
  DaemonSet: ['spec', 'template'],
  ReplicaSet: ['spec', 'template'],
  Job: ['spec', 'template'],
  CronJob: ['spec', 'jobTemplate', 'spec', 'template'],
};

export interface DocumentReport {
  kind: string;
  name: string;
  decision?: Decision;
  warnings: string[];
}

export interface InjectManifestOptions {
  template: InjectionTemplate;
  /**
   * Namespace labels to assume. `ctxmesh inject` defaults to an enabled namespace, as
   * `istioctl kube-inject`: every pod is injected unless it opts out.
   */
  namespaceLabels?: Record<string, string>;
}

export class ManifestError extends Error {
  override name = 'ManifestError';
}

function isObject(value: unknown): value is Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export const ENABLED_NAMESPACE: Record<string, string> = { [INJECT_LABEL]: 'enabled' };

/** Injects every pod in a (multi-document) YAML text; returns the new YAML and what happened. */
export function injectManifest(text: string, options: InjectManifestOptions): { yaml: string; reports: DocumentReport[] } {
  const docs = parseAllDocuments(text);
  const out: string[] = [];
  const reports: DocumentReport[] = [];
  docs.forEach((doc, index) => {
    if (doc.errors.length > 0) throw new ManifestError(`document ${index + 1}: ${doc.errors[0]!.message}`);
    const value: unknown = doc.toJS();
    if (value === null || value === undefined) return; // an empty document (a trailing ---)
    if (!isObject(value)) throw new ManifestError(`document ${index + 1} is not a Kubernetes object`);
    const kind = typeof value.kind === 'string' ? value.kind : '';
    const name = isObject(value.metadata) && typeof value.metadata.name === 'string' ? value.metadata.name : '';
    const podPath = POD_PATHS[kind];
    if (kind === 'List' && Array.isArray(value.items)) {
      throw new ManifestError(`document ${index + 1}: kind List is not supported; split it into documents`);
    }
    if (!podPath) {
      out.push(stringify(value));
      reports.push({ kind, name, warnings: [] });
      return;
    }
    let pod: unknown = value;
    for (const key of podPath) pod = isObject(pod) ? pod[key] : undefined;
    if (!isObject(pod)) throw new ManifestError(`document ${index + 1} (${kind} ${name}): no pod at ${podPath.join('.')}`);
    const base = podPath.map((k) => `/${k}`).join('');
    const { decision, patch, warnings } = buildPatch(pod, options.template, {
      base,
      namespaceLabels: options.namespaceLabels ?? ENABLED_NAMESPACE,
    });
    if (decision.reason === 'malformed') throw new ManifestError(`document ${index + 1} (${kind} ${name}): the pod has no spec.containers`);
    out.push(stringify(applyJsonPatch(value, patch)));
    reports.push({ kind, name, decision, warnings });
  });
  return { yaml: out.join('---\n'), reports };
}
