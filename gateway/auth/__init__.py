"""Authentication (JWT verification, JWKS keys) and authorization (claims policy)."""
