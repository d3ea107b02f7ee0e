"""A local stand-in for OpenFaaS Community Edition, for machines without Docker.

Nothing under vtp/ or functions/ may import this package: functions must run unchanged
on a real OpenFaaS gateway.
"""
