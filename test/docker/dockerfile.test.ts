// No Docker engine runs here, so the image is checked from its recipe: the Dockerfile's stages,
// what reaches the runtime image, the user it runs as, and that the entrypoint it names is what
// `npm run build` produces. `.dockerignore` must keep secrets and bulk out of the build context.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { builtinModules } from 'node:module';
import { join, posix } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { NODE_FLAGS } from '../../src/cli/node-flags.js';

type Instruction = { op: string; args: string; line: number };
type Stage = { image: string; name?: string; instructions: Instruction[] };

/** Instructions of a Dockerfile: comments and parser directives dropped, continuations joined. */
function parseDockerfile(text: string): Instruction[] {
  const out: Instruction[] = [];
  let pending = '';
  let start = 0;
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (!pending && (line === '' || line.startsWith('#'))) return;
    if (pending && line.startsWith('#')) return; // comments inside a continued instruction
    if (!pending) start = i + 1;
    if (line.endsWith('\\')) {
      pending += line.slice(0, -1) + ' ';
      return;
    }
    const full = (pending + line).trim();
    pending = '';
    const [op = '', ...rest] = full.split(/\s+/);
    out.push({ op: op.toUpperCase(), args: rest.join(' '), line: start });
  });
  return out;
}

function stages(instructions: Instruction[]): Stage[] {
  const result: Stage[] = [];
  for (const ins of instructions) {
    if (ins.op === 'FROM') {
      const m = /^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$/i.exec(ins.args);
      if (!m) throw new Error(`cannot read FROM at line ${ins.line}: ${ins.args}`);
      result.push({ image: m[1]!, name: m[2], instructions: [] });
    } else if (result.length) {
      result[result.length - 1]!.instructions.push(ins);
    }
  }
  return result;
}

/** COPY/ADD: flags, sources and destination (exec/JSON form or shell form). */
function parseCopy(args: string): { flags: Record<string, string>; sources: string[]; dest: string } {
  const flags: Record<string, string> = {};
  let rest = args;
  for (let m = /^--([\w-]+)=(\S+)\s+/.exec(rest); m; m = /^--([\w-]+)=(\S+)\s+/.exec(rest)) {
    flags[m[1]!] = m[2]!;
    rest = rest.slice(m[0].length);
  }
  const parts: string[] = rest.startsWith('[') ? JSON.parse(rest) : rest.split(/\s+/);
  return { flags, sources: parts.slice(0, -1), dest: parts[parts.length - 1]! };
}

/** .dockerignore semantics (Go filepath.Match per segment, `**` any depth, `!` re-includes). */
function dockerIgnores(patterns: string[], path: string): boolean {
  const toRegex = (pattern: string): RegExp => {
    const clean = posix.normalize(pattern.replace(/^\/+/, '')).replace(/\/+$/, '');
    let re = '';
    for (let i = 0; i < clean.length; i++) {
      const c = clean[i]!;
      if (c === '*' && clean[i + 1] === '*') {
        re += '.*';
        i++;
        if (clean[i + 1] === '/') i++;
      } else if (c === '*') re += '[^/]*';
      else if (c === '?') re += '[^/]';
      else re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
    }
    // A pattern that names a directory excludes everything below it.
    return new RegExp(`^${re}(/.*)?$`);
  };
  let ignored = false;
  for (const p of patterns) {
    if (p.startsWith('!')) {
      if (toRegex(p.slice(1)).test(path)) ignored = false;
    } else if (toRegex(p).test(path)) ignored = true;
  }
  return ignored;
}

const dockerfile = readFileSync('Dockerfile', 'utf8');
const instructions = parseDockerfile(dockerfile);
const allStages = stages(instructions);
const runtime = allStages[allStages.length - 1]!;
const build = allStages.slice(0, -1).find((s) => s.instructions.some((i) => i.op === 'RUN' && /npm run build/.test(i.args)));
const ignorePatterns = readFileSync('.dockerignore', 'utf8')
  .split('\n')
  .map((l) => l.trim())
  .filter((l) => l && !l.startsWith('#'));

function of(stage: Stage, op: string): Instruction[] {
  return stage.instructions.filter((i) => i.op === op);
}

/** The stage's working directory when `ins` runs (WORKDIRs before it, resolved in order). */
function workdirAt(stage: Stage, ins: Instruction): string {
  let dir = '/';
  for (const i of stage.instructions) {
    if (i === ins) break;
    if (i.op === 'WORKDIR') dir = posix.resolve(dir, i.args);
  }
  return dir;
}

describe('Dockerfile', () => {
  it('is multi-stage: a build stage runs npm ci and npm run build and prunes dev dependencies', () => {
    expect(allStages.length).toBeGreaterThanOrEqual(2);
    expect(build, 'a stage before the runtime runs `npm run build`').toBeDefined();
    const runs = of(build!, 'RUN').map((i) => i.args);
    const ci = runs.findIndex((r) => /\bnpm ci\b/.test(r));
    const compile = runs.findIndex((r) => /\bnpm run build\b/.test(r));
    expect(ci, runs.join('\n')).toBeGreaterThanOrEqual(0);
    expect(compile).toBeGreaterThanOrEqual(ci);
    // Production dependencies only: pruned after the build (or installed with --omit=dev).
    expect(runs.some((r) => /npm (prune|ci)\b.*--omit=dev/.test(r)), runs.join('\n')).toBe(true);
    // npm ci needs the lockfile in the stage before it runs.
    const copied = of(build!, 'COPY').flatMap((i) => parseCopy(i.args).sources);
    expect(copied).toEqual(expect.arrayContaining(['package.json', 'package-lock.json', 'tsconfig.json', 'src']));
  });

  it('copies every directory tsconfig.json compiles (src and xds) into the build stage before the build', () => {
    const tsconfig = JSON.parse(readFileSync('tsconfig.json', 'utf8')) as { include: string[] };
    const roots = [...new Set(tsconfig.include.map((glob) => glob.split('/')[0]!))];
    expect(roots).toEqual(expect.arrayContaining(['src', 'xds']));
    const compile = build!.instructions.find((i) => i.op === 'RUN' && /npm run build/.test(i.args))!;
    const copiedBefore = build!.instructions
      .slice(0, build!.instructions.indexOf(compile))
      .filter((i) => i.op === 'COPY' && !parseCopy(i.args).flags.from)
      .flatMap((i) => parseCopy(i.args).sources.map((s) => s.replace(/\/$/, '')));
    for (const root of roots) expect(copiedBefore, `${root}/ is copied before \`npm run build\``).toContain(root);
  });

  it('installs iptables in the runtime image and checks that both iptables and ip6tables tools are there', () => {
    const runs = of(runtime, 'RUN').map((i) => i.args);
    const install = runs.find((r) => /apt-get install\b.*\biptables\b/.test(r));
    expect(install, runs.join('\n')).toBeDefined();
    // `ctxmesh iptables` runs iptables-save/-restore and, for IPv6, ip6tables-save/-restore.
    for (const tool of ['iptables-save', 'iptables-restore', 'ip6tables-save', 'ip6tables-restore']) {
      expect(install, `the build checks ${tool}`).toMatch(new RegExp(`(^|&&\\s*)${tool} --version`));
    }
    // No package lists left behind.
    expect(install).toMatch(/rm -rf \/var\/lib\/apt\/lists/);
  });

  it.skipIf(spawnSync('dpkg', ['-L', 'iptables']).status !== 0)("Debian's iptables package ships the ip6tables tools (checked on this Debian host)", () => {
    const files = execFileSync('dpkg', ['-L', 'iptables'], { encoding: 'utf8' });
    expect(files).toMatch(/\/ip6tables-nft-restore$/m);
    expect(files).toMatch(/\/ip6tables-nft-save$/m);
  });

  it('runs on a slim Node 20 image', () => {
    expect(runtime.image).toMatch(/^node:20(\.\d+)*-[\w.-]*slim$/);
    expect(build!.image).toMatch(/^node:20\b/);
  });

  it('copies only dist, production node_modules and package.json into the runtime image', () => {
    const copies = [...of(runtime, 'COPY'), ...of(runtime, 'ADD')];
    expect(of(runtime, 'ADD')).toEqual([]);
    // Sources relative to the build stage's working directory, where it built the project.
    const buildDir = workdirAt(build!, build!.instructions.at(-1)!);
    const sources = copies.flatMap((i) => {
      const { flags, sources } = parseCopy(i.args);
      expect(flags.from, `line ${i.line}: runtime copies come from the build stage, not the context`).toBe(build!.name);
      return sources.map((s) => posix.relative(buildDir, posix.resolve(buildDir, s)));
    });
    expect(sources.sort()).toEqual(['dist', 'node_modules', 'package.json']);
    for (const banned of ['src', 'test', 'bench', '.']) expect(sources).not.toContain(banned);
    // The node_modules copied are the pruned ones: the prune ran in the stage they come from.
    expect(of(build!, 'RUN').some((r) => /--omit=dev/.test(r.args))).toBe(true);
  });

  it('runs as uid 1337 (non-root), set after the last RUN', () => {
    const users = of(runtime, 'USER');
    expect(users.length).toBeGreaterThan(0);
    const lastUser = users[users.length - 1]!;
    expect(lastUser.args).toMatch(/^1337(:1337)?$/);
    const lastRun = of(runtime, 'RUN').at(-1);
    if (lastRun) expect(runtime.instructions.indexOf(lastUser)).toBeGreaterThan(runtime.instructions.indexOf(lastRun));
  });

  it('exposes the sidecar ports and starts dist/src/cli/main.js from the copied dist', () => {
    const exposed = of(runtime, 'EXPOSE').flatMap((i) => i.args.split(/\s+/)).map((p) => p.replace(/\/tcp$/, ''));
    // Sidecar, control plane (xDS, admin) and injector: one image runs all three.
    expect(exposed).toEqual(expect.arrayContaining(['15000', '15001', '15006', '15020', '15010', '15014', '15017']));

    const entry = of(runtime, 'ENTRYPOINT').at(-1);
    expect(entry, 'ENTRYPOINT').toBeDefined();
    const argv: string[] = JSON.parse(entry!.args); // exec form: node is PID 1 and receives SIGTERM
    expect(argv[0]).toMatch(/(^|\/)node$/);
    // node's flags, then the script: the flags the CLI's shebang carries too (src/cli/node-flags.ts).
    const flags = argv.slice(1, argv.findIndex((arg, i) => i > 0 && !arg.startsWith('-')));
    expect(flags).toEqual(NODE_FLAGS);
    const script = posix.resolve(workdirAt(runtime, entry!), argv[1 + flags.length]!);
    expect(script).toMatch(/\/dist\/src\/cli\/main\.js$/);
    // The script is inside the dist directory the runtime stage copied.
    const distCopy = of(runtime, 'COPY').find((i) => parseCopy(i.args).sources.some((s) => /(^|\/)dist\/?$/.test(s)))!;
    const distDest = posix.resolve(workdirAt(runtime, distCopy), parseCopy(distCopy.args).dest);
    expect(script).toBe(posix.join(distDest, 'src/cli/main.js'));
  });
});

describe('npm run build produces the entrypoint', () => {
  const ENTRY = 'dist/src/cli/main.js';

  beforeAll(() => {
    if (!existsSync(ENTRY)) execFileSync('npm', ['run', 'build'], { stdio: 'ignore' });
  }, 120_000);

  it(`${ENTRY} exists, is the package's bin, and runs`, () => {
    const tsconfig = JSON.parse(readFileSync('tsconfig.json', 'utf8'));
    expect(tsconfig.compilerOptions).toMatchObject({ outDir: 'dist', rootDir: '.' });
    expect(existsSync('src/cli/main.ts')).toBe(true);
    expect(JSON.parse(readFileSync('package.json', 'utf8')).bin.ctxmesh).toBe(ENTRY);
    expect(existsSync(ENTRY)).toBe(true);
    const help = execFileSync(process.execPath, [ENTRY, '--help'], { encoding: 'utf8' });
    expect(help).toMatch(/sidecar/);
  });

  it('runs as a program (the npm bin) with NODE_FLAGS, through its shebang', () => {
    const shebang = readFileSync(ENTRY, 'utf8').split('\n', 1)[0]!;
    expect(shebang).toBe(`#!/usr/bin/env -S node ${NODE_FLAGS.join(' ')}`);
    // What the kernel runs for `ctxmesh --version`: env splits the line, node takes the flags (it
    // exits 9 on one it does not know) and runs the CLI.
    const out = spawnSync('/usr/bin/env', [shebang.slice('#!/usr/bin/env '.length), ENTRY, '--version'], { encoding: 'utf8' });
    expect(out.status, out.stderr).toBe(0);
    expect(out.stdout.trim()).toMatch(/^\d+\.\d+\.\d+/);
  });

  it('compiles xds/ into dist/xds, beside dist/src, where the runtime copy of dist picks it up', () => {
    for (const file of ['xds/control-plane.ts', 'xds/protos.ts']) {
      if (!existsSync(file)) continue;
      const built = `dist/${file.replace(/\.ts$/, '.js')}`;
      expect(existsSync(built), `${built} (from ${file})`).toBe(true);
    }
    expect(readdirSync('dist').sort()).toEqual(expect.arrayContaining(['src', 'xds']));
  });

  it('needs at run time only packages that survive `npm prune --omit=dev`', () => {
    // Every package a compiled module imports (not `import type`) must be a production dependency,
    // or the pruned node_modules the runtime image copies would not have it.
    const pkg = JSON.parse(readFileSync('package.json', 'utf8')) as { dependencies: Record<string, string> };
    const builtins = new Set([...builtinModules, ...builtinModules.map((m) => `node:${m}`)]);
    const needed = new Map<string, string>();
    const walk = (dir: string): void => {
      for (const entry of readdirSync(dir, { withFileTypes: true })) {
        const file = join(dir, entry.name);
        if (entry.isDirectory()) walk(file);
        else if (entry.name.endsWith('.js')) {
          const text = readFileSync(file, 'utf8');
          for (const m of text.matchAll(/(?:\bfrom\s*|\bimport\s*\(\s*|\brequire\s*\(\s*|^import\s+)['"]([^'"\s]+)['"]/gm)) {
            const spec = m[1]!;
            if (spec.startsWith('.') || spec.startsWith('/') || builtins.has(spec) || spec.startsWith('node:')) continue;
            const name = spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0]!;
            needed.set(name, file);
          }
        }
      }
    };
    for (const root of ['dist/src', 'dist/xds']) if (existsSync(root)) walk(root);
    expect(needed.size).toBeGreaterThan(0);
    expect(needed.has('@grpc/grpc-js'), 'the control plane (dist/xds) is scanned').toBe(existsSync('dist/xds'));
    for (const [name, file] of needed) expect(pkg.dependencies, `${name} (imported by ${file})`).toHaveProperty([name]);
  });
});

describe('.dockerignore', () => {
  it.each(['node_modules', 'node_modules/zod/index.js', 'dist/src/cli/main.js', '.git/HEAD', 'test/e2e/demo.test.ts', 'bench/RESULTS.md'])(
    'keeps %s out of the build context',
    (path) => expect(dockerIgnores(ignorePatterns, path)).toBe(true),
  );

  it.each(['key.pem', 'certs/dev/ca-key.pem', 'certs/node-a/key.pem', 'deploy/secrets/tls.pem'])('keeps the key %s out', (path) =>
    expect(dockerIgnores(ignorePatterns, path)).toBe(true),
  );

  it('keeps everything the build stage copies', () => {
    const sources = of(build!, 'COPY')
      .filter((i) => !parseCopy(i.args).flags.from)
      .flatMap((i) => parseCopy(i.args).sources);
    expect(sources.length).toBeGreaterThan(0);
    for (const s of sources) {
      expect(existsSync(s), `${s} exists`).toBe(true);
      expect(dockerIgnores(ignorePatterns, s), `${s} is in the build context`).toBe(false);
    }
    expect(dockerIgnores(ignorePatterns, 'src/cli/main.ts')).toBe(false);
  });
});
