// AdmissionReview v1 in, AdmissionReview v1 out: the patch is decoded, applied with the RFC 6902
// applier `ctxmesh inject` uses, and the patched pod validated against the Kubernetes schema.
import { Pod } from 'kubernetes-models/v1';
import { describe, expect, it } from 'vitest';
import { reviewAdmission, type AdmissionResponse } from '../../src/injection/admission.js';
import { applyJsonPatch, type JsonPatchOp } from '../../src/injection/json-patch.js';
import { defaultTemplate, InjectionTemplateSchema } from '../../src/injection/template.js';
import { podOf, reviewOf } from './fixtures.js';

type Obj = Record<string, any>;
const template = defaultTemplate();

function decode(review: AdmissionResponse): JsonPatchOp[] {
  if (review.response.patch === undefined) return [];
  expect(review.response.patchType).toBe('JSONPatch');
  return JSON.parse(Buffer.from(review.response.patch, 'base64').toString('utf8')) as JsonPatchOp[];
}

async function inject(pod: Obj, options: { namespaceLabels?: Record<string, string>; tpl?: typeof template } = {}): Promise<{ review: AdmissionResponse; patch: JsonPatchOp[]; pod: Obj }> {
  const { review } = await reviewAdmission(reviewOf(pod), {
    template: options.tpl ?? template,
    namespaceLabels: options.namespaceLabels ? async () => options.namespaceLabels : undefined,
  });
  expect(review.apiVersion).toBe('admission.k8s.io/v1');
  expect(review.kind).toBe('AdmissionReview');
  expect(review.response.uid).toBe('705ab4f5-6393-11e8-b7cc-42010a800002');
  expect(review.response.allowed).toBe(true);
  const patch = decode(review);
  const patched = applyJsonPatch(pod, patch);
  // Throws with the offending field if the result is not a valid Pod.
  new Pod(patched as ConstructorParameters<typeof Pod>[0]).validate();
  return { review, patch, pod: patched };
}

const names = (list: Obj[] | undefined): string[] => (list ?? []).map((c) => c.name as string);

describe('admission: a Deployment pod without initContainers', () => {
  it('adds ctxmesh-init then the native sidecar, volumes and the status annotation', async () => {
    const pod = podOf({ labels: { 'ctxmesh.io/inject': 'enabled' } });
    const { patch, pod: out } = await inject(pod);
    // Absent arrays/maps are added whole; present ones are appended to.
    expect(patch.map((op) => op.path)).toEqual([
      '/spec/initContainers',
      '/spec/volumes/-',
      '/spec/volumes/-',
      '/spec/volumes/-',
      '/metadata/annotations',
      '/metadata/labels/ctxmesh.io~1sidecar',
    ]);
    // The label the chart's NetworkPolicy admits to the control plane; the pod's own labels stay.
    expect(out.metadata.labels).toEqual({ app: 'chat', 'pod-template-hash': '7d9f8c6b5', 'ctxmesh.io/inject': 'enabled', 'ctxmesh.io/sidecar': 'true' });
    expect(names(out.spec.initContainers)).toEqual(['ctxmesh-init', 'ctxmesh-proxy']);
    expect(names(out.spec.containers)).toEqual(['chat']);
    expect(names(out.spec.volumes)).toEqual(['kube-api-access-x7k2p', 'ctxmesh-config', 'ctxmesh-identity', 'ctxmesh-data']);

    const [init, proxy] = out.spec.initContainers as Obj[];
    expect(init!.args.slice(0, 1)).toEqual(['iptables']);
    expect(init!.args).toEqual(expect.arrayContaining(['--proxy-uid', '1337', '--outbound-port', '15001', '--inbound-port', '15006']));
    expect(init!.securityContext).toMatchObject({ runAsUser: 0, runAsNonRoot: false, capabilities: { add: ['NET_ADMIN', 'NET_RAW'] } });
    expect(init!.restartPolicy).toBeUndefined();

    expect(proxy!.restartPolicy).toBe('Always');
    expect(proxy!.args).toEqual(['sidecar', '-c', '/etc/ctxmesh/sidecar.yaml']);
    expect(proxy!.securityContext).toMatchObject({ runAsUser: 1337, runAsGroup: 1337, runAsNonRoot: true, readOnlyRootFilesystem: true });
    expect(proxy!.ports).toEqual([
      { name: 'ctx-outbound', containerPort: 15001, protocol: 'TCP' },
      { name: 'ctx-inbound', containerPort: 15006, protocol: 'TCP' },
      { name: 'ctx-context', containerPort: 15020, protocol: 'TCP' },
    ]);
    expect(proxy!.env[0]).toEqual({ name: 'CTXMESH_NODE_ID', valueFrom: { fieldRef: { apiVersion: 'v1', fieldPath: 'metadata.name' } } });
    // IPv6 connections are redirected to [::1]:15001, so the outbound listener binds [::] (dual-stack).
    // Quoted, as the loader reads variables as YAML; the sidecar's config then says "::".
    expect(proxy!.env).toContainEqual({ name: 'CTXMESH_OUTBOUND_ADDRESS', value: '"::"' });
    expect(proxy!.env).toContainEqual({ name: 'CTXMESH_INBOUND_ADDRESS', value: '"::"' });
    const { applyEnvOverrides } = await import('../../src/config/load.js');
    const { SidecarConfigSchema } = await import('../../src/config/schema.js');
    expect(applyEnvOverrides({}, SidecarConfigSchema, { CTXMESH_OUTBOUND_ADDRESS: '"::"' })).toEqual({ outbound: { address: '::' } });
    // The address other sidecars and the control plane see: the pod IP, expanded by the kubelet
    // from POD_IP, which must come first. Bare: the sidecar adds its inbound port (bracketed for
    // IPv6), since `$(POD_IP):15006` is no address in an IPv6 cluster.
    const envNames = (proxy!.env as Obj[]).map((e) => e.name);
    expect(proxy!.env).toContainEqual({ name: 'POD_IP', valueFrom: { fieldRef: { apiVersion: 'v1', fieldPath: 'status.podIP' } } });
    expect(proxy!.env).toContainEqual({ name: 'CTXMESH_INBOUND_ADVERTISE', value: '$(POD_IP)' });
    expect(envNames.indexOf('POD_IP')).toBeLessThan(envNames.indexOf('CTXMESH_INBOUND_ADVERTISE'));
    expect(proxy!.resources).toEqual({ requests: { cpu: '50m', memory: '64Mi' }, limits: { cpu: '1', memory: '512Mi' } });
    // The admin binds 127.0.0.1, so the probes run inside the container and hit /ready on 15000.
    for (const probe of [proxy!.readinessProbe, proxy!.startupProbe]) {
      expect(probe.httpGet).toBeUndefined();
      expect(probe.exec.command.join(' ')).toContain('http://127.0.0.1:15000/ready');
    }
    expect(proxy!.volumeMounts).toContainEqual({ name: 'ctxmesh-config', mountPath: '/etc/ctxmesh', readOnly: true });
    expect(out.spec.volumes).toContainEqual({ name: 'ctxmesh-config', configMap: { name: 'ctxmesh-mesh' } });

    const status = JSON.parse(out.metadata.annotations['ctxmesh.io/status'] as string);
    expect(status).toMatchObject({ mode: 'full', initContainers: ['ctxmesh-init', 'ctxmesh-proxy'], containers: [], volumes: ['ctxmesh-config', 'ctxmesh-identity', 'ctxmesh-data'] });
  });

  it('every CTXMESH_ variable it sets names a real sidecar config field', async () => {
    // load.ts refuses to start on an unknown CTXMESH_ variable, so a typo here would crash-loop every pod.
    const { applyEnvOverrides } = await import('../../src/config/load.js');
    const { SidecarConfigSchema } = await import('../../src/config/schema.js');
    for (const tpl of [template, InjectionTemplateSchema.parse({ mode: 'state-only' })]) {
      const { pod: out } = await inject(podOf({ annotations: { 'ctxmesh.io/inject': 'true' } }), { tpl });
      const proxy = (out.spec.initContainers as Obj[]).find((c) => c.name === 'ctxmesh-proxy')!;
      const env = Object.fromEntries((proxy.env as Obj[]).filter((e) => e.value !== undefined).map((e) => [e.name, e.value]));
      expect(() => applyEnvOverrides({}, SidecarConfigSchema, env)).not.toThrow();
    }
  });
});

describe('admission: a pod with initContainers and annotations', () => {
  it('inserts the sidecar first, escapes the annotation key and keeps existing entries', async () => {
    const pod = podOf({
      annotations: { 'ctxmesh.io/inject': 'true', 'prometheus.io/scrape': 'true' },
      initContainers: [{ name: 'fetch-model', image: 'busybox:1.36', command: ['sh', '-c', 'true'] }],
    });
    const { patch, pod: out } = await inject(pod);
    expect(patch.map((op) => op.path)).toContain('/metadata/annotations/ctxmesh.io~1status');
    expect(patch.map((op) => op.path)).toContain('/spec/initContainers/0');
    // The pod's own init container runs after interception and a ready proxy.
    expect(names(out.spec.initContainers)).toEqual(['ctxmesh-init', 'ctxmesh-proxy', 'fetch-model']);
    expect(out.metadata.annotations['prometheus.io/scrape']).toBe('true');
    expect(out.metadata.annotations['ctxmesh.io/status']).toBeTypeOf('string');
  });

  it('hold-application "false" puts the proxy in containers and ctxmesh-init last', async () => {
    const pod = podOf({
      annotations: { 'ctxmesh.io/inject': 'true', 'ctxmesh.io/hold-application-until-proxy-starts': 'false' },
      initContainers: [{ name: 'fetch-model', image: 'busybox:1.36' }],
      volumes: null,
    });
    const { patch, pod: out } = await inject(pod);
    expect(patch.map((op) => op.path)).toEqual(['/spec/initContainers/-', '/spec/containers/-', '/spec/volumes', '/metadata/annotations/ctxmesh.io~1status', '/metadata/labels/ctxmesh.io~1sidecar']);
    expect(names(out.spec.initContainers)).toEqual(['fetch-model', 'ctxmesh-init']);
    expect(names(out.spec.containers)).toEqual(['chat', 'ctxmesh-proxy']);
    expect(out.spec.containers[1].restartPolicy).toBeUndefined();
  });
});

describe('admission: selection', () => {
  it('an already-injected pod gets no patch, still allowed', async () => {
    const first = await inject(podOf({ labels: { 'ctxmesh.io/inject': 'enabled' } }));
    const second = await inject(first.pod);
    expect(second.patch).toEqual([]);
    expect(second.review.response.patch).toBeUndefined();
    expect(second.review.response.patchType).toBeUndefined();
    expect(second.pod).toEqual(first.pod);
  });

  it('annotation "false" opts out even in an enabled namespace; unlabelled pods follow the namespace', async () => {
    const optedOut = await inject(podOf({ annotations: { 'ctxmesh.io/inject': 'false' } }), { namespaceLabels: { 'ctxmesh.io/inject': 'enabled' } });
    expect(optedOut.patch).toEqual([]);
    const plain = await inject(podOf(), { namespaceLabels: { 'ctxmesh.io/inject': 'enabled' } });
    expect(names(plain.pod.spec.initContainers)).toEqual(['ctxmesh-init', 'ctxmesh-proxy']);
    const notSelected = await inject(podOf(), { namespaceLabels: { team: 'ai' } });
    expect(notSelected.patch).toEqual([]);
  });

  it('resource annotations override the defaults; a bad quantity falls back and warns', async () => {
    const pod = podOf({
      annotations: {
        'ctxmesh.io/inject': 'true',
        'ctxmesh.io/proxy-cpu': '250m',
        'ctxmesh.io/proxy-memory': '128Mi',
        'ctxmesh.io/proxy-cpu-limit': '2',
        'ctxmesh.io/proxy-memory-limit': 'lots',
      },
    });
    const { review, pod: out } = await inject(pod);
    const proxy = (out.spec.initContainers as Obj[])[1]!;
    expect(proxy.resources).toEqual({ requests: { cpu: '250m', memory: '128Mi' }, limits: { cpu: '2', memory: '512Mi' } });
    expect(review.response.warnings?.join()).toMatch(/proxy-memory-limit="lots"/);
  });

  it('state-only mode: no init container, no interception, context port only', async () => {
    const pod = podOf({ annotations: { 'ctxmesh.io/inject': 'true', 'ctxmesh.io/mode': 'state-only' } });
    const { pod: out } = await inject(pod);
    expect(names(out.spec.initContainers)).toEqual(['ctxmesh-proxy']);
    const proxy = (out.spec.initContainers as Obj[])[0]!;
    expect(proxy.ports).toEqual([{ name: 'ctx-context', containerPort: 15120, protocol: 'TCP' }]);
    expect(proxy.readinessProbe.exec.command.join(' ')).toContain('127.0.0.1:15100/ready');
    expect(JSON.parse(out.metadata.annotations['ctxmesh.io/status']).mode).toBe('state-only');
    // A state-only sidecar still talks to the control plane, so it carries the label too.
    expect(out.metadata.labels['ctxmesh.io/sidecar']).toBe('true');
  });

  it('stamps ctxmesh.io/sidecar on pods without labels or metadata, and overrides a pod\'s own value', async () => {
    const unlabelled = podOf({ annotations: { 'ctxmesh.io/inject': 'true' } });
    delete (unlabelled.metadata as Obj).labels;
    const { patch, pod: out } = await inject(unlabelled);
    expect(patch).toContainEqual({ op: 'add', path: '/metadata/labels', value: { 'ctxmesh.io/sidecar': 'true' } });
    expect(out.metadata.labels).toEqual({ 'ctxmesh.io/sidecar': 'true' });

    const spoofed = await inject(podOf({ labels: { 'ctxmesh.io/inject': 'enabled', 'ctxmesh.io/sidecar': 'false' } }));
    expect(spoofed.pod.metadata.labels['ctxmesh.io/sidecar']).toBe('true');

    const { buildPatch } = await import('../../src/injection/patch.js');
    const bare = { spec: { containers: [{ name: 'app', image: 'app:1' }] } };
    const result = buildPatch(bare, template, { namespaceLabels: { 'ctxmesh.io/inject': 'enabled' } });
    const patched = applyJsonPatch(bare, result.patch) as Obj;
    expect(patched.metadata.labels).toEqual({ 'ctxmesh.io/sidecar': 'true' });
    expect(patched.metadata.annotations['ctxmesh.io/status']).toBeTypeOf('string');
  });

  it('an opted-out or already-injected pod gets no label either', async () => {
    const optedOut = await inject(podOf({ labels: { 'ctxmesh.io/inject': 'false' } }), { namespaceLabels: { 'ctxmesh.io/inject': 'enabled' } });
    expect(optedOut.pod.metadata.labels['ctxmesh.io/sidecar']).toBeUndefined();
    const first = await inject(podOf({ labels: { 'ctxmesh.io/inject': 'enabled' } }));
    expect((await inject(first.pod)).patch).toEqual([]);
  });
});

describe('admission: malformed or foreign requests are allowed without a patch', () => {
  const cases: Array<[string, unknown]> = [
    ['not an object', 42],
    ['wrong kind', { apiVersion: 'admission.k8s.io/v1', kind: 'Pod' }],
    ['v1beta1', { ...reviewOf(podOf()), apiVersion: 'admission.k8s.io/v1beta1' }],
    ['no request', { apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview' }],
    ['no uid', reviewOf(podOf(), { uid: undefined })],
    ['object without spec', reviewOf({ metadata: { annotations: { 'ctxmesh.io/inject': 'true' } } })],
    ['containers not an array', reviewOf({ metadata: { annotations: { 'ctxmesh.io/inject': 'true' } }, spec: { containers: 'chat' } })],
  ];
  for (const [label, body] of cases) {
    it(label, async () => {
      const outcome = await reviewAdmission(body, { template });
      expect(outcome.review.response.allowed).toBe(true);
      expect(outcome.review.response.patch).toBeUndefined();
      expect(outcome.decision.reason).toBe('malformed');
    });
  }

  it('echoes the uid of a malformed request it can read', async () => {
    const outcome = await reviewAdmission(reviewOf('not a pod'), { template });
    expect(outcome.review.response).toEqual({ uid: '705ab4f5-6393-11e8-b7cc-42010a800002', allowed: true });
  });

  it('ignores UPDATE, subresources and other kinds', async () => {
    const pod = podOf({ annotations: { 'ctxmesh.io/inject': 'true' } });
    for (const overrides of [{ operation: 'UPDATE' }, { subResource: 'status' }, { kind: { group: 'apps', version: 'v1', kind: 'Deployment' } }]) {
      const outcome = await reviewAdmission(reviewOf(pod, overrides), { template });
      expect(outcome.review.response.patch).toBeUndefined();
      expect(outcome.decision.reason).toBe('not-a-pod');
    }
  });
});
