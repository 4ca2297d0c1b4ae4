"""generate: synthetic SOAP notes whose facts are known exactly (facts first, prose second)."""
