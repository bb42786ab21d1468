-- wrk script for the state benchmark.
--   STATE_METHOD=PUT STATE_BODY=/path/body.bin wrk ... -s wrk-state.lua URL
-- sends every request as a PUT of that file's bytes (application/octet-stream) to the one URL
-- given, i.e. to one key, as `redis-benchmark -t set` writes one key when -r is not given.
-- Without STATE_METHOD it sends plain GETs. At the end it prints one machine-readable line:
--   WRKJSON {"requests":..,"duration_us":..,"errors":{..},"latency_us":{..}}
local method = os.getenv("STATE_METHOD")
if method == "PUT" then
  local f = assert(io.open(assert(os.getenv("STATE_BODY"), "STATE_BODY not set"), "rb"))
  wrk.method = "PUT"
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = "application/octet-stream"
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
