-- wrk script: POST one fixed inference request body (read from the file in BODY_FILE).
local path = os.getenv("BODY_FILE")
local file = assert(io.open(path, "rb"), "BODY_FILE must name a readable file")
wrk.body = file:read("*a")
file:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
