-- wrk script for the pull benchmark: rotates over the paths in a file (``-- PATHS_FILE``) and,
-- when WRK_RATE is set, paces requests to that many per second in all (each thread takes the
-- next slot of its own schedule; wrk's delay() is whole milliseconds, the schedule is not).
-- Prints one JSON line at the end: requests, duration, errors and latency percentiles in µs.
local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } fabric_timespec;
  int clock_gettime(int clock, fabric_timespec *ts);
]]
local ts = ffi.new("fabric_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local paths, i, period, next_slot = {}, 0, 0, 0

function init(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
  i = math.random(#paths)
  local rate = tonumber(os.getenv("WRK_RATE") or "0")
  local threads = tonumber(os.getenv("WRK_THREADS") or "1")
  if rate > 0 then period = threads * 1000 / rate end
  next_slot = now_ms()
end

function request()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end

function delay()
  if period == 0 then return 0 end
  local now = now_ms()
  next_slot = math.max(next_slot + period, now - 1000) -- a stall is caught up, at most 1 s of it
  local wait = next_slot - now
  if wait < 0.5 then return 0 end
  return math.floor(wait + 0.5)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "errors": %d, "status_errors": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "p999_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
