"""Dynamic routes: a named, versioned graph of elements that decides which model serves a request."""
