-- wrk script for scripts/bench: GET $BENCH_BASE<id>$BENCH_SUFFIX with ids drawn at random from 1..$BENCH_IDS
-- (a different sequence per thread), and one JSON line of results at the end.
local base = os.getenv("BENCH_BASE") or "/reviews?product_id="
local suffix = os.getenv("BENCH_SUFFIX") or ""
-- 0: always GET $BENCH_BASE itself.
local ids = tonumber(os.getenv("BENCH_IDS") or "1")
local threads = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("seed", counter)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() * 1000 + seed)
end

function request()
  if ids == 0 then
    return wrk.format("GET", base)
  end
  return wrk.format("GET", base .. math.random(1, ids) .. suffix)
end

function done(summary, latency, requests)
  local e = summary.errors
  local errors = e.connect + e.read + e.write + e.status + e.timeout
  io.write(string.format(
    'RESULT {"requests":%d,"errors":%d,"rps":%.0f,"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"p999_ms":%.3f,"max_ms":%.3f}\n',
    summary.requests, errors, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency:percentile(99.9) / 1000, latency.max / 1000))
end
