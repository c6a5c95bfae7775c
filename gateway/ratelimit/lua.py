"""The Lua scripts shared by the Redis and Upstash backends (same text, same SHA-1)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class LuaScript:
    text: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.text.encode()).hexdigest())


# KEYS: one counter per window. ARGV: limit, cost, ttl seconds for each window, in order.
# Answers {allowed (0/1), count_1, ..., count_n}: counts after the hit when allowed, else
# as found. Checking all windows before touching any makes a rejected hit consume nothing.
HIT = LuaScript("""
local n = #KEYS
local counts = {}
local allowed = 1
for i = 1, n do
  local used = tonumber(redis.call('GET', KEYS[i]) or '0')
  counts[i] = used
  if used + tonumber(ARGV[3 * i - 1]) > tonumber(ARGV[3 * i - 2]) then
    allowed = 0
  end
end
if allowed == 1 then
  for i = 1, n do
    local cost = tonumber(ARGV[3 * i - 1])
    counts[i] = redis.call('INCRBY', KEYS[i], cost)
    if counts[i] == cost then
      redis.call('EXPIRE', KEYS[i], ARGV[3 * i])
    end
  end
end
local reply = {allowed}
for i = 1, n do
  reply[i + 1] = counts[i]
end
return reply
""")

# KEYS[1]: one counter. ARGV: delta, ttl seconds. Never below 0, no limit check.
ADJUST = LuaScript("""
local used = tonumber(redis.call('GET', KEYS[1]) or '-1')
local delta = tonumber(ARGV[1])
if used < 0 then
  if delta > 0 then
    redis.call('SET', KEYS[1], delta, 'EX', ARGV[2])
  end
  return delta > 0 and delta or 0
end
local value = math.max(0, used + delta)
redis.call('SET', KEYS[1], value, 'KEEPTTL')
return value
""")
