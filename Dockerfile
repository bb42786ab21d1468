# syntax=docker/dockerfile:1
# Build stage: compile TypeScript with the dev toolchain.
FROM node:20-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
# Every directory tsconfig.json compiles: src/ (sidecar, CLI) and xds/ (the control plane).
COPY src ./src
COPY xds ./xds
RUN npm run build && npm prune --omit=dev

# Runtime stage: Node and the production dependencies only, as uid 1337 (the uid the
# interception rules exclude, so the sidecar's own traffic is not redirected back to it).
FROM node:20-bookworm-slim AS runtime
ENV NODE_ENV=production
WORKDIR /opt/ctxmesh
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
# iptables for the injected init container (`ctxmesh iptables`), which runs this same image:
# Debian's package brings both iptables-{save,restore} (IPv4) and ip6tables-{save,restore} (IPv6);
# the build fails here if either pair is missing.
RUN apt-get update && apt-get install -y --no-install-recommends iptables && rm -rf /var/lib/apt/lists/* \
 && iptables-save --version && iptables-restore --version && ip6tables-save --version && ip6tables-restore --version
RUN groupadd --gid 1337 ctxmesh && useradd --uid 1337 --gid 1337 --no-create-home --shell /usr/sbin/nologin ctxmesh
USER 1337:1337
# Sidecar (admin, outbound, inbound, context API), control plane (xDS, admin), injector webhook.
EXPOSE 15000 15001 15006 15020 15010 15014 15017
# The node flags are src/cli/node-flags.ts's (it says why); test/docker holds them equal.
ENTRYPOINT ["node", "--initial-old-space-size=128", "--v8-pool-size=1", "/opt/ctxmesh/dist/src/cli/main.js"]
CMD ["sidecar", "-c", "/etc/ctxmesh/sidecar.yaml"]
