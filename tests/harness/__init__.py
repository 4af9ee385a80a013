"""The test harness: real components started on loopback for the suite.

Every server here is private to the test session: it listens on a free
port of 127.0.0.1, keeps its files under the session's temporary folder,
and is stopped when the session ends. Nothing relies on, or touches,
services the machine already runs.
"""
