-- wrk script: replays pre-signed requests, each exactly once (their nonces are unique), optionally at a fixed rate.
--   BENCH_PATHS=<file> BENCH_RATE=<req/s, 0 or unset = saturate> wrk -t T -c C -d 10s -s bench/wrk/presigned.lua http://host:port
-- The paths file holds one request target per line ("/?Action=…&Signature=…"). Thread i sends lines i, i+T, i+2T…
-- At a fixed rate every thread claims slots on an absolute schedule (start + k · T / rate), so a late response does
-- not lower the offered rate while connections are free (open loop as long as fewer than C requests are in flight).
-- Latency is wrk's, from the moment a request is written. "late" counts requests sent more than 1 ms after their slot.
local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local requests = {}
local count = 0
local index = 0
local interval = 0
local start_at = nil
local slot = 0
late = 0     -- globals: done() reads them from each thread
wrapped = 0
local RATE = tonumber(os.getenv("BENCH_RATE") or "0")

function init(args)
  local file = os.getenv("BENCH_PATHS")
  local rate = RATE
  local nthreads = tonumber(os.getenv("BENCH_THREADS") or "1")
  local n = 0
  for line in io.lines(file) do
    if n % nthreads == id then
      count = count + 1
      requests[count] = wrk.format("GET", line)
    end
    n = n + 1
  end
  if rate > 0 then interval = 1000 * nthreads / rate end
end

function request()
  index = index + 1
  if index > count then
    index = 1
    wrapped = wrapped + 1
  end
  return requests[index]
end

-- Defined only for a fixed rate: wrk then asks before every request how long to wait.
if RATE > 0 then
  function delay()
    if interval == 0 then return 0 end
    local t = now_ms()
    if start_at == nil then start_at = t end
    local due = start_at + slot * interval
    slot = slot + 1
    local d = due - t
    if d < -1 then late = late + 1 end
    if d <= 0 then return 0 end
    return d
  end
end

function done(summary, latency, requests)
  local lateTotal, wrappedTotal = 0, 0
  for _, t in ipairs(threads) do
    lateTotal = lateTotal + (t:get("late") or 0)
    wrappedTotal = wrappedTotal + (t:get("wrapped") or 0)
  end
  local s = summary
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d},"late":%d,"wrapped":%d}\n',
    s.requests, s.duration, s.bytes, s.errors.connect, s.errors.read, s.errors.write, s.errors.status, s.errors.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    lateTotal, wrappedTotal))
end
