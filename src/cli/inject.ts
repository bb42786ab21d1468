// `ctxmesh inject` and `ctxmesh injector`: sidecar injection (being built).
import type { Command } from 'commander';

export function registerInject(_program: Command): void {}
