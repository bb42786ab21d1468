// Realistic AdmissionReview v1 requests, shaped as the API server sends them for a Deployment's
// pod (generateName, ownerReferences, service account volume already added by admission).
export function podOf(overrides: { annotations?: Record<string, string>; labels?: Record<string, string>; initContainers?: unknown[]; volumes?: unknown[] | null } = {}): Record<string, unknown> {
  const metadata: Record<string, unknown> = {
    generateName: 'chat-7d9f8c6b5-',
    namespace: 'ai',
    labels: { app: 'chat', 'pod-template-hash': '7d9f8c6b5', ...overrides.labels },
    ownerReferences: [{ apiVersion: 'apps/v1', kind: 'ReplicaSet', name: 'chat-7d9f8c6b5', uid: '6b1c3c1e-8f4e-4b7e-9a55-0f3f5c2b7a10', controller: true, blockOwnerDeletion: true }],
  };
  if (overrides.annotations) metadata.annotations = overrides.annotations;
  const spec: Record<string, unknown> = {
    serviceAccountName: 'chat',
    containers: [
      {
        name: 'chat',
        image: 'registry.example.com/chat:1.4.2',
        ports: [{ name: 'http', containerPort: 8080, protocol: 'TCP' }],
        resources: { requests: { cpu: '500m', memory: '1Gi' } },
        volumeMounts: [{ name: 'kube-api-access-x7k2p', mountPath: '/var/run/secrets/kubernetes.io/serviceaccount', readOnly: true }],
        terminationMessagePath: '/dev/termination-log',
        terminationMessagePolicy: 'File',
        imagePullPolicy: 'IfNotPresent',
      },
    ],
    restartPolicy: 'Always',
    terminationGracePeriodSeconds: 30,
    dnsPolicy: 'ClusterFirst',
    schedulerName: 'default-scheduler',
    enableServiceLinks: true,
    preemptionPolicy: 'PreemptLowerPriority',
    priority: 0,
  };
  if (overrides.volumes !== null) {
    spec.volumes = overrides.volumes ?? [
      { name: 'kube-api-access-x7k2p', projected: { defaultMode: 420, sources: [{ serviceAccountToken: { expirationSeconds: 3607, path: 'token' } }] } },
    ];
  }
  if (overrides.initContainers) spec.initContainers = overrides.initContainers;
  return { apiVersion: 'v1', kind: 'Pod', metadata, spec, status: {} };
}

export function reviewOf(object: unknown, overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    apiVersion: 'admission.k8s.io/v1',
    kind: 'AdmissionReview',
    request: {
      uid: '705ab4f5-6393-11e8-b7cc-42010a800002',
      kind: { group: '', version: 'v1', kind: 'Pod' },
      resource: { group: '', version: 'v1', resource: 'pods' },
      requestKind: { group: '', version: 'v1', kind: 'Pod' },
      requestResource: { group: '', version: 'v1', resource: 'pods' },
      namespace: 'ai',
      operation: 'CREATE',
      userInfo: { username: 'system:serviceaccount:kube-system:replicaset-controller', uid: 'a1b2', groups: ['system:serviceaccounts', 'system:authenticated'] },
      object,
      oldObject: null,
      dryRun: false,
      options: { apiVersion: 'meta.k8s.io/v1', kind: 'CreateOptions' },
      ...overrides,
    },
  };
}
