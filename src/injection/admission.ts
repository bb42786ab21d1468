// One AdmissionReview v1 in, one AdmissionReview v1 out. The answer is always `allowed: true`:
// injection trouble must never stop a workload from starting (the chart's failurePolicy is Ignore
// for the same reason), so a request we cannot understand gets no patch and a log line.
import { buildPatch, type Decision } from './patch.js';
import type { InjectionTemplate, Json } from './template.js';

export const ADMISSION_API_VERSION = 'admission.k8s.io/v1';

export interface AdmissionResponse {
  apiVersion: typeof ADMISSION_API_VERSION;
  kind: 'AdmissionReview';
  response: {
    uid: string;
    allowed: true;
    patchType?: 'JSONPatch';
    /** base64 of the JSON array of RFC 6902 operations. */
    patch?: string;
    warnings?: string[];
  };
}

export interface AdmissionOutcome {
  review: AdmissionResponse;
  /** Why the pod was (not) injected, or what was wrong with the request; for the log. */
  decision: Decision | { inject: false; reason: 'malformed'; error: string } | { inject: false; reason: 'not-a-pod' };
  namespace?: string;
  name?: string;
  operations: number;
}

export interface AdmissionOptions {
  template: InjectionTemplate;
  /** Labels of a namespace, when they can be known (the webhook asks the API server). */
  namespaceLabels?: (namespace: string) => Promise<Record<string, string> | undefined>;
}

function isObject(value: unknown): value is Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function allowed(uid: string, extra: Partial<AdmissionResponse['response']> = {}): AdmissionResponse {
  return { apiVersion: ADMISSION_API_VERSION, kind: 'AdmissionReview', response: { uid, allowed: true, ...extra } };
}

/** Handles a parsed AdmissionReview; never throws. */
export async function reviewAdmission(body: unknown, options: AdmissionOptions): Promise<AdmissionOutcome> {
  const request = isObject(body) && isObject(body.request) ? body.request : undefined;
  // The API server matches the response to its request by uid; without one there is nothing
  // better to echo than an empty string.
  const uid = typeof request?.uid === 'string' ? request.uid : '';
  const malformed = (error: string): AdmissionOutcome => ({
    review: allowed(uid),
    decision: { inject: false, reason: 'malformed', error },
    operations: 0,
  });
  if (!isObject(body) || body.kind !== 'AdmissionReview') return malformed('not an AdmissionReview');
  if (body.apiVersion !== ADMISSION_API_VERSION) return malformed(`unsupported apiVersion ${String(body.apiVersion)} (want ${ADMISSION_API_VERSION})`);
  if (!request) return malformed('no request');
  if (uid === '') return malformed('request.uid missing');

  const kind = isObject(request.kind) ? request.kind : {};
  const namespace = typeof request.namespace === 'string' ? request.namespace : undefined;
  const object = request.object;
  const name = isObject(object) && isObject(object.metadata) ? (object.metadata.name as string | undefined) ?? (object.metadata.generateName as string | undefined) : undefined;
  // Only pod creation: containers cannot be added to an existing pod, and subresources
  // (pods/exec, pods/status) are not pods.
  if (kind.kind !== 'Pod' || (kind.group ?? '') !== '' || request.subResource || (request.operation ?? 'CREATE') !== 'CREATE') {
    return { review: allowed(uid), decision: { inject: false, reason: 'not-a-pod' }, namespace, name, operations: 0 };
  }
  if (!isObject(object)) return malformed('request.object is not an object');

  let namespaceLabels: Record<string, string> | undefined;
  if (namespace && options.namespaceLabels) {
    try {
      namespaceLabels = await options.namespaceLabels(namespace);
    } catch {
      // Unknown labels: decide on the pod's own label and annotation.
      namespaceLabels = undefined;
    }
  }
  try {
    const { decision, patch, warnings } = buildPatch(object, options.template, { namespaceLabels });
    if (decision.reason === 'malformed') return malformed('request.object has no spec.containers');
    const extra: Partial<AdmissionResponse['response']> = {};
    if (patch.length > 0) {
      extra.patchType = 'JSONPatch';
      extra.patch = Buffer.from(JSON.stringify(patch)).toString('base64');
    }
    if (warnings.length > 0) extra.warnings = warnings;
    return { review: allowed(uid, extra), decision, namespace, name, operations: patch.length };
  } catch (err) {
    return malformed(`cannot build the patch: ${(err as Error).message}`);
  }
}
