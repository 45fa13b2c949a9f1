-- PUTs a raw value of VALUE_BYTES bytes to KEYS keys in turn.
local value_bytes = tonumber(os.getenv("VALUE_BYTES") or "100")
local keys = tonumber(os.getenv("KEYS") or "10000")
local counter = 0

function init(args)
  wrk.method = "PUT"
  wrk.headers["Content-Type"] = "application/octet-stream"
  wrk.body = string.rep("v", value_bytes)
end

function request()
  counter = (counter + 1) % keys
  return wrk.format(nil, "/cache/bench-" .. counter)
end
