// `ctxmesh iptables`: the init container's job (being built).
import type { Command } from 'commander';

export function registerIptables(_program: Command): void {}
