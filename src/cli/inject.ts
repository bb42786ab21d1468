// `ctxmesh inject` and `ctxmesh injector`: sidecar injection. Both build the patch with
// src/injection/patch.ts; `inject` applies it to a manifest, `injector` returns it to the API server.
import { readFileSync, writeFileSync } from 'node:fs';
import type { Command } from 'commander';
import { parse as parseYaml } from 'yaml';
import type { z } from 'zod';
import { startWebhook, inClusterNamespaceLabels } from '../injection/webhook.js';
import { ManifestError, injectManifest } from '../injection/manifest.js';
import { InjectionTemplateSchema, type InjectionTemplate } from '../injection/template.js';
import { createLogger, flushLogger } from '../telemetry/logger.js';

const EXIT_FAILURE = 1;
const EXIT_USAGE = 2;
const DEFAULT_INJECTOR_PORT = 15_017;

class TemplateError extends Error {}

function issuePath(issue: z.core.$ZodIssue): string {
  return issue.path.map((p, i) => (typeof p === 'number' ? `[${p}]` : `${i ? '.' : ''}${String(p)}`)).join('') || '(root)';
}

/** The injection template from `--config` (YAML), or the defaults without one. */
export function loadTemplate(file: string | undefined): InjectionTemplate {
  let raw: unknown = {};
  if (file) {
    try {
      raw = parseYaml(readFileSync(file, 'utf8')) ?? {};
    } catch (err) {
      throw new TemplateError(`${file}: ${(err as Error).message}`);
    }
  }
  const parsed = InjectionTemplateSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new TemplateError(`${file ?? 'template'}: ${issuePath(issue)}: ${issue.message}`);
  }
  return parsed.data;
}

const TEMPLATE_HELP = `
The --config file holds the injection template values (all optional), e.g.:
  image: registry.example.com/ctxmesh:0.1.0
  imagePullPolicy: IfNotPresent
  mode: full                      # or state-only (beside Istio: see docs/istio.md)
  ports: { outbound: 15001, inbound: 15006, context: 15020, admin: 15000 }
  meshConfigMap: ctxmesh-mesh     # ConfigMap with sidecar.yaml, mounted at /etc/ctxmesh
  identity: { volumeName: ctxmesh-identity, secretName: ctxmesh-identity, mountPath: /var/run/secrets/ctxmesh }
  resources: { cpu: 50m, memory: 64Mi, cpuLimit: "1", memoryLimit: 512Mi }
  holdApplicationUntilProxyStarts: true
  excludeOutboundPorts: ["5432"]

Pod annotations: ctxmesh.io/inject: "true"|"false", ctxmesh.io/mode: state-only,
ctxmesh.io/hold-application-until-proxy-starts: "false", ctxmesh.io/proxy-cpu, ctxmesh.io/proxy-memory,
ctxmesh.io/proxy-cpu-limit, ctxmesh.io/proxy-memory-limit. Pod label ctxmesh.io/inject: enabled.`;

export function registerInject(program: Command): void {
  program
    .command('inject')
    .description('Add the ctxmesh sidecar to the pods of a manifest (as istioctl kube-inject), with the webhook\'s own patch.')
    .requiredOption('-f, --filename <file>', 'manifest (YAML, multi-document); "-" reads stdin')
    .option('-o, --output <file>', 'write the injected manifest here instead of stdout')
    .option('--config <file>', 'injection template values (YAML)')
    .option('--only-selected', 'inject only pods labelled/annotated for injection (default: all pods not opted out, as in an enabled namespace)')
    .addHelpText(
      'after',
      `\nSupports Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job and CronJob; other kinds pass through.
A pod already injected (ctxmesh.io/status) or annotated ctxmesh.io/inject: "false" is left as it is.
${TEMPLATE_HELP}

Examples:
  ctxmesh inject -f deployment.yaml | kubectl apply -f -
  ctxmesh inject -f app.yaml -o app-injected.yaml --config injector.yaml
  kubectl get deploy chat -o yaml | ctxmesh inject -f -`,
    )
    .action((opts: { filename: string; output?: string; config?: string; onlySelected?: boolean }) => {
      let template: InjectionTemplate;
      let text: string;
      try {
        template = loadTemplate(opts.config);
      } catch (err) {
        process.stderr.write(`ctxmesh: ${(err as Error).message}\n`);
        process.exit(EXIT_USAGE);
      }
      try {
        text = readFileSync(opts.filename === '-' ? 0 : opts.filename, 'utf8');
      } catch (err) {
        process.stderr.write(`ctxmesh: cannot read ${opts.filename}: ${(err as Error).message}\n`);
        process.exit(EXIT_FAILURE);
      }
      try {
        const { yaml, reports } = injectManifest(text, { template, namespaceLabels: opts.onlySelected ? {} : undefined });
        for (const report of reports) {
          for (const warning of report.warnings) process.stderr.write(`ctxmesh: ${report.kind}/${report.name}: ${warning}\n`);
          if (report.decision && !report.decision.inject) {
            process.stderr.write(`ctxmesh: ${report.kind}/${report.name}: not injected (${report.decision.reason})\n`);
          }
        }
        if (opts.output) writeFileSync(opts.output, yaml);
        else process.stdout.write(yaml);
      } catch (err) {
        const usage = err instanceof ManifestError;
        process.stderr.write(`ctxmesh: ${(err as Error).message}\n`);
        process.exit(usage ? EXIT_USAGE : EXIT_FAILURE);
      }
    });

  program
    .command('injector')
    .description('Run the sidecar injector: a mutating admission webhook (HTTPS) for pods.')
    .option('--port <port>', 'HTTPS port', String(DEFAULT_INJECTOR_PORT))
    .option('--address <addr>', 'bind address', '0.0.0.0')
    .requiredOption('--cert <file>', 'serving certificate (PEM), valid for the webhook Service DNS name')
    .requiredOption('--key <file>', 'private key of the serving certificate (PEM); both files are reloaded when they change')
    .option('--config <file>', 'injection template values (YAML)')
    .option('--log-level <level>', 'trace | debug | info | warn | error', 'info')
    .addHelpText(
      'after',
      `\nServes AdmissionReview v1 on POST (any path; the chart uses /inject) and GET /healthz, /ready.
Every answer is allowed: true; an injected pod gets a JSONPatch. Namespace labels are read from the
API server when running in a pod with a service account.
${TEMPLATE_HELP}

Examples:
  ctxmesh injector --cert /etc/webhook/tls.crt --key /etc/webhook/tls.key --config /etc/injector/values.yaml
  ctxmesh injector --port 9443 --cert certs/injector/cert.pem --key certs/injector/key.pem`,
    )
    .action(async (opts: { port: string; address: string; cert: string; key: string; config?: string; logLevel: string }) => {
      const port = Number(opts.port);
      if (!Number.isInteger(port) || port < 0 || port > 65_535) {
        process.stderr.write(`ctxmesh: --port must be 0-65535, got "${opts.port}"\n`);
        process.exit(EXIT_USAGE);
      }
      let template: InjectionTemplate;
      try {
        template = loadTemplate(opts.config);
        // Read once here so a missing file is a usage error; the webhook re-reads and watches them.
        readFileSync(opts.cert);
        readFileSync(opts.key);
      } catch (err) {
        process.stderr.write(`ctxmesh: ${(err as Error).message}\n`);
        process.exit(EXIT_USAGE);
      }
      const logger = createLogger({ level: opts.logLevel, name: 'injector' });
      try {
        const webhook = await startWebhook({
          port,
          host: opts.address,
          certFile: opts.cert,
          keyFile: opts.key,
          template,
          logger,
          namespaceLabels: inClusterNamespaceLabels(),
        });
        logger.info({ port: webhook.port, image: template.image, mode: template.mode }, 'injector listening');
        const stop = (signal: string): void => {
          logger.info({ signal }, 'shutting down');
          void webhook.close().then(() => {
            flushLogger(logger);
            process.exit(0);
          });
        };
        process.once('SIGTERM', () => stop('SIGTERM'));
        process.once('SIGINT', () => stop('SIGINT'));
      } catch (err) {
        process.stderr.write(`ctxmesh: injector failed to start: ${(err as Error).message}\n`);
        process.exit(EXIT_FAILURE);
      }
    });
}
