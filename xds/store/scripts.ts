// Lua run inside Redis, so that each registry change — its check, its epoch, its history entry and
// its change notice — is one atomic step that every replica sees whole or not at all. This is what
// makes a declaration happen once when two replicas reach quorum together, and what keeps epochs
// monotonic: they only ever rise by HINCRBY on a hash that nothing deletes.
//
// KEYS (all under one hash tag, so a Redis Cluster keeps them in one slot):
//   1 regs     hash  nodeId → {service, address, zone, priority, incarnation}
//   2 leases   zset  nodeId scored by the ms deadline of its registration
//   3 states   hash  "service|address" → {health, epoch, reason}
//   4 epochs   hash  "service|address" → epoch (never decreases, never deleted)
//   5 history  list  failover records, oldest first, capped
//   6 rev      counter raised by every change
// ARGV common to all: 1 channel, 2 now (ms), 3 history limit, 4 now as ISO text.
// Each script but REPORT returns {changed ('1' | '0'), history records it wrote (JSON)…}: the
// caller reloads only after a change, and logs and counts the records. Tables of strings only,
// never Lua booleans, which RESP2 and RESP3 would carry differently.

const PRELUDE = `
local K_REGS, K_LEASES, K_STATES, K_EPOCHS, K_HISTORY, K_REV = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local CHANNEL, NOW, LIMIT, AT = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local written = {}
local function key_of(service, address) return service .. '|' .. address end
local function state_of(ek)
  local raw = redis.call('HGET', K_STATES, ek)
  if raw then return cjson.decode(raw) end
  return { health = 'HEALTHY', epoch = tonumber(redis.call('HGET', K_EPOCHS, ek) or '0') }
end
local function record(kind, service, address, node_id, epoch, reason)
  local entry = { at = AT, kind = kind, service = service, address = address, epoch = epoch, reason = reason }
  if node_id ~= nil and node_id ~= '' then entry.nodeId = node_id end
  local text = cjson.encode(entry)
  redis.call('RPUSH', K_HISTORY, text)
  redis.call('LTRIM', K_HISTORY, -LIMIT, -1)
  table.insert(written, text)
end
-- fresh: a new registration starts at 0, or one above the address's previous epoch.
local function set_state(service, address, health, state_reason, kind, record_reason, node_id, fresh)
  local ek = key_of(service, address)
  local epoch
  if fresh and redis.call('HEXISTS', K_EPOCHS, ek) == 0 then
    epoch = 0
    redis.call('HSET', K_EPOCHS, ek, 0)
  else
    epoch = redis.call('HINCRBY', K_EPOCHS, ek, 1)
  end
  redis.call('HSET', K_STATES, ek, cjson.encode({ health = health, epoch = epoch, reason = state_reason }))
  record(kind, service, address, node_id, epoch, record_reason)
  return epoch
end
local did_change = false
local function changed()
  did_change = true
  local rev = redis.call('INCR', K_REV)
  redis.call('PUBLISH', CHANNEL, tostring(rev))
end
local function reply()
  local out = { did_change and '1' or '0' }
  for _, text in ipairs(written) do table.insert(out, text) end
  return out
end
`;

/**
 * Registers or renews a node. ARGV 5 nodeId, 6 service, 7 address, 8 zone, 9 priority,
 * 10 incarnation, 11 lease deadline (ms; the lease only ever extends).
 */
export const REGISTER_LUA = `${PRELUDE}
local node_id, service, address, zone = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local priority, incarnation, deadline = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local raw = redis.call('HGET', K_REGS, node_id)
local moved = false
if raw then
  local reg = cjson.decode(raw)
  if reg.service == service and reg.address == address then
    local lease = tonumber(redis.call('ZSCORE', K_LEASES, node_id) or '0')
    if deadline > lease then redis.call('ZADD', K_LEASES, deadline, node_id) end
    local dirty = reg.zone ~= zone or reg.priority ~= priority
    reg.zone = zone
    reg.priority = priority
    if incarnation > reg.incarnation then
      reg.incarnation = incarnation
      local ek = key_of(service, address)
      if state_of(ek).health ~= 'HEALTHY' then
        local why = 're-registered with incarnation ' .. ARGV[10]
        set_state(service, address, 'HEALTHY', why, 'recovered', why, node_id, false)
        dirty = true
      end
    end
    redis.call('HSET', K_REGS, node_id, cjson.encode(reg))
    if dirty then changed() end
    return reply()
  end
  moved = true
end
redis.call('HSET', K_REGS, node_id, cjson.encode({ service = service, address = address, zone = zone, priority = priority, incarnation = incarnation }))
redis.call('ZADD', K_LEASES, deadline, node_id)
set_state(service, address, 'HEALTHY', 'registered', 'registered', moved and 'registered via move' or 'registered via node', node_id, true)
changed()
return reply()
`;

/**
 * A health transition. ARGV 5 service, 6 address, 7 node id ('' for a config endpoint), 8 health,
 * 9 kind, 10 reason, 11 precondition: 'not_unhealthy' | 'unhealthy' | 'not_draining',
 * 12 '1' when the node must be registered (its service and address then come from the registration).
 */
export const TRANSITION_LUA = `${PRELUDE}
local service, address, node_id, health, kind, reason, pre = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11]
if ARGV[12] == '1' then
  local raw = redis.call('HGET', K_REGS, node_id)
  if not raw then return reply() end
  local reg = cjson.decode(raw)
  service, address = reg.service, reg.address
end
local current = state_of(key_of(service, address)).health
if (pre == 'not_unhealthy' and current == 'UNHEALTHY') or (pre == 'unhealthy' and current ~= 'UNHEALTHY') or (pre == 'not_draining' and current == 'DRAINING') then
  return reply()
end
set_state(service, address, health, reason, kind, reason, node_id, false)
changed()
return reply()
`;

/** Removes registrations whose lease ran out, once for all replicas. ARGV 5 ttl ms (for the reason). */
export const EXPIRE_LUA = `${PRELUDE}
local due = redis.call('ZRANGEBYSCORE', K_LEASES, '-inf', NOW)
for _, node_id in ipairs(due) do
  redis.call('ZREM', K_LEASES, node_id)
  local raw = redis.call('HGET', K_REGS, node_id)
  if raw then
    redis.call('HDEL', K_REGS, node_id)
    local reg = cjson.decode(raw)
    record('expired', reg.service, reg.address, node_id, state_of(key_of(reg.service, reg.address)).epoch, 'no stream or heartbeat for ' .. ARGV[5] .. 'ms')
  end
end
if #written > 0 then changed() end
return reply()
`;

/**
 * Writes back what a replica knew while the store was away (or lost its data): endpoint states
 * whose epoch is above the store's, registrations the store does not have, and the history if the
 * store has none. ARGV 5 states JSON, 6 registrations JSON, 7 history JSON (arrays).
 */
export const MERGE_LUA = `${PRELUDE}
local dirty = false
for _, st in ipairs(cjson.decode(ARGV[5])) do
  local ek = key_of(st.service, st.address)
  local have = tonumber(redis.call('HGET', K_EPOCHS, ek) or '-1')
  if st.epoch > have then
    redis.call('HSET', K_EPOCHS, ek, st.epoch)
    redis.call('HSET', K_STATES, ek, cjson.encode({ health = st.health, epoch = st.epoch, reason = st.reason }))
    dirty = true
  end
end
for _, reg in ipairs(cjson.decode(ARGV[6])) do
  if redis.call('HEXISTS', K_REGS, reg.nodeId) == 0 and reg.leaseUntil > NOW then
    redis.call('HSET', K_REGS, reg.nodeId, cjson.encode({ service = reg.service, address = reg.address, zone = reg.zone, priority = reg.priority, incarnation = reg.incarnation }))
    redis.call('ZADD', K_LEASES, reg.leaseUntil, reg.nodeId)
    local ek = key_of(reg.service, reg.address)
    if redis.call('HEXISTS', K_EPOCHS, ek) == 0 then
      redis.call('HSET', K_EPOCHS, ek, 0)
      redis.call('HSET', K_STATES, ek, cjson.encode({ health = 'HEALTHY', epoch = 0, reason = 'registered' }))
    end
    dirty = true
  end
end
if redis.call('LLEN', K_HISTORY) == 0 then
  for _, entry in ipairs(cjson.decode(ARGV[7])) do
    redis.call('RPUSH', K_HISTORY, cjson.encode(entry))
    dirty = true
  end
  redis.call('LTRIM', K_HISTORY, -LIMIT, -1)
end
if dirty then changed() end
return reply()
`;

/**
 * A health report. KEYS 1 the subject's report hash (observer → report JSON). ARGV 1 observer,
 * 2 report JSON, 3 incarnation, 4 window ms, 5 now ms. Keeps the report unless the stored one
 * carries a higher incarnation, drops reports older than the window, and returns the rest.
 */
export const REPORT_LUA = `
local observer, incarnation, window, now = ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local previous = redis.call('HGET', KEYS[1], observer)
if not previous or cjson.decode(previous).incarnation <= incarnation then
  redis.call('HSET', KEYS[1], observer, ARGV[2])
end
local kept = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local report = cjson.decode(all[i + 1])
  if now - report.receivedAt > window then redis.call('HDEL', KEYS[1], all[i]) else table.insert(kept, all[i + 1]) end
end
redis.call('PEXPIRE', KEYS[1], window * 2)
return kept
`;

export const SCRIPTS = {
  cpRegister: { lua: REGISTER_LUA, numberOfKeys: 6 },
  cpTransition: { lua: TRANSITION_LUA, numberOfKeys: 6 },
  cpExpire: { lua: EXPIRE_LUA, numberOfKeys: 6 },
  cpMerge: { lua: MERGE_LUA, numberOfKeys: 6 },
  cpReport: { lua: REPORT_LUA, numberOfKeys: 1 },
} as const;

export type ScriptName = keyof typeof SCRIPTS;
