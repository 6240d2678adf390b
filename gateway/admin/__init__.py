"""The admin API (`/admin`, SPEC §9) and the operator CLI. Nothing on the request path imports this package."""
