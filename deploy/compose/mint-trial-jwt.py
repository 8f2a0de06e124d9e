"""Print a JWT for the compose trial, signed with $CGW_AUTH_HS256_SECRET (HS256).

The same approach as `console-gateway demo`'s dev token. Mounted into the gateways, run it there:
    docker compose exec gw-1 python /etc/console-gateway/mint-trial-jwt.py [SUBJECT] [--admin]
It is valid for an hour, for project demo-project; --admin adds the console-admin role (may read
and revoke anybody's consoles). Only PyJWT and the standard library: the image has both.
"""

from __future__ import annotations

import os
import sys
import time

import jwt

ISSUER = "console-gateway-trial"  # = auth.issuer in gateway.yaml
AUDIENCE = "console-gateway"  # = auth.audience
PROJECT = "demo-project"  # the simulator's project
LIFETIME_S = 3600


def main(argv: list[str]) -> int:
    secret = os.environ.get("CGW_AUTH_HS256_SECRET", "")
    if not secret:
        print("mint-trial-jwt: CGW_AUTH_HS256_SECRET is not set", file=sys.stderr)
        return 2
    admin = "--admin" in argv
    subjects = [arg for arg in argv if arg != "--admin"]
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": subjects[0] if subjects else "trial-user",
        "iat": now,
        "exp": now + LIFETIME_S,
        "projects": [PROJECT],
        "roles": ["console-admin"] if admin else [],
    }
    print(jwt.encode(claims, secret, algorithm="HS256"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
