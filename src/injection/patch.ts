// Whether a pod is injected, and the RFC 6902 JSONPatch that injects it. The webhook returns this
// patch; `ctxmesh inject` applies it locally with applyJsonPatch, so both take one code path.
import { escapePointerToken, type JsonPatchOp } from './json-patch.js';
import {
  INIT_CONTAINER_NAME,
  INJECT_ANNOTATION,
  INJECT_LABEL,
  PROXY_CONTAINER_NAME,
  SIDECAR_LABEL,
  SIDECAR_LABEL_VALUE,
  STATUS_ANNOTATION,
  buildInjection,
  type InjectionTemplate,
  type Json,
  type PodMeta,
} from './template.js';

export type Decision =
  | { inject: true; reason: string }
  | { inject: false; reason: 'opted-out' | 'not-selected' | 'already-injected' | 'host-network' | 'malformed' };

export interface PatchResult {
  decision: Decision;
  /** Empty when the pod is left as it is. */
  patch: JsonPatchOp[];
  /** Annotation values that were ignored (bad quantities and the like). */
  warnings: string[];
}

function isObject(value: unknown): value is Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function stringMap(value: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  if (isObject(value)) for (const [k, v] of Object.entries(value)) if (typeof v === 'string') out[k] = v;
  return out;
}

function names(list: unknown): string[] {
  return Array.isArray(list) ? list.filter(isObject).map((c) => String(c.name)) : [];
}

/**
 * The injection policy, most specific first: the pod's annotation (`"false"` opts out even in an
 * enabled namespace), the pod's label, then the namespace's label when the caller knows it.
 */
export function decide(pod: Json, namespaceLabels?: Record<string, string>): Decision {
  const metadata = isObject(pod.metadata) ? pod.metadata : {};
  const spec = pod.spec;
  if (!isObject(spec) || !Array.isArray(spec.containers)) return { inject: false, reason: 'malformed' };
  const annotations = stringMap(metadata.annotations);
  const labels = stringMap(metadata.labels);
  const annotationValue = annotations[INJECT_ANNOTATION]?.toLowerCase();
  const labelValue = labels[INJECT_LABEL]?.toLowerCase();
  if (annotationValue === 'false' || labelValue === 'false' || labelValue === 'disabled') return { inject: false, reason: 'opted-out' };
  // A second pass (reinvocationPolicy IfNeeded, or `ctxmesh inject` on its own output) must be a
  // no-op: the status annotation, or a container of ours, proves we were here.
  const ours = [...names(spec.initContainers), ...names(spec.containers)];
  if (STATUS_ANNOTATION in annotations || ours.includes(PROXY_CONTAINER_NAME) || ours.includes(INIT_CONTAINER_NAME)) {
    return { inject: false, reason: 'already-injected' };
  }
  // iptables rules in the host's network namespace would redirect the whole node's traffic.
  if (spec.hostNetwork === true) return { inject: false, reason: 'host-network' };
  if (annotationValue === 'true') return { inject: true, reason: `annotation ${INJECT_ANNOTATION}=true` };
  if (labelValue === 'enabled') return { inject: true, reason: `label ${INJECT_LABEL}=enabled` };
  if (namespaceLabels?.[INJECT_LABEL] === 'enabled') return { inject: true, reason: `namespace label ${INJECT_LABEL}=enabled` };
  return { inject: false, reason: 'not-selected' };
}

/**
 * The patch for a pod whose spec lives at `base` ('' for a Pod, '/spec/template' for a workload).
 * Paths are written for the object as it is: an absent array or map is added whole, a present
 * one is appended to, so the patch applies to exactly this object.
 */
export function buildPatch(
  pod: Json,
  template: InjectionTemplate,
  options: { base?: string; namespaceLabels?: Record<string, string> } = {},
): PatchResult {
  const base = options.base ?? '';
  const decision = decide(pod, options.namespaceLabels);
  const warnings: string[] = [];
  if (!decision.inject) return { decision, patch: [], warnings };

  const metadata = isObject(pod.metadata) ? pod.metadata : undefined;
  const spec = pod.spec as Json;
  const meta: PodMeta = {
    name: typeof metadata?.name === 'string' ? metadata.name : undefined,
    annotations: stringMap(metadata?.annotations),
  };
  const injection = buildInjection(meta, template, warnings);
  const patch: JsonPatchOp[] = [];

  const existingInit = Array.isArray(spec.initContainers) ? spec.initContainers : undefined;
  if (injection.initContainers.length > 0) {
    if (!existingInit) {
      patch.push({ op: 'add', path: `${base}/spec/initContainers`, value: injection.initContainers });
    } else if (injection.containers.length === 0) {
      // Native sidecar: ctxmesh-init and ctxmesh-proxy go first, so the pod's own init containers
      // (model downloads, migrations) already run with interception AND a ready proxy behind it.
      injection.initContainers.forEach((container, index) => {
        patch.push({ op: 'add', path: `${base}/spec/initContainers/${index}`, value: container });
      });
    } else {
      // Proxy in `containers`: nothing serves the redirected traffic until the app phase, so the
      // rules go in last and the pod's own init containers keep their direct network.
      for (const container of injection.initContainers) {
        patch.push({ op: 'add', path: `${base}/spec/initContainers/-`, value: container });
      }
    }
  }
  for (const container of injection.containers) {
    patch.push({ op: 'add', path: `${base}/spec/containers/-`, value: container });
  }
  if (!Array.isArray(spec.volumes)) {
    patch.push({ op: 'add', path: `${base}/spec/volumes`, value: injection.volumes });
  } else {
    for (const volume of injection.volumes) patch.push({ op: 'add', path: `${base}/spec/volumes/-`, value: volume });
  }
  const status = JSON.stringify(injection.status);
  if (!metadata) {
    patch.push({ op: 'add', path: `${base}/metadata`, value: { labels: { [SIDECAR_LABEL]: SIDECAR_LABEL_VALUE }, annotations: { [STATUS_ANNOTATION]: status } } });
    return { decision, patch, warnings };
  }
  if (!isObject(metadata.annotations)) {
    patch.push({ op: 'add', path: `${base}/metadata/annotations`, value: { [STATUS_ANNOTATION]: status } });
  } else {
    patch.push({ op: 'add', path: `${base}/metadata/annotations/${escapePointerToken(STATUS_ANNOTATION)}`, value: status });
  }
  // The label the chart's NetworkPolicy admits to the control plane ("add" replaces a value the
  // pod set itself, so a pod cannot opt out of it while carrying a sidecar).
  if (!isObject(metadata.labels)) {
    patch.push({ op: 'add', path: `${base}/metadata/labels`, value: { [SIDECAR_LABEL]: SIDECAR_LABEL_VALUE } });
  } else {
    patch.push({ op: 'add', path: `${base}/metadata/labels/${escapePointerToken(SIDECAR_LABEL)}`, value: SIDECAR_LABEL_VALUE });
  }
  return { decision, patch, warnings };
}
