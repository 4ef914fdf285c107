-- wrk script for benches/compare.sh (the Authorization header comes from -H).
--   BODY_BYTES=N  send POST requests with an N-byte body (body-1k, body-1m)
--   HIST_FILE=P   on exit, write the full latency histogram to P as
--                 "microseconds count" lines, for exact percentiles over
--                 several wrk runs (SCENARIO=oauth2 splits a run in segments)
local body_bytes = tonumber(os.getenv("BODY_BYTES") or "")
if body_bytes and body_bytes > 0 then
   wrk.method = "POST"
   wrk.body = string.rep("x", body_bytes)
   wrk.headers["Content-Type"] = "application/octet-stream"
end

local hist_file = os.getenv("HIST_FILE")
if hist_file and hist_file ~= "" then
   -- wrk 4.1 (Debian) cannot index the raw histogram from Lua, so the
   -- distribution is written as quantiles: "microseconds weight" lines where
   -- weight is the share of requests between the previous quantile and this
   -- one (0.1% steps to p99, then 0.01% steps), enough to merge segments.
   function done(summary, latency, requests)
      local f = assert(io.open(hist_file, "w"))
      f:write(string.format("# requests %d duration_us %d status %d connect %d read %d write %d timeout %d\n",
         summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
         summary.errors.read, summary.errors.write, summary.errors.timeout))
      local prev = 0
      local function emit(p)
         f:write(string.format("%d %.6f\n", latency:percentile(p), (p - prev) / 100 * summary.requests))
         prev = p
      end
      for i = 1, 990 do emit(i / 10) end
      for i = 9901, 10000 do emit(i / 100) end
      f:close()
   end
end
