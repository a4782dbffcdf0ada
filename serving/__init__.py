"""Serving: gRPC frontend, LLM engine adapter, Triton launcher, CLI client."""
