// `ctxmesh inject` as a user runs it: the built CLI in a child process on a multi-document file.
import { execFile } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Deployment, StatefulSet } from 'kubernetes-models/apps/v1';
import { Job } from 'kubernetes-models/batch/v1';
import { Pod } from 'kubernetes-models/v1';
import { beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';

const CLI = 'dist/src/cli/main.js';

function run(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

const MANIFEST = `# app.yaml
apiVersion: apps/v1
kind: Deployment
metadata: { name: chat, namespace: ai }
spec:
  replicas: 2
  selector: { matchLabels: { app: chat } }
  template:
    metadata:
      labels: { app: chat }
      annotations: { ctxmesh.io/proxy-cpu: 200m }
    spec:
      containers:
        - name: chat
          image: registry.example.com/chat:1.4.2
          ports: [{ containerPort: 8080 }]
---
apiVersion: v1
kind: Service
metadata: { name: chat, namespace: ai }
spec:
  selector: { app: chat }
  ports: [{ port: 80, targetPort: 8080 }]
---
apiVersion: v1
kind: Pod
metadata:
  name: debug
  annotations: { ctxmesh.io/inject: "false" }
spec:
  containers: [{ name: shell, image: busybox:1.36 }]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: { name: memory }
spec:
  serviceName: memory
  selector: { matchLabels: { app: memory } }
  template:
    metadata: { labels: { app: memory } }
    spec:
      initContainers: [{ name: migrate, image: registry.example.com/memory:2 }]
      containers: [{ name: memory, image: registry.example.com/memory:2 }]
      volumes: [{ name: scratch, emptyDir: {} }]
---
apiVersion: batch/v1
kind: Job
metadata: { name: embed }
spec:
  template:
    metadata: { annotations: { ctxmesh.io/mode: state-only } }
    spec:
      restartPolicy: Never
      containers: [{ name: embed, image: registry.example.com/embed:1 }]
`;

let dir: string;
beforeAll(() => {
  if (!existsSync(CLI)) execFileSync('npm', ['run', 'build'], { stdio: 'ignore' });
  dir = mkdtempSync(join(tmpdir(), 'ctxmesh-inject-'));
  writeFileSync(join(dir, 'app.yaml'), MANIFEST);
});

const names = (list: any[] | undefined): string[] => (list ?? []).map((c) => c.name);

describe('ctxmesh inject', () => {
  it('injects every workload kind in a multi-document file, passes others through, and is idempotent', async () => {
    const out = join(dir, 'out.yaml');
    const first = await run(['inject', '-f', join(dir, 'app.yaml'), '-o', out]);
    expect(first.code, first.stderr).toBe(0);
    expect(first.stdout).toBe('');
    expect(first.stderr).toMatch(/Pod\/debug: not injected \(opted-out\)/);

    const docs = parseAllDocuments(readFileSync(out, 'utf8')).map((d) => d.toJS() as any);
    expect(docs.map((d) => d.kind)).toEqual(['Deployment', 'Service', 'Pod', 'StatefulSet', 'Job']);
    const [deploy, service, pod, sts, job] = docs;

    new Deployment(deploy).validate();
    const dSpec = deploy.spec.template.spec;
    expect(names(dSpec.initContainers)).toEqual(['ctxmesh-init', 'ctxmesh-proxy']);
    expect(dSpec.initContainers[1].resources.requests.cpu).toBe('200m');
    expect(deploy.spec.template.metadata.annotations['ctxmesh.io/status']).toBeTypeOf('string');
    expect(deploy.metadata.annotations).toBeUndefined(); // the workload itself is untouched

    expect(service).toEqual(parseAllDocuments(MANIFEST)[1]!.toJS());
    new Pod(pod).validate();
    expect(pod.spec.initContainers).toBeUndefined();

    new StatefulSet(sts).validate();
    expect(names(sts.spec.template.spec.initContainers)).toEqual(['ctxmesh-init', 'ctxmesh-proxy', 'migrate']);
    expect(names(sts.spec.template.spec.volumes)).toEqual(['scratch', 'ctxmesh-config', 'ctxmesh-identity', 'ctxmesh-data']);

    new Job(job).validate();
    // state-only: no interception init container; the native sidecar does not keep the Job alive.
    expect(names(job.spec.template.spec.initContainers)).toEqual(['ctxmesh-proxy']);

    // Injecting the output again changes nothing.
    const second = await run(['inject', '-f', out]);
    expect(second.code, second.stderr).toBe(0);
    expect(parseAllDocuments(second.stdout).map((d) => d.toJS())).toEqual(docs);
    expect(second.stderr).toMatch(/Deployment\/chat: not injected \(already-injected\)/);
  });

  it('--only-selected injects only opted-in pods; a bad template exits 2 naming the field', async () => {
    const selected = await run(['inject', '-f', join(dir, 'app.yaml'), '--only-selected']);
    expect(selected.code, selected.stderr).toBe(0);
    expect(selected.stdout).not.toContain('ctxmesh-proxy');

    writeFileSync(join(dir, 'bad.yaml'), 'resources: { cpu: lots }\n');
    const bad = await run(['inject', '-f', join(dir, 'app.yaml'), '--config', join(dir, 'bad.yaml')]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/resources\.cpu/);
  });

  it('has --help with examples for both verbs', async () => {
    for (const verb of ['inject', 'injector']) {
      const help = await run([verb, '--help']);
      expect(help.code).toBe(0);
      expect(help.stdout).toMatch(/Examples:/);
    }
  });
});
