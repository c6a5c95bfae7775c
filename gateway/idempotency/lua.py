"""The claim script shared by the Redis and Upstash claim stores."""

from __future__ import annotations

from gateway.ratelimit.lua import LuaScript

# KEYS[1]: the claim. ARGV: gateway request id, ttl in ms. Answers whoever holds the claim
# now: the caller's own id when SET NX won, else the first claimer's.
CLAIM = LuaScript("""
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return ARGV[1]
end
return redis.call('GET', KEYS[1])
""")
