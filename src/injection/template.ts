// What the injector adds to a pod: the init container that installs interception, the sidecar
// container, and their volumes. Pure functions of (template values, pod metadata); the JSONPatch
// that adds them is computed in patch.ts, so `ctxmesh inject` and the webhook share every byte.
import { z } from 'zod';
import { VERSION } from '../cli/version.js';

export const INJECT_LABEL = 'ctxmesh.io/inject';
export const INJECT_ANNOTATION = 'ctxmesh.io/inject';
export const STATUS_ANNOTATION = 'ctxmesh.io/status';
/**
 * Stamped on every injected pod. The chart's NetworkPolicy admits only pods carrying it to the
 * control plane's xDS and admin ports, which have no authentication of their own.
 */
export const SIDECAR_LABEL = 'ctxmesh.io/sidecar';
export const SIDECAR_LABEL_VALUE = 'true';
export const MODE_ANNOTATION = 'ctxmesh.io/mode';
export const HOLD_ANNOTATION = 'ctxmesh.io/hold-application-until-proxy-starts';
export const CPU_ANNOTATION = 'ctxmesh.io/proxy-cpu';
export const MEMORY_ANNOTATION = 'ctxmesh.io/proxy-memory';
export const CPU_LIMIT_ANNOTATION = 'ctxmesh.io/proxy-cpu-limit';
export const MEMORY_LIMIT_ANNOTATION = 'ctxmesh.io/proxy-memory-limit';

export const INIT_CONTAINER_NAME = 'ctxmesh-init';
export const PROXY_CONTAINER_NAME = 'ctxmesh-proxy';

const port = z.number().int().min(1).max(65_535);
// Kubernetes resource quantities (https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/quantity/).
// Checked here so a typo in an annotation falls back to the default instead of producing a pod
// the API server rejects (which would block the workload: the opposite of "never reject").
const QUANTITY_PATTERN = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$/;
const quantity = z.string().regex(QUANTITY_PATTERN, 'expected a Kubernetes quantity, e.g. 100m or 128Mi');

/** The pod IP from the downward API; not CTXMESH_-prefixed, so the config loader ignores it. */
export const POD_IP_ENV = 'POD_IP';

export const MODES = ['full', 'state-only'] as const;
export type InjectionMode = (typeof MODES)[number];

/** The injector's `--config` file. Every key has a default, so `{}` is a valid template. */
export const InjectionTemplateSchema = z.strictObject({
  /** Sidecar image; its entrypoint is `node dist/src/cli/main.js` (see the Dockerfile). */
  image: z.string().min(1).default(`ctxmesh:${VERSION}`),
  imagePullPolicy: z.enum(['Always', 'IfNotPresent', 'Never']).default('IfNotPresent'),
  /** full: ctxmesh intercepts and carries traffic; state-only: beside Istio, context API only. */
  mode: z.enum(MODES).default('full'),
  /** uid/gid of the sidecar, excluded from outbound interception. Default 1337. */
  proxyUid: z.number().int().min(1).default(1337),
  ports: z
    .strictObject({
      outbound: port.default(15_001),
      inbound: port.default(15_006),
      context: port.default(15_020),
      admin: port.default(15_000),
    })
    .prefault({}),
  /**
   * Bind address of the outbound listener in full mode. Default "::" (every address, IPv4 and
   * IPv6): ip6tables REDIRECTs a pod's IPv6 connections to [::1], which a listener on 127.0.0.1
   * never sees. Reaching it from outside the pod is no risk while the rules are in place (every
   * inbound connection goes to the inbound port). "127.0.0.1" on nodes booted without IPv6.
   */
  outboundAddress: z.string().min(1).default('::'),
  /**
   * Bind address of the inbound (mTLS) listener in full mode. Default "::": ip6tables REDIRECTs
   * IPv6 connections arriving at the pod to its IPv6 address, which a listener on 0.0.0.0 never
   * sees. "0.0.0.0" on nodes booted without IPv6.
   */
  inboundAddress: z.string().min(1).default('::'),
  /**
   * Ports of the sidecar in state-only mode. Istio's own agent already holds 15000 (Envoy admin),
   * 15001/15006 (Envoy listeners) and 15020 (pilot-agent merged metrics, bound on all addresses),
   * so in the same network namespace ctxmesh cannot bind them: see docs/istio.md.
   */
  stateOnly: z
    .strictObject({
      context: port.default(15_120),
      admin: port.default(15_100),
    })
    .prefault({}),
  /** ConfigMap holding `sidecar.yaml`, mounted at configMountPath. */
  meshConfigMap: z.string().min(1).default('ctxmesh-mesh'),
  configMountPath: z.string().startsWith('/').default('/etc/ctxmesh'),
  configFile: z.string().min(1).default('sidecar.yaml'),
  identity: z
    .strictObject({
      /** Volume name in the pod. */
      volumeName: z.string().min(1).default('ctxmesh-identity'),
      /** Secret with cert.pem, key.pem, ca.pem (in the pod's namespace). */
      secretName: z.string().min(1).default('ctxmesh-identity'),
      // Not under configMountPath: a mount point nested in a ConfigMap volume needs a mkdir in a
      // read-only mount, which some container runtimes refuse.
      mountPath: z.string().startsWith('/').default('/var/run/secrets/ctxmesh'),
    })
    .prefault({}),
  /** Writable emptyDir for checkpoints and the WAL: the root filesystem is read-only. */
  dataDir: z.string().startsWith('/').default('/var/lib/ctxmesh'),
  /** Default proxy resources; annotations override each. */
  resources: z
    .strictObject({
      cpu: quantity.default('50m'),
      memory: quantity.default('64Mi'),
      cpuLimit: quantity.default('1'),
      memoryLimit: quantity.default('512Mi'),
    })
    .prefault({}),
  /** Start the app only after the sidecar is ready (native sidecar in initContainers). */
  holdApplicationUntilProxyStarts: z.boolean().default(true),
  excludeOutboundPorts: z.array(z.string()).default([]),
  excludeInboundPorts: z.array(z.string()).default([]),
  excludeOutboundCidrs: z.array(z.string()).default([]),
});

export type InjectionTemplate = z.infer<typeof InjectionTemplateSchema>;

export function defaultTemplate(): InjectionTemplate {
  return InjectionTemplateSchema.parse({});
}

/** The slice of a pod the template reads (the pod or a workload's spec.template). */
export interface PodMeta {
  name?: string;
  generateName?: string;
  annotations?: Record<string, string>;
}

/** A Kubernetes object shape: the injector only ever handles JSON objects. */
export type Json = Record<string, unknown>;

/** Everything the patch adds; `status` is what goes into the ctxmesh.io/status annotation. */
export interface Injection {
  mode: InjectionMode;
  /** Containers appended to spec.initContainers, in order. */
  initContainers: Json[];
  /** Containers appended to spec.containers. */
  containers: Json[];
  volumes: Json[];
  status: InjectionStatus;
}

export interface InjectionStatus {
  version: string;
  mode: InjectionMode;
  initContainers: string[];
  containers: string[];
  volumes: string[];
}

// Probe timing. The startup probe allows FAILURE_THRESHOLD x PERIOD for the sidecar to load its
// config and certificates before the kubelet restarts it; the readiness probe then runs forever.
const STARTUP_PROBE_PERIOD_SECONDS = 1;
const STARTUP_PROBE_FAILURE_THRESHOLD = 60;
const READINESS_PROBE_PERIOD_SECONDS = 5;
const READINESS_PROBE_FAILURE_THRESHOLD = 3;
const PROBE_TIMEOUT_SECONDS = 3;
/** The HTTP request inside the exec probe gives up before the kubelet's own timeout. */
const PROBE_REQUEST_TIMEOUT_MS = 2_000;

/**
 * The probe command. The admin API (and its GET /ready) binds 127.0.0.1 only, by contract, and a
 * kubelet httpGet probe connects to the pod IP from the node, so it would always fail. An exec
 * probe runs inside the container's network namespace, where 127.0.0.1 is the sidecar's own
 * loopback. The image is node:20 (node on PATH, global fetch), so the probe needs nothing else.
 */
export function readinessProbeCommand(adminPort: number): string[] {
  const script =
    `fetch('http://127.0.0.1:${adminPort}/ready',{signal:AbortSignal.timeout(${PROBE_REQUEST_TIMEOUT_MS})})` +
    `.then(r=>process.exit(r.ok?0:1),()=>process.exit(1))`;
  return ['node', '-e', script];
}

function annotation(meta: PodMeta, key: string): string | undefined {
  const value = meta.annotations?.[key];
  return typeof value === 'string' ? value : undefined;
}

/** The mode for this pod: its annotation wins over the template value; unknown values are ignored. */
export function modeOf(meta: PodMeta, template: InjectionTemplate): InjectionMode {
  const value = annotation(meta, MODE_ANNOTATION);
  return (MODES as readonly string[]).includes(value ?? '') ? (value as InjectionMode) : template.mode;
}

function quantityOr(meta: PodMeta, key: string, fallback: string, warnings: string[]): string {
  const value = annotation(meta, key);
  if (value === undefined) return fallback;
  if (QUANTITY_PATTERN.test(value.trim())) return value.trim();
  warnings.push(`annotation ${key}="${value}" is not a Kubernetes quantity; using ${fallback}`);
  return fallback;
}

function holdApplication(meta: PodMeta, template: InjectionTemplate): boolean {
  const value = annotation(meta, HOLD_ANNOTATION);
  if (value === 'false') return false;
  if (value === 'true') return true;
  return template.holdApplicationUntilProxyStarts;
}

/**
 * Build what to inject into one pod. `warnings` collects annotation values that were ignored
 * (logged by the webhook, printed by `ctxmesh inject`).
 */
export function buildInjection(meta: PodMeta, template: InjectionTemplate, warnings: string[] = []): Injection {
  const mode = modeOf(meta, template);
  const stateOnly = mode === 'state-only';
  const uid = template.proxyUid;
  const adminPort = stateOnly ? template.stateOnly.admin : template.ports.admin;
  const contextPort = stateOnly ? template.stateOnly.context : template.ports.context;
  const identityDir = template.identity.mountPath;

  const resources = {
    requests: {
      cpu: quantityOr(meta, CPU_ANNOTATION, template.resources.cpu, warnings),
      memory: quantityOr(meta, MEMORY_ANNOTATION, template.resources.memory, warnings),
    },
    limits: {
      cpu: quantityOr(meta, CPU_LIMIT_ANNOTATION, template.resources.cpuLimit, warnings),
      memory: quantityOr(meta, MEMORY_LIMIT_ANNOTATION, template.resources.memoryLimit, warnings),
    },
  };

  // CTXMESH_* variables override sidecar.yaml fields (src/config/load.ts); every name here must
  // be a real config path, or the sidecar refuses to start.
  const env: Json[] = [
    { name: 'CTXMESH_NODE_ID', valueFrom: { fieldRef: { apiVersion: 'v1', fieldPath: 'metadata.name' } } },
    // The injector decides where the identity is mounted, so it also says where to read it.
    { name: 'CTXMESH_IDENTITY_CERT', value: `${identityDir}/cert.pem` },
    { name: 'CTXMESH_IDENTITY_KEY', value: `${identityDir}/key.pem` },
    { name: 'CTXMESH_IDENTITY_CA', value: `${identityDir}/ca.pem` },
    { name: 'CTXMESH_CONTEXT_CHECKPOINT_DIR', value: `${template.dataDir}/checkpoints` },
    { name: 'CTXMESH_ADMIN_PORT', value: String(adminPort) },
    { name: 'CTXMESH_CONTEXT_PORT', value: String(contextPort) },
  ];
  if (stateOnly) {
    // Envoy owns the data path: ctxmesh's own listeners go to ephemeral loopback ports where
    // nothing is sent to them, and 15001/15006 stay free for Envoy.
    env.push(
      { name: 'CTXMESH_OUTBOUND_PORT', value: '0' },
      { name: 'CTXMESH_INBOUND_PORT', value: '0' },
      { name: 'CTXMESH_INBOUND_ADDRESS', value: '127.0.0.1' },
    );
  } else {
    env.push(
      // Quoted: the config loader reads variables as YAML, where a bare `::` is a mapping.
      { name: 'CTXMESH_OUTBOUND_ADDRESS', value: JSON.stringify(template.outboundAddress) },
      { name: 'CTXMESH_INBOUND_ADDRESS', value: JSON.stringify(template.inboundAddress) },
      // Other sidecars and the control plane reach this one at the pod IP, not at the default
      // 127.0.0.1: it is the member address and the endpoint it registers over ADS. Kubernetes
      // expands $(POD_IP) from the variable defined just before it. The bare IP is passed as it
      // is, and the sidecar appends its inbound port: `$(POD_IP):15006` would be an unbracketed
      // IPv6 address in an IPv6 cluster, and `[$(POD_IP)]` is no IPv4 address.
      { name: POD_IP_ENV, valueFrom: { fieldRef: { apiVersion: 'v1', fieldPath: 'status.podIP' } } },
      { name: 'CTXMESH_INBOUND_ADVERTISE', value: `$(${POD_IP_ENV})` },
    );
  }

  const ports: Json[] = stateOnly
    ? [{ name: 'ctx-context', containerPort: contextPort, protocol: 'TCP' }]
    : [
        { name: 'ctx-outbound', containerPort: template.ports.outbound, protocol: 'TCP' },
        { name: 'ctx-inbound', containerPort: template.ports.inbound, protocol: 'TCP' },
        { name: 'ctx-context', containerPort: contextPort, protocol: 'TCP' },
      ];

  const probe = { exec: { command: readinessProbeCommand(adminPort) }, timeoutSeconds: PROBE_TIMEOUT_SECONDS };
  const proxy: Json = {
    name: PROXY_CONTAINER_NAME,
    image: template.image,
    imagePullPolicy: template.imagePullPolicy,
    args: ['sidecar', '-c', `${template.configMountPath}/${template.configFile}`],
    env,
    ports,
    resources,
    securityContext: {
      runAsUser: uid,
      runAsGroup: uid,
      runAsNonRoot: true,
      readOnlyRootFilesystem: true,
      allowPrivilegeEscalation: false,
      capabilities: { drop: ['ALL'] },
    },
    startupProbe: { ...probe, periodSeconds: STARTUP_PROBE_PERIOD_SECONDS, failureThreshold: STARTUP_PROBE_FAILURE_THRESHOLD },
    readinessProbe: { ...probe, periodSeconds: READINESS_PROBE_PERIOD_SECONDS, failureThreshold: READINESS_PROBE_FAILURE_THRESHOLD },
    volumeMounts: [
      { name: 'ctxmesh-config', mountPath: template.configMountPath, readOnly: true },
      { name: template.identity.volumeName, mountPath: identityDir, readOnly: true },
      { name: 'ctxmesh-data', mountPath: template.dataDir },
    ],
  };

  const initContainers: Json[] = [];
  if (!stateOnly) {
    const args = ['iptables', '--outbound-port', String(template.ports.outbound), '--inbound-port', String(template.ports.inbound), '--proxy-uid', String(uid)];
    if (template.excludeOutboundPorts.length) args.push('--exclude-outbound-ports', template.excludeOutboundPorts.join(','));
    if (template.excludeInboundPorts.length) args.push('--exclude-inbound-ports', template.excludeInboundPorts.join(','));
    if (template.excludeOutboundCidrs.length) args.push('--exclude-outbound-cidrs', template.excludeOutboundCidrs.join(','));
    initContainers.push({
      name: INIT_CONTAINER_NAME,
      image: template.image,
      imagePullPolicy: template.imagePullPolicy,
      args,
      // iptables needs root and NET_ADMIN/NET_RAW in the pod's network namespace; nothing else.
      securityContext: {
        runAsUser: 0,
        runAsGroup: 0,
        runAsNonRoot: false,
        allowPrivilegeEscalation: false,
        readOnlyRootFilesystem: true,
        capabilities: { add: ['NET_ADMIN', 'NET_RAW'], drop: ['ALL'] },
      },
      resources: { requests: { cpu: '10m', memory: '32Mi' }, limits: { cpu: '100m', memory: '64Mi' } },
    });
  }

  const containers: Json[] = [];
  if (holdApplication(meta, template)) {
    // A native sidecar (Kubernetes >= 1.29): an init container with restartPolicy Always. The
    // kubelet starts it after ctxmesh-init and waits for its startup probe before the next init
    // container and the app containers, and stops it after them.
    initContainers.push({ ...proxy, restartPolicy: 'Always' });
  } else {
    containers.push(proxy);
  }

  const volumes: Json[] = [
    { name: 'ctxmesh-config', configMap: { name: template.meshConfigMap } },
    // 0444: the files belong to root and the proxy runs as 1337 without an fsGroup, so it must be
    // able to read them as "other"; only this container mounts the volume.
    { name: template.identity.volumeName, secret: { secretName: template.identity.secretName, defaultMode: 0o444 } },
    { name: 'ctxmesh-data', emptyDir: {} },
  ];

  return {
    mode,
    initContainers,
    containers,
    volumes,
    status: {
      version: VERSION,
      mode,
      initContainers: initContainers.map((c) => c.name as string),
      containers: containers.map((c) => c.name as string),
      volumes: volumes.map((v) => v.name as string),
    },
  };
}
