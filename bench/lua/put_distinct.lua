-- PUTs distinct keys with a raw value of VALUE_BYTES bytes, REQUESTS_PER_THREAD per thread,
-- then stops the thread. Keys are unique across threads and connections.
local value_bytes = tonumber(os.getenv("VALUE_BYTES") or "1024")
local per_thread = tonumber(os.getenv("REQUESTS_PER_THREAD") or "10000")
local body = string.rep("v", value_bytes)
local thread_id = 0

function setup(thread)
  thread:set("id", thread_id)
  thread_id = thread_id + 1
end

function init(args)
  counter = 0
  limit = per_thread
  wrk.method = "PUT"
  wrk.headers["Content-Type"] = "application/octet-stream"
  wrk.body = body
end

function request()
  counter = counter + 1
  if counter > limit then
    wrk.thread:stop()
  end
  return wrk.format(nil, "/cache/k-" .. id .. "-" .. counter)
end
