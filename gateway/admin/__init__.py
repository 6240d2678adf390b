"""The admin API (`/admin`) and the operator CLI. Nothing on the request path imports this package."""
