"""The Lua scripts the store runs: each one round trip, atomic on one hash-tagged slot."""

# KEYS: value, error marker, lock. ARGV: token, value, value ms, error, error ms.
# One round trip settles a flight; the lock is deleted only if it is still ours.
SETTLE = """
if ARGV[2] ~= '' then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[2])
elseif ARGV[4] ~= '' then
  redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5])
end
if redis.call('GET', KEYS[3]) == ARGV[1] then
  redis.call('DEL', KEYS[3])
end
return 0
"""

# KEYS: console record. ARGV: keep ms, then field, value pairs. Replaces the record whole
# (no field of an older record survives); keep ms <= 0 only deletes it.
PUT = """
redis.call('DEL', KEYS[1])
if tonumber(ARGV[1]) > 0 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 2))
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return 0
"""

# A bare HSETNX would recreate an expired record without a TTL; the first revoked_at wins.
REVOKE = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
redis.call('HSETNX', KEYS[1], 'revoked_at', ARGV[1])
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: console record. ARGV: new expires_at, keep ms. A revoked or vanished record stays so.
EXTEND = """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'revoked_at') == 1 then
  return false
end
if tonumber(ARGV[1]) > tonumber(redis.call('HGET', KEYS[1], 'expires_at')) then
  redis.call('HSET', KEYS[1], 'expires_at', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('HGETALL', KEYS[1])
"""
