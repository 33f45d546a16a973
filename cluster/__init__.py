"""Cluster serving: request traces, routing, batching, allocation policies and event simulation."""
