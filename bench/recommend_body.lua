-- wrk script for bench/bench_service.py: every request asks for a random customer, with the
-- same body as bench_service.body(). NB_CUSTOMERS and NB_PATH come from the environment.
local customers = tonumber(os.getenv("NB_CUSTOMERS") or "1000000")
local path = os.getenv("NB_PATH") or "/recommend"
math.randomseed(os.time())

request = function()
  local body = string.format(
    '{"customer_id":"c%07d","channel":"web","n":{"product":10,"content":2,"offer":1},' ..
    '"filters":{"in_stock_only":true,"max_price":200.0}}', math.random(0, customers - 1))
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, body)
end

done = function(summary, latency, requests)
  io.write(string.format("NB_RESULT %d %d %d %d\n", summary.requests, summary.duration,
                         summary.errors.status + summary.errors.connect + summary.errors.read
                         + summary.errors.write + summary.errors.timeout, latency:percentile(50)))
end
