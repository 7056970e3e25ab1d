-- wrk script for bench/load.py: the request comes from the environment, the result goes to
-- stdout as one JSON line after the `BENCH_JSON ` marker (times in microseconds).
--   BENCH_METHOD (default GET), BENCH_BODY (optional), BENCH_AUTH (optional bearer token)

wrk.method = os.getenv("BENCH_METHOD") or "GET"
local body = os.getenv("BENCH_BODY")
if body and body ~= "" then
    wrk.body = body
    wrk.headers["Content-Type"] = "application/json"
end
local auth = os.getenv("BENCH_AUTH")
if auth and auth ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. auth
end

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        'BENCH_JSON {"requests":%.0f,"duration_us":%.0f,"bytes":%.0f,' ..
        '"connect_errors":%.0f,"read_errors":%.0f,"write_errors":%.0f,' ..
        '"status_errors":%.0f,"timeouts":%.0f,' ..
        '"p50_us":%.0f,"p90_us":%.0f,"p99_us":%.0f,"max_us":%.0f,"mean_us":%.1f}\n',
        summary.requests, summary.duration, summary.bytes,
        e.connect, e.read, e.write, e.status, e.timeout,
        latency:percentile(50), latency:percentile(90), latency:percentile(99),
        latency.max, latency.mean))
end
